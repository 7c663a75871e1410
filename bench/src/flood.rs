//! Benchmark 7, flood from one address: does one abusive address slow
//! everyone else down? 100 normal clients (50 pages, one host and one
//! visitor each, from 127.0.1.x) negotiate at a steady pace — each
//! visitor sends an `offer` signal to its host, the host answers, and the
//! visitor times the round trip through the server — first with nothing
//! else going on (the baseline), then while 1,000 websocket sockets from
//! 127.0.0.2 flood the same server, then once more after the flood (does
//! it recover?). One server, the same clients, one run.
//!
//! Each flood socket sends, as fast as it can, a mix of heartbeats,
//! malformed JSON, binary frames, wrong-arity arrays, joins and leaves of
//! a page and joins of unknown topics, and reads (and drops) whatever the
//! server answers. The server's per-address limits apply to 127.0.0.2
//! only, so many flood sockets are refused at the handshake or closed
//! later; a refused or closed socket connects again after a short pause,
//! until the flood's time is up. How many were accepted, refused and
//! closed, and with what, is reported.
//!
//! The flooder runs in this process on its own tokio runtime whose threads
//! run at nice 19. On this 2-core machine the flooder, the server and the
//! normal clients share the cores; at normal priority the flooder's own
//! CPU (building and parsing frames, TCP handshakes) would come out of the
//! server's and the normal clients' time, and the benchmark would measure
//! the load generator. A real flooder is on another machine; at nice 19
//! it takes only the CPU nobody else wants, so the flood is as strong as
//! the spare CPU allows and its rate is reported with the results.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_shared::{PageHash, Topic};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

use crate::children::{self, ChildServer};
use crate::phoenix::{self, Endpoint, Phoenix, Ws};
use crate::report::{Better, Percentiles, Row, Value as Measure};
use crate::signaling::answer_offers;

const BENCHMARK: &str = "7. Flood from one address";
/// Where the normal clients connect from: each page's host and visitor
/// from an address of their own (127.0.1.1 …), as 50 households would,
/// so that no per-address limit falls on them.
fn normal_source(page: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, (page % 250) as u8 + 1)
}
/// Where every flood socket connects from, so that the server's
/// per-address limits fall on the flooder and not on the normal clients.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FLOOD_SOCKETS: usize = 1000;
/// Pages of the normal clients, each with one host and one visitor: 100
/// clients.
const PAGES: usize = 50;
/// A visitor sends its next offer this long after its last one. 50
/// visitors at 5 offers/s and their hosts' answers are 500 messages/s
/// (~350 KB/s) over 50 addresses, far below the server's default
/// per-address rates, so the normal clients stay clear of their own
/// addresses' limits and any slowdown is the flood's doing.
const OFFER_EVERY: Duration = Duration::from_millis(200);
/// An offer not answered within this is counted as lost.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting and joining the normal clients must be done by then; the
/// server's default of 50 joins per second per address paces their 100
/// joins over a couple of seconds.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a flood socket waits before connecting again after a refusal
/// or a close. Without a pause the refused sockets spin on connect, and
/// the TCP handshakes alone would take the cores from everything else.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// A handshake that takes longer counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds each flood socket's loop in count as well as in time.
const MAX_ATTEMPTS_PER_SOCKET: u32 = 2_000;
const MAX_MESSAGES_PER_CONNECTION: u64 = 1_000_000;
/// The flooder's threads' nice value: the lowest priority there is.
const FLOODER_NICE: libc::c_int = 19;
/// Set when a flooder thread could not lower its priority, so the
/// results can say the flood ran at normal priority.
static FLOODER_NOT_NICED: AtomicBool = AtomicBool::new(false);

