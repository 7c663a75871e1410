//! Benchmark 8, stalled readers: how much server memory an attacker can
//! hold by joining a page and never reading what it is sent.
//!
//! From 127.0.0.3, a few attacker sockets host a page (`have:<h>`), and
//! K more join it as visitors (`want:<h>`) and then stop reading: they
//! keep their TCP connection open and never read it again (their kernel
//! receive buffer is set to 4 KiB before connecting, so they hold almost
//! nothing themselves). The hosting sockets send `signal` messages, each
//! as large as the server accepts, round-robin to the stalled visitors, as
//! fast as the server allows, for a bounded time: each at its share of the
//! server's sustained rates (its socket's messages per second, and the
//! address's messages and bytes per second), less a margin. Not faster:
//! the server closes a socket it keeps refusing (`flooding`), so an
//! attacker that probed for the limit would end its own attack. A stalled visitor the server closes is replaced by a
//! new one, so the attack stays at K stalled readers.
//!
//! What should stop it: the server closes a socket whose writes stall past
//! `--write-timeout-secs` or whose outbound queue passes
//! `--outbound-queue-bytes`, and an address may send only so many bytes per
//! second. So the server's memory under attack is bounded by
//!
//! ```text
//!   min(K × outbound queue bytes,
//!       bytes/s per address × (write timeout + 4 s of burst))
//!   + (K + hosting sockets) × 2 × largest signal
//! ```
//!
//! above its memory with the attackers connected and idle: each stalled
//! socket's queue, or what one address can send while a write is stalled
//! (its per-address bucket holds four seconds' worth), whichever is
//! smaller, plus per socket a message being written and a read buffer
//! grown to a message. The caps are passed to the server
//! explicitly (their defaults) so that the bound is computed from the
//! values the server ran with. Reported: server RSS (`VmRSS`) with the
//! attackers idle (the baseline), its peak, and after the attackers are
//! gone; the peak growth against the bound; and how many stalled sockets
//! the server closed, how long after their first signal, and why (its
//! `ephemeral_rejected_total` counters).
//!
//! Limits: what the kernel buffers for a stalled socket (the server's send
//! buffer) is kernel memory, not the server's RSS, and is not counted; the
//! allocator may keep freed memory, which shows in the "after" reading.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_shared::{PageHash, Topic};
use futures_util::FutureExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::children::{self, ChildServer, Scrape};
use crate::memory::settle;
use crate::phoenix::{self, Endpoint, Phoenix};
use crate::report::{Better, Percentiles, Row, Value as Measure};

const BENCHMARK: &str = "8. Stalled readers";
/// Every attacker socket's address.
const ATTACK_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const MIB: u64 = 1024 * 1024;
/// The caps under test, at the server's defaults.
const OUTBOUND_QUEUE_BYTES: u64 = 4 * MIB;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SIGNAL_BYTES: usize = 65536;
const BYTES_PER_SECOND_PER_ADDRESS: u64 = 8 * MIB;
const RELAY_BYTES_PER_SECOND_PER_ADDRESS: u64 = 4 * MIB;
/// `SO_RCVBUF` of a stalled socket (Linux doubles it).
const STALLED_RECEIVE_BUFFER: u32 = 4096;
/// Attacker sockets that host the page and send the signals.
const SENDERS: usize = 4;
/// Stalled sockets opened over a whole run, at most, as a multiple of K:
/// replacements are bounded in count as well as by the attack's time.
const MAX_STALLED_OPENED_PER_SLOT: usize = 4;
/// Connecting and joining the attackers must be done by then (the
/// server's default joins per second per address pace them).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a probe signal may take to arrive or be refused.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// After the attack, how long the server has to close the stalled sockets
/// that are left: their writes stall for the write timeout, then a margin.
const AFTER_LIMIT: Duration = Duration::from_secs(WRITE_TIMEOUT.as_secs() + 10);
/// How long the server has to notice that every attacker socket is gone.
const GONE_LIMIT: Duration = Duration::from_secs(10);
const RSS_EVERY: Duration = Duration::from_millis(100);
const GAUGE_EVERY: Duration = Duration::from_millis(250);
/// Messages per second one socket may send, sustained (the default).
const MESSAGES_PER_SECOND_PER_SOCKET: u64 = 100;
const MESSAGES_PER_SECOND_PER_ADDRESS: u64 = 1000;
/// The server's per-address buckets hold this many seconds' worth.
const BURST_SECONDS: u64 = 4;
/// Senders pace themselves at this share of the rate the server allows.
const RATE_MARGIN: f64 = 0.95;
/// A rate refusal lengthens a sender's gap by a quarter, at most once per
/// this interval (refusals come back a round trip after the signals they
/// refuse, several at a time).
const ADJUST_EVERY: Duration = Duration::from_millis(100);
/// Signals a sender remembers the target of, so that an `unknown_peer`
/// refusal (its target was closed) can be traced to the target.
const REMEMBERED_SIGNALS: usize = 4096;
/// When no target is open, a sender looks again this often.
const NO_TARGET_PAUSE: Duration = Duration::from_millis(20);

