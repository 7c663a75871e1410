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
//!
//! The parts:
//! - [`signal`]: the attack's `signal` frames, built to a size, and the
//!   probe for the largest the server relays.
//! - [`readers`]: the stalled readers: opening one, and the roster the
//!   senders pick targets from.
//! - [`sender`]: the senders: their pace and their send loop.
//! - [`attack`]: the attack over time, replacements, and the wait for the
//!   server to close what is left.
//! - [`bound`]: the memory bound the caps imply.
//! - [`report`]: the rows.

mod attack;
mod bound;
mod readers;
mod report;
mod sender;
mod signal;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use ephemeral_phoenix_client::{Client, websocket_url};
use ephemeral_shared::{PageHash, Topic};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::children::{self, ChildServer};
use crate::memory::settle;
use crate::report::Row;
use attack::{Attack, attack};
use readers::{Stalled, open_stalled};
use report::{Results, rows};
use signal::largest_accepted_signal;

/// Every attacker socket's address.
const ATTACK_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const MIB: u64 = 1024 * 1024;
/// The caps under test, at the server's defaults.
const OUTBOUND_QUEUE_BYTES: u64 = 4 * MIB;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SIGNAL_BYTES: usize = 65536;
const BYTES_PER_SECOND_PER_ADDRESS: u64 = 8 * MIB;
const RELAY_BYTES_PER_SECOND_PER_ADDRESS: u64 = 4 * MIB;
/// Attacker sockets that host the page and send the signals.
const SENDERS: usize = 4;
/// Connecting and joining the attackers must be done by then (the
/// server's default joins per second per address pace them).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Messages per second one socket may send, sustained (the default).
const MESSAGES_PER_SECOND_PER_SOCKET: u64 = 100;
const MESSAGES_PER_SECOND_PER_ADDRESS: u64 = 1000;
/// The server's per-address buckets hold this many seconds' worth.
const BURST_SECONDS: u64 = 4;

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

pub async fn run(plan: &Plan) -> Result<Vec<Row>> {
    let flags = server_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = children::signal_server(&flags).await?;
    let url = websocket_url(server.addr);
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
        let mut sender = Client::connect_from(&url, ATTACK_SOURCE).await?;
        sender.join_patiently(&have, setup_deadline).await?;
        senders.push(sender);
    }
    let (signal_bytes, probe_refusals) =
        largest_accepted_signal(&url, &mut senders[0], &have, &want, setup_deadline).await?;
    let mut stalled_sockets = Vec::with_capacity(plan.stalled);
    let mut stalled = Stalled::default();
    for _ in 0..plan.stalled {
        let (socket, id) = open_stalled(&url, &want, setup_deadline).await?;
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
            &url,
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