/// How long each phase lasts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// After the normal clients joined, before anything is measured.
    settle: Duration,
    /// Normal clients alone: the baseline.
    quiet: Duration,
    /// The flood has started but is not measured yet: its sockets are
    /// still connecting.
    ramp: Duration,
    /// The flood, measured.
    flood: Duration,
    /// After the flood stopped, before the recovery window.
    gap: Duration,
    /// Normal clients alone again.
    recovery: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                settle: Duration::from_secs(1),
                quiet: Duration::from_secs(5),
                ramp: Duration::from_secs(2),
                flood: Duration::from_secs(5),
                gap: Duration::from_secs(1),
                recovery: Duration::from_secs(3),
            }
        } else {
            Self {
                settle: Duration::from_secs(2),
                quiet: Duration::from_secs(15),
                ramp: Duration::from_secs(2),
                flood: Duration::from_secs(15),
                gap: Duration::from_secs(2),
                recovery: Duration::from_secs(5),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// The phases as instants, from the moment the normal clients are ready.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    quiet: Window,
    /// When the flood sockets start connecting; they stop at `flood.end`.
    flood_starts: Instant,
    flood: Window,
    recovery: Window,
}

impl Timeline {
    fn from(ready: Instant, plan: &Plan) -> Self {
        let quiet_start = ready + plan.settle;
        let quiet = Window {
            start: quiet_start,
            end: quiet_start + plan.quiet,
        };
        let flood_starts = quiet.end;
        let flood = Window {
            start: flood_starts + plan.ramp,
            end: flood_starts + plan.ramp + plan.flood,
        };
        let recovery = Window {
            start: flood.end + plan.gap,
            end: flood.end + plan.gap + plan.recovery,
        };
        Self {
            quiet,
            flood_starts,
            flood,
            recovery,
        }
    }
}

pub async fn run(plan: &Plan) -> Result<Vec<Row>> {
    // The server's defaults throughout: its per-address limits are what
    // this benchmark is about.
    let server = children::signal_server(&[]).await?;
    let endpoint = Endpoint::phoenix(server.addr);
    eprintln!(
        "bench: flood: {} normal clients from 127.0.1.x, then {FLOOD_SOCKETS} flood sockets from {FLOOD_SOURCE}",
        2 * PAGES
    );
    let sdp: Arc<str> = phoenix::sdp().into();
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let mut pairs = Vec::with_capacity(PAGES);
    for page in 0..PAGES {
        let hash = PageHash::of(format!("flood bench page {page}").as_bytes());
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut host = Phoenix::connect(&endpoint, normal_source(page)).await?;
        let response = host.join_patiently(&have, setup_deadline).await?;
        let host_id = phoenix::peer_id(&response, &have)?;
        let mut visitor = Phoenix::connect(&endpoint, normal_source(page)).await?;
        visitor.join_patiently(&want, setup_deadline).await?;
        pairs.push((host, have, visitor, want, host_id));
    }

    let timeline = Timeline::from(Instant::now(), plan);
    let hosts_stop = timeline.recovery.end + EXCHANGE_TIMEOUT;
    let mut host_tasks = Vec::with_capacity(PAGES);
    let mut visitor_tasks = Vec::with_capacity(PAGES);
    for (host, have, visitor, want, host_id) in pairs {
        host_tasks.push(tokio::spawn(answer_offers(
            host,
            have,
            sdp.clone(),
            hosts_stop,
        )));
        visitor_tasks.push(tokio::spawn(visit(
            visitor,
            want,
            host_id,
            sdp.clone(),
            timeline.recovery.end,
        )));
    }

    let flooder = flooder_runtime()?;
    let flood_endpoint = endpoint.clone();
    let flood = flooder.spawn(async move {
        tokio::time::sleep_until(timeline.flood_starts).await;
        flood(flood_endpoint, timeline.flood.end).await
    });
    let quiet_cpu = cpu_share(&server, timeline.quiet).await;
    let flood_cpu = cpu_share(&server, timeline.flood).await;
    let flood = flood.await.context("the flooder panicked");
    // Its tasks are done; the runtime must not be dropped inside this one.
    flooder.shutdown_background();
    let flood = flood?;

    let mut tallies = Vec::with_capacity(PAGES);
    for task in visitor_tasks {
        tallies.push(task.await.context("a normal visitor panicked")?);
    }
    let mut hosts_closed = Vec::new();
    for task in host_tasks {
        if let Err(error) = task.await.context("a normal host panicked")? {
            hosts_closed.push(format!("{error:#}"));
        }
    }
    server.stop().await;

    let quiet = Phase::of(&tallies, timeline.quiet);
    let flooded = Phase::of(&tallies, timeline.flood);
    let recovered = Phase::of(&tallies, timeline.recovery);
    let (Some(quiet_latency), Some(flood_latency)) = (quiet.latency, flooded.latency) else {
        bail!(
            "no answered exchange without the flood ({}) or during it ({})",
            quiet.answered,
            flooded.answered
        );
    };
    Ok(rows(&Results {
        quiet_latency,
        flood_latency,
        quiet,
        flooded,
        recovered,
        quiet_cpu,
        flood_cpu,
        flood,
        tallies,
        hosts_closed,
    }))
}

/// Everything the rows are made of.
struct Results {
    quiet_latency: Percentiles,
    flood_latency: Percentiles,
    quiet: Phase,
    flooded: Phase,
    recovered: Phase,
    quiet_cpu: Option<f64>,
    flood_cpu: Option<f64>,
    flood: FloodSummary,
    tallies: Vec<VisitorTally>,
    hosts_closed: Vec<String>,
}

fn rows(results: &Results) -> Vec<Row> {
    let Results {
        quiet_latency,
        flood_latency,
        quiet,
        flooded,
        recovered,
        quiet_cpu,
        flood_cpu,
        flood,
        tallies,
        hosts_closed,
    } = results;
    let baseline = "no flood (same clients, same server)";
    let mut rows = Vec::new();

    let cpu = match (quiet_cpu, flood_cpu) {
        (Some(quiet), Some(flood)) => format!(
            "; server CPU {:.0}% of a core without the flood, {:.0}% with it",
            quiet * 100.0,
            flood * 100.0
        ),
        _ => String::new(),
    };
    rows.push(
        Row::new(
            BENCHMARK,
            format!(
                "{} normal clients' offer→answer p50 during the flood",
                2 * PAGES
            ),
            Measure::ms(flood_latency.p50),
            Better::Lower,
        )
        .against(baseline, Measure::ms(quiet_latency.p50))
        .note(format!(
            "{} exchanges without, {} with{cpu}",
            quiet.answered, flooded.answered
        )),
    );

    let mut p99_notes = vec![format!(
        "lost (no answer in {} s): {} without, {} with",
        EXCHANGE_TIMEOUT.as_secs(),
        quiet.lost,
        flooded.lost
    )];
    if let Some(after) = recovered.latency {
        p99_notes.push(format!(
            "after the flood: p99 {:.2} ms",
            after.p99.as_secs_f64() * 1e3
        ));
    }
    let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
    for tally in tallies {
        for (reason, n) in &tally.refused {
            *refused.entry(reason).or_default() += n;
        }
    }
    if !refused.is_empty() {
        p99_notes.push(format!(
            "normal clients' signals refused: {}",
            breakdown(refused.iter().map(|(k, v)| (*k, *v)))
        ));
    }
    let closed: Vec<&str> = tallies.iter().filter_map(|t| t.closed.as_deref()).collect();
    if !closed.is_empty() || !hosts_closed.is_empty() {
        p99_notes.push(format!(
            "normal clients cut off: {} visitors, {} hosts (first: {})",
            closed.len(),
            hosts_closed.len(),
            closed
                .first()
                .copied()
                .or(hosts_closed.first().map(String::as_str))
                .unwrap_or_default()
        ));
    }
    rows.push(
        Row::new(
            BENCHMARK,
            "normal clients' offer→answer p99 during the flood",
            Measure::ms(flood_latency.p99),
            Better::Lower,
        )
        .against(baseline, Measure::ms(quiet_latency.p99))
        .target(
            "p99 within 2× of no flood",
            flood_latency.p99 <= 2 * quiet_latency.p99,
        )
        .note(p99_notes.join("; ")),
    );

    let seconds = flood.seconds.max(1e-9);
    let priority = if FLOODER_NOT_NICED.load(Ordering::Relaxed) {
        "at normal priority (nice failed)"
    } else {
        "at nice 19"
    };
    rows.push(
        Row::new(
            BENCHMARK,
            format!("flood sockets accepted ({FLOOD_SOCKETS} sockets from {FLOOD_SOURCE})"),
            Measure::new(flood.accepted as f64, "sockets"),
            Better::Lower,
        )
        .note(format!(
            "of {} attempts in {seconds:.0} s; at most {} open at once; the flood sent {:.0} messages/s {priority}",
            flood.attempts,
            flood.peak_open,
            flood.messages as f64 / seconds
        )),
    );
    let refused_total: u64 = flood.refused.values().sum();
    rows.push(
        Row::new(
            BENCHMARK,
            "flood connection attempts refused",
            Measure::new(refused_total as f64, "attempts"),
            Better::Higher,
        )
        .note(breakdown_or_none(&flood.refused)),
    );
    let closed_total: u64 = flood.closed.values().sum();
    rows.push(
        Row::new(
            BENCHMARK,
            "flood sockets closed by the server",
            Measure::new(closed_total as f64, "sockets"),
            Better::Higher,
        )
        .note(breakdown_or_none(&flood.closed)),
    );
    rows
}

/// `a: 3, b: 1`, largest first.
fn breakdown<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let mut counts: Vec<_> = counts.collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(what, n)| format!("{what}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn breakdown_or_none(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        "none".to_string()
    } else {
        breakdown(counts.iter().map(|(k, v)| (k.as_str(), *v)))
    }
}