/// How big and how long the attack is.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// K: stalled sockets at once.
    stalled: usize,
    attack: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                stalled: 16,
                attack: Duration::from_secs(12),
            }
        } else {
            Self {
                stalled: 32,
                attack: Duration::from_secs(20),
            }
        }
    }
}

/// The server's flags: the caps at their defaults, stated, and a long idle
/// timeout, so that silent stalled sockets are closed for stalling (what
/// is measured) and not for silence (a real attacker would heartbeat).
fn server_flags() -> Vec<String> {
    [
        ("--outbound-queue-bytes", OUTBOUND_QUEUE_BYTES.to_string()),
        ("--write-timeout-secs", WRITE_TIMEOUT.as_secs().to_string()),
        ("--max-signal-bytes", MAX_SIGNAL_BYTES.to_string()),
        (
            "--messages-per-second",
            MESSAGES_PER_SECOND_PER_SOCKET.to_string(),
        ),
        (
            "--messages-per-second-per-address",
            MESSAGES_PER_SECOND_PER_ADDRESS.to_string(),
        ),
        (
            "--bytes-per-second-per-address",
            BYTES_PER_SECOND_PER_ADDRESS.to_string(),
        ),
        (
            "--relay-bytes-per-second-per-address",
            RELAY_BYTES_PER_SECOND_PER_ADDRESS.to_string(),
        ),
        ("--idle-timeout-secs", "3600".to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

/// The memory the caps allow the attack to hold, in bytes (see the module
/// documentation), and its two candidate terms.
struct Bound {
    total: u64,
    queues: u64,
    rate: u64,
    in_flight: u64,
}

impl Bound {
    fn of(stalled: usize) -> Self {
        let queues = stalled as u64 * OUTBOUND_QUEUE_BYTES;
        let rate = BYTES_PER_SECOND_PER_ADDRESS * (WRITE_TIMEOUT.as_secs() + BURST_SECONDS);
        let in_flight = (stalled + SENDERS) as u64 * 2 * MAX_SIGNAL_BYTES as u64;
        Self {
            total: queues.min(rate) + in_flight,
            queues,
            rate,
            in_flight,
        }
    }
}

pub async fn run(plan: &Plan) -> Result<Vec<Row>> {
    let flags = server_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = children::signal_server(&flags).await?;
    let endpoint = Endpoint::phoenix(server.addr);
    eprintln!(
        "bench: stalled readers: {} stalled sockets and {SENDERS} senders from {ATTACK_SOURCE}, {} s",
        plan.stalled,
        plan.attack.as_secs()
    );
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let hash = PageHash::of(b"stalled-reader bench page");
    let have = Topic::have(hash).to_string();
    let want = Topic::want(hash).to_string();

    let mut senders = Vec::with_capacity(SENDERS);
    for _ in 0..SENDERS {
        let mut sender = Phoenix::connect(&endpoint, ATTACK_SOURCE).await?;
        sender.join_patiently(&have, setup_deadline).await?;
        senders.push(sender);
    }
    let (signal_bytes, probe_refusals) =
        largest_accepted_signal(&endpoint, &mut senders[0], &have, &want, setup_deadline).await?;
    let mut stalled_sockets = Vec::with_capacity(plan.stalled);
    let mut stalled = Stalled::default();
    for _ in 0..plan.stalled {
        let (socket, id) = open_stalled(&endpoint, &want, setup_deadline).await?;
        stalled_sockets.push(socket);
        stalled.live.push(id);
    }
    settle(&server).await;
    let baseline_kib = server.rss_kib()?;
    let before = server.scrape().await?;

    let (stop_sampling, sampling) = watch::channel(false);
    let attack = async {
        let outcome = attack(
            &server,
            &endpoint,
            plan,
            Attack {
                senders,
                stalled_sockets,
                stalled,
                have: have.clone(),
                want: want.clone(),
                signal_bytes,
            },
        )
        .await;
        let _ = stop_sampling.send(true);
        outcome
    };
    let (peak_kib, outcome) = tokio::join!(peak_rss(&server, sampling), attack);
    let outcome = outcome?;
    let after_kib = server.rss_kib()?;
    let after = server.scrape().await?;
    server.stop().await;

    Ok(rows(&Results {
        plan: *plan,
        signal_bytes,
        probe_refusals,
        baseline_kib,
        peak_kib: peak_kib.max(baseline_kib),
        after_kib,
        before,
        after,
        outcome,
    }))
}

/// What the attack sets out with.
struct Attack {
    senders: Vec<Phoenix>,
    stalled_sockets: Vec<Phoenix>,
    stalled: Stalled,
    have: String,
    want: String,
    signal_bytes: usize,
}

/// What the attack found.
struct Outcome {
    /// Stalled sockets opened over the run, the first K included.
    opened: usize,
    /// Of those, the ones the server had closed by the end.
    closed: Option<usize>,
    /// For the ones the senders saw closed during the attack: from their
    /// first signal to the first refusal that named them gone.
    lifetimes: Vec<Duration>,
    /// When the server had closed every stalled socket, from the attack's
    /// start and from its end, if it did within [`AFTER_LIMIT`] of the end.
    all_closed: Option<(Duration, Duration)>,
    signals_sent: u64,
    refused: BTreeMap<String, u64>,
    senders_closed: Vec<String>,
    replacements_failed: Vec<String>,
    seconds: f64,
}

async fn attack(
    server: &ChildServer,
    endpoint: &Endpoint,
    plan: &Plan,
    attack: Attack,
) -> Result<Outcome> {
    let Attack {
        senders,
        stalled_sockets,
        stalled,
        have,
        want,
        signal_bytes,
    } = attack;
    let started = Instant::now();
    let until = started + plan.attack;
    let stalled = Arc::new(Mutex::new(stalled));
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let sender_tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            tokio::spawn(send_signals(
                sender,
                have.clone(),
                signal_bytes,
                stalled.clone(),
                gone_tx.clone(),
                until,
            ))
        })
        .collect();
    drop(gone_tx);
    let replacer = tokio::spawn(replace_closed(
        endpoint.clone(),
        want,
        stalled.clone(),
        gone_rx,
        stalled_sockets,
        until,
        plan.stalled * MAX_STALLED_OPENED_PER_SLOT,
    ));

    let mut signals_sent = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut senders_closed = Vec::new();
    let mut senders = Vec::new();
    for task in sender_tasks {
        let tally = task.await.context("a sender panicked")?;
        signals_sent += tally.sent;
        for (reason, n) in tally.refused {
            *refused.entry(reason).or_default() += n;
        }
        match tally.outcome {
            Ok(sender) => senders.push(sender),
            Err(why) => senders_closed.push(why),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let replaced = replacer.await.context("the replacer panicked")?;
    // The senders go now: from here on the connection count is the stalled
    // sockets the server has not closed yet.
    for sender in senders {
        let _ = sender.close().await;
    }

    let attack_over = Instant::now();
    let mut open_now = None;
    let mut all_closed = None;
    while attack_over.elapsed() < AFTER_LIMIT {
        if let Some(open) = server.scrape().await?.get("ephemeral_connections") {
            open_now = Some(open as usize);
            if open == 0.0 {
                all_closed = Some((started.elapsed(), attack_over.elapsed()));
                break;
            }
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
    let opened = replaced.sockets.len();
    let closed = open_now.map(|open| opened.saturating_sub(open));
    drop(replaced.sockets);
    let gone_by = Instant::now() + GONE_LIMIT;
    while Instant::now() < gone_by {
        if server.scrape().await?.get("ephemeral_connections") == Some(0.0) {
            break;
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
    settle(server).await;

    let lifetimes = {
        let stalled = stalled.lock().unwrap_or_else(|p| p.into_inner());
        stalled.lifetimes()
    };
    Ok(Outcome {
        opened,
        closed,
        lifetimes,
        all_closed,
        signals_sent,
        refused,
        senders_closed,
        replacements_failed: replaced.failures,
        seconds,
    })
}

/// Everything the rows are made of.
struct Results {
    plan: Plan,
    signal_bytes: usize,
    probe_refusals: Vec<String>,
    baseline_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    before: Scrape,
    after: Scrape,
    outcome: Outcome,
}

fn rows(results: &Results) -> Vec<Row> {
    let mib = |kib: u64| Measure::new(kib as f64 / 1024.0, "MiB");
    let Results {
        plan,
        signal_bytes,
        probe_refusals,
        baseline_kib,
        peak_kib,
        after_kib,
        before,
        after,
        outcome,
    } = results;
    let baseline_name = "attackers connected, idle";
    let bound = Bound::of(plan.stalled);
    let growth = (peak_kib.saturating_sub(*baseline_kib) * 1024) as f64;
    let mut rows = Vec::new();

    let signals_relayed = counter_delta(before, after, "ephemeral_signals_relayed_total");
    let relayed = signals_relayed.map_or_else(String::new, |n| {
        format!(
            "; the server relayed {n:.0} signals, {:.1} MiB/s",
            n * *signal_bytes as f64 / MIB as f64 / outcome.seconds.max(1e-9)
        )
    });
    let probe = if probe_refusals.is_empty() {
        String::new()
    } else {
        format!(" (refused first: {})", probe_refusals.join(", "))
    };
    rows.push(
        Row::new(
            BENCHMARK,
            format!(
                "server RSS growth at peak, {} stalled readers for {} s",
                plan.stalled,
                plan.attack.as_secs()
            ),
            Measure::new(growth / MIB as f64, "MiB"),
            Better::Lower,
        )
        .against(
            "bound the caps imply",
            Measure::new(bound.total as f64 / MIB as f64, "MiB"),
        )
        .target("≤ bound", growth <= bound.total as f64)
        .note(format!(
            "bound: min({} × {} MiB queue = {} MiB, {} MiB/s per address × ({} s write timeout + {BURST_SECONDS} s of burst) = {} MiB) + {:.1} MiB of messages in flight; signals of {signal_bytes} bytes{probe}; {} sent{relayed}",
            plan.stalled,
            OUTBOUND_QUEUE_BYTES / MIB,
            bound.queues / MIB,
            BYTES_PER_SECOND_PER_ADDRESS / MIB,
            WRITE_TIMEOUT.as_secs(),
            bound.rate / MIB,
            bound.in_flight as f64 / MIB as f64,
            outcome.signals_sent,
        )),
    );
    rows.push(
        Row::new(
            BENCHMARK,
            "server RSS at peak",
            mib(*peak_kib),
            Better::Lower,
        )
        .against(baseline_name, mib(*baseline_kib)),
    );
    rows.push(
        Row::new(
            BENCHMARK,
            "server RSS after the attackers left",
            mib(*after_kib),
            Better::Lower,
        )
        .against(baseline_name, mib(*baseline_kib)),
    );

    let mut closed_notes = Vec::new();
    if let Some(lifetimes) = Percentiles::of(&outcome.lifetimes) {
        closed_notes.push(format!(
            "{} closed during the attack, a median {:.1} s (max {:.1} s) after their first signal",
            lifetimes.samples,
            lifetimes.p50.as_secs_f64(),
            outcome
                .lifetimes
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
        ));
    }
    closed_notes.push(match outcome.all_closed {
        Some((from_start, from_end)) => format!(
            "the last closed {:.1} s after the attack began ({:.1} s after it stopped)",
            from_start.as_secs_f64(),
            from_end.as_secs_f64()
        ),
        None => format!(
            "some still open {} s after the attack stopped",
            AFTER_LIMIT.as_secs()
        ),
    });
    let reasons = counter_deltas(before, after, "ephemeral_rejected_total");
    if !reasons.is_empty() {
        closed_notes.push(format!("server's reasons: {reasons}"));
    }
    if !outcome.refused.is_empty() {
        let refused: Vec<String> = outcome
            .refused
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        closed_notes.push(format!("signals refused: {}", refused.join(", ")));
    }
    if !outcome.senders_closed.is_empty() {
        closed_notes.push(format!(
            "{} senders cut off (first: {})",
            outcome.senders_closed.len(),
            outcome.senders_closed[0]
        ));
    }
    if !outcome.replacements_failed.is_empty() {
        closed_notes.push(format!(
            "{} replacements failed (first: {})",
            outcome.replacements_failed.len(),
            outcome.replacements_failed[0]
        ));
    }
    let opened = format!(
        "of {} opened ({} at once, the rest replacements)",
        outcome.opened, plan.stalled
    );
    let closed_row = match outcome.closed {
        Some(closed) => Row::new(
            BENCHMARK,
            "stalled sockets closed by the server",
            Measure::new(closed as f64, "sockets"),
            Better::Higher,
        )
        .note(format!("{opened}; {}", closed_notes.join("; "))),
        None => Row::not_measured(
            BENCHMARK,
            "stalled sockets closed by the server",
            format!("no ephemeral_connections gauge; {opened}"),
        ),
    };
    rows.push(closed_row);
    rows
}

/// How much a counter grew between two scrapes.
fn counter_delta(before: &Scrape, after: &Scrape, name: &str) -> Option<f64> {
    Some(after.get(name)? - before.get(name).unwrap_or(0.0))
}

/// `slow_consumer: 40, …`: the labelled counters of `family` that grew.
fn counter_deltas(before: &Scrape, after: &Scrape, family: &str) -> String {
    let earlier: HashMap<&str, f64> = before.family(family).collect();
    after
        .family(family)
        .filter_map(|(labels, value)| {
            let grew = value - earlier.get(labels).copied().unwrap_or(0.0);
            let label = labels
                .strip_prefix("reason=\"")
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or(labels);
            (grew > 0.0).then(|| format!("{label}: {grew:.0}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's peak RSS in KiB, sampled until `stop` turns true.
async fn peak_rss(server: &ChildServer, mut stop: watch::Receiver<bool>) -> u64 {
    let mut peak = 0;
    loop {
        if let Ok(kib) = server.rss_kib() {
            peak = peak.max(kib);
        }
        if *stop.borrow() {
            return peak;
        }
        let _ = tokio::time::timeout(RSS_EVERY, stop.changed()).await;
    }
}

// ---- attackers -----------------------------------------------------------

/// The stalled sockets as the senders see them.
#[derive(Debug, Default)]
struct Stalled {
    /// Peer ids of the stalled sockets not known to be closed.
    live: Vec<String>,
    /// When each was first sent a signal.
    first_signal: HashMap<String, Instant>,
    /// When a refusal first said it was gone.
    gone: HashMap<String, Instant>,
    /// Round-robin position in `live`.
    next: usize,
}

impl Stalled {
    /// The next target, round-robin.
    fn pick(&mut self, now: Instant) -> Option<String> {
        if self.live.is_empty() {
            return None;
        }
        let target = self.live[self.next % self.live.len()].clone();
        self.next = self.next.wrapping_add(1);
        self.first_signal.entry(target.clone()).or_insert(now);
        Some(target)
    }

    /// Marks `target` gone; whether this is news.
    fn mark_gone(&mut self, target: &str, now: Instant) -> bool {
        let Some(at) = self.live.iter().position(|t| t == target) else {
            return false;
        };
        self.live.swap_remove(at);
        self.gone.insert(target.to_string(), now);
        true
    }

    /// From first signal to known gone, for each gone socket.
    fn lifetimes(&self) -> Vec<Duration> {
        self.gone
            .iter()
            .filter_map(|(id, gone)| Some(*gone - *self.first_signal.get(id)?))
            .collect()
    }
}

/// A stalled visitor: connected with a tiny receive buffer, joined, and
/// from then on never read. Returns the socket (to keep it open) and its
/// peer id.
async fn open_stalled(
    endpoint: &Endpoint,
    want: &str,
    deadline: Instant,
) -> Result<(Phoenix, String)> {
    let mut socket =
        Phoenix::connect_with(endpoint, ATTACK_SOURCE, Some(STALLED_RECEIVE_BUFFER)).await?;
    let response = socket.join_patiently(want, deadline).await?;
    let id = phoenix::peer_id(&response, want)?;
    Ok((socket, id))
}

/// A `signal` frame of `size` bytes exactly (an offer whose SDP is
/// padding), or the smallest such frame if `size` is smaller.
fn signal_text(
    join_ref: Option<&str>,
    msg_ref: &str,
    topic: &str,
    to: &str,
    size: usize,
    padding: &str,
) -> String {
    let frame = |sdp: &str| {
        json!([join_ref, msg_ref, topic, "signal", { "to": to, "type": "offer", "sdp": sdp }])
            .to_string()
    };
    let empty = frame("").len();
    let pad = size.saturating_sub(empty).min(padding.len());
    frame(&padding[..pad])
}

/// SDP padding: bytes JSON writes as they are.
fn padding(bytes: usize) -> String {
    "a".repeat(bytes)
}

/// The largest signal the server relays, found by asking it: the first of
/// a few sizes, from `--max-signal-bytes` down, that reaches a reading
/// visitor. Also the refusals of the larger ones.
async fn largest_accepted_signal(
    endpoint: &Endpoint,
    sender: &mut Phoenix,
    have: &str,
    want: &str,
    deadline: Instant,
) -> Result<(usize, Vec<String>)> {
    let mut probe = Phoenix::connect(endpoint, ATTACK_SOURCE).await?;
    let response = probe.join_patiently(want, deadline).await?;
    let probe_id = phoenix::peer_id(&response, want)?;
    let padding = padding(MAX_SIGNAL_BYTES);
    let sizes = [
        MAX_SIGNAL_BYTES,
        MAX_SIGNAL_BYTES - 64,
        MAX_SIGNAL_BYTES * 15 / 16,
        MAX_SIGNAL_BYTES * 3 / 4,
        MAX_SIGNAL_BYTES / 2,
    ];
    let mut refusals = Vec::new();
    for size in sizes {
        let (join_ref, msg_ref) = sender.next_refs(have);
        let text = signal_text(
            join_ref.as_deref(),
            &msg_ref,
            have,
            &probe_id,
            size,
            &padding,
        );
        sender.send_raw(text).await?;
        let give_up = Instant::now() + PROBE_WAIT;
        let refused = loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(give_up) => {
                    break Some(format!("neither relayed nor refused in {PROBE_WAIT:?}"));
                }
                frame = probe.next_frame() => {
                    if frame.context("the probe visitor was cut off")?.event == "signal" {
                        break None;
                    }
                }
                frame = sender.next_frame() => {
                    let frame = frame.context("the probing sender was cut off")?;
                    if frame.msg_ref.as_deref() == Some(msg_ref.as_str())
                        && let Some(("error", response)) = frame.as_reply()
                    {
                        break Some(phoenix::refusal_reason(response).to_string());
                    }
                }
            }
        };
        match refused {
            None => {
                let _ = probe.close().await;
                return Ok((size, refusals));
            }
            Some(why) => refusals.push(format!("{size} B: {why}")),
        }
    }
    bail!(
        "the server relayed no signal of up to {MAX_SIGNAL_BYTES} bytes: {}",
        refusals.join("; ")
    )
}

/// What one sender did.
struct SenderTally {
    sent: u64,
    refused: BTreeMap<String, u64>,
    /// The sender, still open, or why the server cut it off.
    outcome: std::result::Result<Phoenix, String>,
}

/// Signals per second one sender may send of `size` bytes, sustained:
/// the least of its socket's message rate and its share of the address's
/// message and byte rates.
fn allowed_rate(size: usize) -> f64 {
    let senders = SENDERS as f64;
    let per_socket = MESSAGES_PER_SECOND_PER_SOCKET as f64;
    let messages = MESSAGES_PER_SECOND_PER_ADDRESS as f64 / senders;
    let bytes = BYTES_PER_SECOND_PER_ADDRESS as f64 / size.max(1) as f64 / senders;
    per_socket.min(messages).min(bytes)
}

/// When a sender sends: every `gap`, on a fixed schedule (a late signal
/// does not make the next one early); the gap is the allowed rate less
/// [`RATE_MARGIN`], and a quarter longer after each interval of
/// [`ADJUST_EVERY`] in which the server refused one for a rate.
#[derive(Debug)]
struct Pace {
    gap: Duration,
    next: Instant,
    refused_since: bool,
    adjusted_at: Instant,
}

impl Pace {
    fn new(size: usize, now: Instant) -> Self {
        Self {
            gap: Duration::from_secs_f64(1.0 / (allowed_rate(size) * RATE_MARGIN)),
            next: now,
            refused_since: false,
            adjusted_at: now,
        }
    }

    fn refused(&mut self) {
        self.refused_since = true;
    }

    /// When the next signal may go, given that one went at `now`.
    fn after_send(&mut self, now: Instant) -> Instant {
        if now - self.adjusted_at >= ADJUST_EVERY {
            if self.refused_since {
                self.gap = self.gap * 5 / 4;
            }
            self.refused_since = false;
            self.adjusted_at = now;
        }
        self.next = (self.next + self.gap).max(now);
        self.next
    }
}

/// A sender: signals of `size` bytes to the stalled sockets, round-robin,
/// as fast as the server takes them, until `until`. Tells `gone` of every
/// stalled socket it finds closed.
async fn send_signals(
    mut sender: Phoenix,
    have: String,
    size: usize,
    stalled: Arc<Mutex<Stalled>>,
    gone: mpsc::UnboundedSender<()>,
    until: Instant,
) -> SenderTally {
    let padding = padding(size);
    let mut sent = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut targets: VecDeque<(String, String)> = VecDeque::with_capacity(REMEMBERED_SIGNALS);
    let mut pace = Pace::new(size, Instant::now());
    let cut_off = |why: anyhow::Error, sent: u64, refused: BTreeMap<String, u64>| SenderTally {
        sent,
        refused,
        outcome: Err(format!("{why:#}")),
    };
    while Instant::now() < until {
        let target = stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pick(Instant::now());
        let idle = target.is_none();
        if let Some(target) = target {
            let (join_ref, msg_ref) = sender.next_refs(&have);
            let text = signal_text(
                join_ref.as_deref(),
                &msg_ref,
                &have,
                &target,
                size,
                &padding,
            );
            match tokio::time::timeout_at(until, sender.send_raw(text)).await {
                Err(_) => break,
                Ok(Err(error)) => return cut_off(error, sent, refused),
                Ok(Ok(())) => sent += 1,
            }
            if targets.len() == REMEMBERED_SIGNALS {
                targets.pop_front();
            }
            targets.push_back((msg_ref, target));
        }
        // What the server answered so far, without waiting: a delivered
        // signal gets no reply, a refused one an error.
        while let Some(frame) = sender.next_frame().now_or_never() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => return cut_off(error, sent, refused),
            };
            let Some(("error", response)) = frame.as_reply() else {
                continue;
            };
            *refused
                .entry(phoenix::refusal_reason(response).to_string())
                .or_default() += 1;
            if phoenix::is_rate_refusal(response) {
                pace.refused();
            } else if phoenix::refusal_reason(response) == "unknown_peer"
                && let Some((_, target)) = targets
                    .iter()
                    .find(|(msg_ref, _)| frame.msg_ref.as_deref() == Some(msg_ref.as_str()))
            {
                let news = stalled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mark_gone(target, Instant::now());
                if news {
                    let _ = gone.send(());
                }
            }
        }
        let next = if idle {
            Instant::now() + NO_TARGET_PAUSE
        } else {
            pace.after_send(Instant::now())
        };
        tokio::time::sleep_until(next.min(until)).await;
    }
    SenderTally {
        sent,
        refused,
        outcome: Ok(sender),
    }
}

/// What [`replace_closed`] leaves: every stalled socket opened (to be
/// dropped when the caller is done) and the replacements that failed.
struct Replaced {
    sockets: Vec<Phoenix>,
    failures: Vec<String>,
}

/// Opens a new stalled socket for every one the senders found closed,
/// until `until` or until `budget` sockets were opened in all.
async fn replace_closed(
    endpoint: Endpoint,
    want: String,
    stalled: Arc<Mutex<Stalled>>,
    mut gone: mpsc::UnboundedReceiver<()>,
    mut sockets: Vec<Phoenix>,
    until: Instant,
    budget: usize,
) -> Replaced {
    let mut failures = Vec::new();
    while let Ok(Some(())) = tokio::time::timeout_at(until, gone.recv()).await {
        if sockets.len() >= budget {
            continue;
        }
        match open_stalled(&endpoint, &want, until).await {
            Ok((socket, id)) => {
                sockets.push(socket);
                stalled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .live
                    .push(id);
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    Replaced { sockets, failures }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_the_size_asked() {
        let to = "0123456789abcdef0123456789abcdef";
        let padding = padding(MAX_SIGNAL_BYTES);
        for size in [MAX_SIGNAL_BYTES, 1000] {
            let text = signal_text(Some("3"), "123", "have:x", to, size, &padding);
            assert_eq!(text.len(), size);
            let frame: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(frame[4]["to"], to);
        }
        let smallest = signal_text(None, "1", "have:x", to, 10, &padding);
        assert!(smallest.len() > 10);
    }

    #[test]
    fn the_bound_takes_the_smaller_cap() {
        let few = Bound::of(2);
        assert_eq!(few.queues, 2 * OUTBOUND_QUEUE_BYTES);
        assert_eq!(
            few.total,
            few.queues + (2 + SENDERS) as u64 * 2 * MAX_SIGNAL_BYTES as u64
        );
        let many = Bound::of(1000);
        assert_eq!(many.total - many.in_flight, many.rate);
    }

    #[test]
    fn senders_keep_to_their_share_of_the_rates() {
        // 64 KiB signals: the address's 8 MiB/s over 4 senders.
        assert_eq!(allowed_rate(65536), 32.0);
        // Small signals: the socket's own 100 messages/s.
        assert_eq!(allowed_rate(100), 100.0);
    }

    #[test]
    fn the_pace_keeps_a_schedule_and_backs_off_on_refusals() {
        let start = Instant::now();
        let mut pace = Pace::new(65536, start);
        let gap = pace.gap;
        assert_eq!(pace.after_send(start), start + gap);
        // Late: the next one is not made early to catch up.
        let late = start + 10 * gap;
        assert_eq!(pace.after_send(late), late);
        pace.refused();
        let later = late + ADJUST_EVERY;
        assert_eq!(pace.after_send(later), later);
        assert_eq!(pace.after_send(later), later + gap * 5 / 4);
    }

    #[test]
    fn targets_go_round_and_gone_ones_leave() {
        let now = Instant::now();
        let mut stalled = Stalled {
            live: vec!["a".into(), "b".into()],
            ..Stalled::default()
        };
        assert_eq!(stalled.pick(now).as_deref(), Some("a"));
        assert_eq!(stalled.pick(now).as_deref(), Some("b"));
        assert!(stalled.mark_gone("a", now + Duration::from_secs(3)));
        assert!(!stalled.mark_gone("a", now));
        assert_eq!(stalled.pick(now).as_deref(), Some("b"));
        assert_eq!(stalled.lifetimes(), vec![Duration::from_secs(3)]);
    }
}
