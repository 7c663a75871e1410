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
//!
//! The parts:
//! - [`timeline`]: the phases, as windows of time.
//! - [`normal`]: the normal visitors, and what they saw in each phase.
//! - [`flooder`]: the flood sockets, on their own low-priority runtime.
//! - [`mix`]: the messages a flood socket sends.
//! - [`report`]: the rows.

mod flooder;
mod mix;
mod normal;
mod report;
mod timeline;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_phoenix_client::{Client, peer_id, websocket_url};
use ephemeral_shared::{PageHash, Topic};
use tokio::time::Instant;

use crate::children::{self, ChildServer};
use crate::load;
use crate::report::Row;
use crate::signaling::answer_offers;
use flooder::{flood, flooder_runtime};
use normal::{Phase, normal_source, visit};
use report::{Results, rows};
use timeline::{Timeline, Window};

/// Where every flood socket connects from, so that the server's
/// per-address limits fall on the flooder and not on the normal clients.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FLOOD_SOCKETS: usize = 1000;
/// Pages of the normal clients, each with one host and one visitor: 100
/// clients.
const PAGES: usize = 50;
/// An offer not answered within this is counted as lost.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting and joining the normal clients must be done by then; the
/// server's default of 50 joins per second per address paces their 100
/// joins over a couple of seconds.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

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

pub async fn run(plan: &Plan) -> Result<Vec<Row>> {
    // The server's defaults throughout: its per-address limits are what
    // this benchmark is about.
    let server = children::signal_server(&[]).await?;
    let url = websocket_url(server.addr);
    eprintln!(
        "bench: flood: {} normal clients from 127.0.1.x, then {FLOOD_SOCKETS} flood sockets from {FLOOD_SOURCE}",
        2 * PAGES
    );
    let sdp: Arc<str> = load::sdp().into();
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let mut pairs = Vec::with_capacity(PAGES);
    for page in 0..PAGES {
        let hash = PageHash::of(format!("flood bench page {page}").as_bytes());
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut host = Client::connect_from(&url, normal_source(page)).await?;
        let response = host.join_patiently(&have, setup_deadline).await?;
        let host_id = peer_id(&response)?;
        let mut visitor = Client::connect_from(&url, normal_source(page)).await?;
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
    let flood_url = url.clone();
    let flood = flooder.spawn(async move {
        tokio::time::sleep_until(timeline.flood_starts).await;
        flood(flood_url, timeline.flood.end).await
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

/// The server's CPU over `window` as a share of one core.
async fn cpu_share(server: &ChildServer, window: Window) -> Option<f64> {
    tokio::time::sleep_until(window.start).await;
    let before = server.cpu_time().ok()?;
    tokio::time::sleep_until(window.end).await;
    let after = server.cpu_time().ok()?;
    Some(after.saturating_sub(before).as_secs_f64() / window.length().as_secs_f64())
}