/// The server's CPU over `window` as a share of one core.
async fn cpu_share(server: &ChildServer, window: Window) -> Option<f64> {
    tokio::time::sleep_until(window.start).await;
    let before = server.cpu_time().ok()?;
    tokio::time::sleep_until(window.end).await;
    let after = server.cpu_time().ok()?;
    Some(after.saturating_sub(before).as_secs_f64() / window.length().as_secs_f64())
}

// ---- normal clients ----------------------------------------------------

/// What one normal visitor saw.
#[derive(Debug, Default)]
struct VisitorTally {
    /// Each exchange: when its offer went out, and how long the answer
    /// took (`None`: lost).
    exchanges: Vec<(Instant, Option<Duration>)>,
    /// Offers the server refused, by reason.
    refused: BTreeMap<String, u64>,
    /// Why the visitor stopped early, if the server cut it off.
    closed: Option<String>,
}

/// The normal visitors' exchanges whose offers went out in one window.
struct Phase {
    latency: Option<Percentiles>,
    answered: usize,
    lost: usize,
}

impl Phase {
    fn of(tallies: &[VisitorTally], window: Window) -> Self {
        let exchanges = tallies
            .iter()
            .flat_map(|t| &t.exchanges)
            .filter(|(sent, _)| window.contains(*sent));
        let mut latencies = Vec::new();
        let mut lost = 0;
        for (_, latency) in exchanges {
            match latency {
                Some(latency) => latencies.push(*latency),
                None => lost += 1,
            }
        }
        Self {
            latency: Percentiles::of(&latencies),
            answered: latencies.len(),
            lost,
        }
    }
}

/// A normal visitor: an offer to its host every [`OFFER_EVERY`], timing
/// each answer, until `until`.
async fn visit(
    mut visitor: Phoenix,
    want: String,
    host: String,
    sdp: Arc<str>,
    until: Instant,
) -> VisitorTally {
    let mut tally = VisitorTally::default();
    while Instant::now() < until {
        let sent = Instant::now();
        let offer = json!({ "to": host, "type": "offer", "sdp": &*sdp });
        let answered = match visitor.push(&want, "signal", offer).await {
            Ok(_) => await_answer(&mut visitor, sent, &mut tally.refused).await,
            Err(error) => Err(error),
        };
        match answered {
            Ok(answered) => tally
                .exchanges
                .push((sent, answered.then(|| sent.elapsed()))),
            Err(error) => {
                tally.closed = Some(format!("{error:#}"));
                break;
            }
        }
        tokio::time::sleep_until(sent + OFFER_EVERY).await;
    }
    tally
}

/// Whether the answer to the offer sent at `sent` came within
/// [`EXCHANGE_TIMEOUT`]; a refused offer is counted by its reason and is
/// not answered. An error only when the server cut the visitor off.
async fn await_answer(
    visitor: &mut Phoenix,
    sent: Instant,
    refused: &mut BTreeMap<String, u64>,
) -> Result<bool> {
    loop {
        let Ok(frame) =
            tokio::time::timeout_at(sent + EXCHANGE_TIMEOUT, visitor.next_frame()).await
        else {
            return Ok(false);
        };
        let frame = frame?;
        if let Some(("error", response)) = frame.as_reply() {
            let reason = phoenix::refusal_reason(response).to_string();
            *refused.entry(reason).or_default() += 1;
            return Ok(false);
        }
        if frame.event == "signal" && frame.payload.get("type") == Some(&json!("answer")) {
            return Ok(true);
        }
    }
}

// ---- the flood ---------------------------------------------------------

/// A runtime for the flooder alone, its threads at nice 19.
fn flooder_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flooder")
        .enable_all()
        .on_thread_start(lower_this_threads_priority)
        .build()
        .context("cannot start the flooder's runtime")
}

/// Linux keeps a nice value per thread, so this lowers the calling
/// thread's priority only, not the benchmark's.
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority only read and set this thread's
    // scheduling attributes.
    let set = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, FLOODER_NICE)
    };
    if set != 0 {
        FLOODER_NOT_NICED.store(true, Ordering::Relaxed);
    }
}

/// Shared by every flood socket; events that are counted by kind (refusals
/// and closes) are rare next to messages, so a mutex is cheap there.
#[derive(Debug, Default)]
struct FloodCounts {
    attempts: AtomicU64,
    accepted: AtomicU64,
    messages: AtomicU64,
    open: AtomicI64,
    peak_open: AtomicI64,
    refused: Mutex<BTreeMap<String, u64>>,
    closed: Mutex<BTreeMap<String, u64>>,
}

impl FloodCounts {
    fn count(map: &Mutex<BTreeMap<String, u64>>, what: String) {
        let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *map.entry(what).or_default() += 1;
    }

    fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
    }
}

/// What the flood did, over its whole run.
#[derive(Debug)]
struct FloodSummary {
    seconds: f64,
    attempts: u64,
    accepted: u64,
    messages: u64,
    peak_open: i64,
    /// Refused connection attempts, by how (`HTTP 429`, `TCP: …`).
    refused: BTreeMap<String, u64>,
    /// Accepted sockets the server closed, by close code and reason.
    closed: BTreeMap<String, u64>,
}

/// [`FLOOD_SOCKETS`] sockets from [`FLOOD_SOURCE`], flooding until
/// `until`.
async fn flood(endpoint: Endpoint, until: Instant) -> FloodSummary {
    let started = Instant::now();
    let counts = Arc::new(FloodCounts::default());
    let sockets: Vec<_> = (0..FLOOD_SOCKETS)
        .map(|index| tokio::spawn(flood_socket(endpoint.clone(), index, until, counts.clone())))
        .collect();
    for socket in sockets {
        // A flood socket has no failure of its own to report: everything
        // that goes wrong for it is counted.
        let _ = socket.await;
    }
    let take = |map: &Mutex<BTreeMap<String, u64>>| {
        std::mem::take(&mut *map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    };
    FloodSummary {
        seconds: started.elapsed().as_secs_f64(),
        attempts: counts.attempts.load(Ordering::Relaxed),
        accepted: counts.accepted.load(Ordering::Relaxed),
        messages: counts.messages.load(Ordering::Relaxed),
        peak_open: counts.peak_open.load(Ordering::Relaxed),
        refused: take(&counts.refused),
        closed: take(&counts.closed),
    }
}

/// One flood socket: connect, flood until closed, connect again.
async fn flood_socket(endpoint: Endpoint, index: usize, until: Instant, counts: Arc<FloodCounts>) {
    let messages = FloodMessages::new(index);
    for _ in 0..MAX_ATTEMPTS_PER_SOCKET {
        if Instant::now() >= until {
            break;
        }
        counts.attempts.fetch_add(1, Ordering::Relaxed);
        let give_up = (Instant::now() + CONNECT_TIMEOUT).min(until);
        let connected =
            tokio::time::timeout_at(give_up, phoenix::connect(&endpoint, FLOOD_SOURCE)).await;
        match connected {
            Err(_) if Instant::now() >= until => break,
            Err(_) => FloodCounts::count(&counts.refused, "handshake timed out".into()),
            Ok(Err(error)) => FloodCounts::count(&counts.refused, refusal(&error)),
            Ok(Ok(ws)) => {
                counts.opened();
                let closed = flood_connection(ws, &messages, until, &counts).await;
                counts.open.fetch_sub(1, Ordering::Relaxed);
                match closed {
                    Some(how) => FloodCounts::count(&counts.closed, how),
                    // The flood is over; this side dropped the socket.
                    None => break,
                }
            }
        }
        tokio::time::sleep_until((Instant::now() + RECONNECT_PAUSE).min(until)).await;
    }
}

/// Floods one accepted socket until the server closes it (how, as a
/// label) or `until` (`None`).
async fn flood_connection(
    ws: Ws,
    messages: &FloodMessages,
    until: Instant,
    counts: &FloodCounts,
) -> Option<String> {
    let (mut sink, mut stream) = ws.split();
    let read = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Close(frame)) => return close_label(frame),
                Ok(_) => {}
                Err(error) => return format!("read error: {}", error_kind(&error)),
            }
        }
        "ended without a close frame".to_string()
    };
    let write = async {
        for n in 0..MAX_MESSAGES_PER_CONNECTION {
            if sink.send(messages.nth(n)).await.is_err() {
                break;
            }
            counts.messages.fetch_add(1, Ordering::Relaxed);
        }
        // Past the cap, or the server stopped taking messages: what
        // happens next is the server's close, which `read` sees.
        std::future::pending::<()>().await;
    };
    // The deadline goes first: the write loop spends the task's whole
    // cooperative budget on every poll, and a timer polled after it would
    // find the budget gone and never fire.
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(until) => None,
        closed = read => Some(closed),
        () = write => None,
    }
}

/// The mix one flood socket sends, round and round; texts are built once
/// and cloned cheaply (they are reference-counted bytes).
struct FloodMessages {
    mix: Vec<Message>,
    /// Where this socket starts in the mix, so that the sockets do not all
    /// send the same kind at the same moment.
    offset: usize,
}

impl FloodMessages {
    fn new(index: usize) -> Self {
        let page = PageHash::of(format!("flood page {index}").as_bytes());
        let topic = Topic::want(page).to_string();
        let text = |value: Value| Message::text(value.to_string());
        let mix = vec![
            text(json!([null, "1", "phoenix", "heartbeat", {}])),
            Message::text(r#"["1","2","phoenix","heartbeat",{"#),
            text(json!(["3", "3", topic, "phx_join", {}])),
            Message::Binary(Bytes::from_static(&[0xAB; 64])),
            text(json!(["4", "phoenix", "heartbeat"])),
            text(json!(["3", "5", topic, "phx_leave", {}])),
            text(json!(["6", "6", "nope:zzz", "phx_join", {}])),
        ];
        Self {
            offset: index % mix.len(),
            mix,
        }
    }

    fn nth(&self, n: u64) -> Message {
        let at = (n as usize).wrapping_add(self.offset) % self.mix.len();
        self.mix[at].clone()
    }
}

/// How a connection attempt was refused: the HTTP status of a refused
/// upgrade, or the kind of a TCP or handshake error.
fn refusal(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(error) = cause.downcast_ref::<tungstenite::Error>() {
            return match error {
                tungstenite::Error::Http(response) => {
                    format!("HTTP {}", response.status().as_u16())
                }
                other => format!("handshake: {}", error_kind(other)),
            };
        }
        if let Some(error) = cause.downcast_ref::<std::io::Error>() {
            return format!("TCP: {}", error.kind());
        }
    }
    "unknown".to_string()
}

/// A short, bounded label for a websocket error (not its full text, which
/// can carry per-connection details).
fn error_kind(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".into()
        }
        tungstenite::Error::Io(io) => format!("I/O {}", io.kind()),
        // The server dropped the TCP connection before answering the
        // upgrade, as it does past its per-address connection cap.
        tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            "dropped before the HTTP reply".into()
        }
        tungstenite::Error::Protocol(protocol) => format!("protocol: {protocol}"),
        tungstenite::Error::Capacity(_) => "capacity".into(),
        tungstenite::Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        _ => "other".into(),
    }
}

/// `1008 rate limit exceeded`: the close code and the server's reason.
fn close_label(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(frame) => {
            let reason: String = frame.reason.as_str().chars().take(60).collect();
            format!("{} {reason}", u16::from(frame.code))
        }
        None => "close frame without a code".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_each_other() {
        let plan = Plan::new(true);
        let ready = Instant::now();
        let t = Timeline::from(ready, &plan);
        assert!(t.quiet.start >= ready + plan.settle);
        assert_eq!(t.flood_starts, t.quiet.end);
        assert_eq!(t.flood.start, t.flood_starts + plan.ramp);
        assert!(t.recovery.start > t.flood.end);
        assert_eq!(t.flood.length(), plan.flood);
    }

    #[test]
    fn the_mix_cycles_from_each_sockets_offset() {
        let messages = FloodMessages::new(3);
        let kinds = messages.mix.len() as u64;
        assert_eq!(messages.nth(0), messages.nth(kinds));
        assert_ne!(messages.nth(0), FloodMessages::new(4).nth(0));
    }

    #[test]
    fn breakdowns_list_the_largest_first() {
        let counts = BTreeMap::from([("HTTP 429".to_string(), 3), ("TCP: x".to_string(), 9)]);
        assert_eq!(breakdown_or_none(&counts), "TCP: x: 9, HTTP 429: 3");
        assert_eq!(breakdown_or_none(&BTreeMap::new()), "none");
    }
}
