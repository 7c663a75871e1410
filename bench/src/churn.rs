//! Benchmark 9, churn soak: does the server give back what clients take?
//! 10,000 short-lived clients against one server, each one cycle of
//! connect, join, (a visitor also asks for the page), leave or not, and
//! disconnect — in one of three ways: leave then close the websocket,
//! close without leaving, or drop the TCP connection without a close
//! frame. Hosts and visitors alternate over 100 pages, so several clients
//! share a page at a time and pages come and go.
//!
//! The server's memory (`VmRSS`) and its `/metrics` gauges
//! (`ephemeral_connections`, `ephemeral_topics`, `ephemeral_pages`) are
//! read before (after a warm-up of 200 cycles, so lazily grown tables
//! count as baseline), sampled every 100 ms during (their peaks), and
//! read after, once the gauges are back where they started or a time
//! limit has passed. Reported: RSS after against before, and whether each
//! gauge returned.
//!
//! The cycles come from eight loopback addresses, 127.0.0.4 to 127.0.0.11,
//! with the server's default per-address limits in force (they are part of
//! what a real server runs with), and each address is paced to 40 joins a
//! second, under the default of 50, so that no cycle is refused for the
//! rate. That caps the soak at 320 cycles a second.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use ephemeral_phoenix_client::{Client, websocket_url};
use ephemeral_shared::{PageHash, Topic};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::children::{self, ChildServer, Scrape};
use crate::memory::settle;
use crate::report::{Better, Row, Value as Measure};

const BENCHMARK: &str = "9. Churn soak";
/// The cycles' source addresses, used in turn.
const SOURCES: [Ipv4Addr; 8] = [
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
    Ipv4Addr::new(127, 0, 0, 7),
    Ipv4Addr::new(127, 0, 0, 8),
    Ipv4Addr::new(127, 0, 0, 9),
    Ipv4Addr::new(127, 0, 0, 10),
    Ipv4Addr::new(127, 0, 0, 11),
];
/// Joins a second per source address: under the server's default of 50.
const JOINS_PER_SECOND_PER_SOURCE: u32 = 40;
const PAGES: usize = 100;
/// Cycles under way at once.
const IN_FLIGHT: usize = 32;
const WARM_UP_CYCLES: usize = 200;
/// A cycle that takes longer fails (and the soak goes on).
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gauges have to return to their baseline after the soak.
const RETURN_LIMIT: Duration = Duration::from_secs(20);
/// How often RSS and the gauges are read during the soak. A cycle lasts
/// milliseconds, so the gauges' peaks are those of the readings, which
/// can miss the true peak between two of them.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the gauges are polled while waiting for them to return.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Failures whose reasons are kept for the report.
const FAILURES_KEPT: usize = 3;

/// The gauges watched, and the unit each counts.
const GAUGES: [(&str, &str); 3] = [
    ("ephemeral_connections", "connections"),
    ("ephemeral_topics", "memberships"),
    ("ephemeral_pages", "pages"),
];

/// How long the soak is.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    cycles: usize,
    time_limit: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                cycles: 2_000,
                time_limit: Duration::from_secs(30),
            }
        } else {
            Self {
                cycles: 10_000,
                time_limit: Duration::from_secs(120),
            }
        }
    }
}

/// The server's memory and gauges at one moment.
#[derive(Debug, Clone)]
struct Reading {
    rss_kib: u64,
    gauges: [Option<f64>; GAUGES.len()],
}

impl Reading {
    async fn now(server: &ChildServer) -> Result<Self> {
        let scrape = server.scrape().await?;
        Ok(Self {
            rss_kib: server.rss_kib()?,
            gauges: gauges(&scrape),
        })
    }
}

fn gauges(scrape: &Scrape) -> [Option<f64>; GAUGES.len()] {
    GAUGES.map(|(name, _)| scrape.get(name))
}

/// The largest of each, over the soak.
#[derive(Debug, Clone, Default)]
struct Peaks {
    rss_kib: u64,
    gauges: [Option<f64>; GAUGES.len()],
}

impl Peaks {
    fn add(&mut self, reading: &Reading) {
        self.rss_kib = self.rss_kib.max(reading.rss_kib);
        for (peak, value) in self.gauges.iter_mut().zip(reading.gauges) {
            if let Some(value) = value {
                *peak = Some(peak.map_or(value, |p: f64| p.max(value)));
            }
        }
    }
}

/// What the cycles did.
#[derive(Debug, Default)]
struct Soak {
    done: usize,
    failed: usize,
    failures: Vec<String>,
    seconds: f64,
}

pub async fn run(plan: &Plan) -> Result<Vec<Row>> {
    // The server's defaults: the per-address limits are part of what a
    // deployed server runs with, and the cycles are spread and paced to
    // stay under them.
    // Each cycle is a new connection, 40 a second per address: over the
    // default new-connection rate (20), which is about reconnect floods.
    let server = children::signal_server(&["--connections-per-second-per-address", "100"]).await?;
    let url = websocket_url(server.addr);
    let pacer = Pacer::new();
    eprintln!(
        "bench: churn: {WARM_UP_CYCLES} warm-up cycles, then {} cycles (at most {} s) from {}–{}",
        plan.cycles,
        plan.time_limit.as_secs(),
        SOURCES[0],
        SOURCES[SOURCES.len() - 1]
    );
    let warm_up = cycles(
        &url,
        &pacer,
        0..WARM_UP_CYCLES,
        Instant::now() + plan.time_limit,
    )
    .await;
    if warm_up.done == 0 {
        anyhow::bail!(
            "no warm-up cycle succeeded: {}",
            warm_up.failures.join("; ")
        );
    }
    let zero = [Some(0.0); GAUGES.len()];
    wait_for_gauges(&server, &zero).await?;
    settle(&server).await;
    let before = Reading::now(&server).await?;

    let (stop_sampling, sampling) = watch::channel(false);
    let soak = async {
        let first = WARM_UP_CYCLES;
        let soak = cycles(
            &url,
            &pacer,
            first..first + plan.cycles,
            Instant::now() + plan.time_limit,
        )
        .await;
        let _ = stop_sampling.send(true);
        soak
    };
    let (peaks, soak) = tokio::join!(sample(&server, sampling), soak);
    let returned_after = wait_for_gauges(&server, &before.gauges).await?;
    settle(&server).await;
    let after = Reading::now(&server).await?;
    let mut peaks = peaks;
    peaks.add(&after);
    server.stop().await;
    Ok(rows(plan, &soak, &before, &peaks, &after, returned_after))
}

fn rows(
    plan: &Plan,
    soak: &Soak,
    before: &Reading,
    peaks: &Peaks,
    after: &Reading,
    returned_after: Option<Duration>,
) -> Vec<Row> {
    let mib = |kib: u64| Measure::new(kib as f64 / 1024.0, "MiB");
    let mut soak_note = format!(
        "{} cycles in {:.0} s ({:.0}/s), {} failed",
        soak.done,
        soak.seconds,
        soak.done as f64 / soak.seconds.max(1e-9),
        soak.failed
    );
    if let Some(first) = soak.failures.first() {
        soak_note.push_str(&format!(" (first: {first})"));
    }
    if soak.done + soak.failed < plan.cycles {
        soak_note.push_str(&format!(
            "; stopped at the {} s limit",
            plan.time_limit.as_secs()
        ));
    }
    let mut rows = vec![
        Row::new(
            BENCHMARK,
            format!("server RSS after {} cycles", soak.done),
            mib(after.rss_kib),
            Better::Lower,
        )
        .against(
            format!("before (after {WARM_UP_CYCLES} warm-up cycles)"),
            mib(before.rss_kib),
        )
        .note(format!(
            "after ÷ before = {:.3}; peak {:.1} MiB; {soak_note}; from {}–{} with the server's default per-address limits, each address paced to {JOINS_PER_SECOND_PER_SOURCE} joins/s",
            after.rss_kib as f64 / before.rss_kib.max(1) as f64,
            peaks.rss_kib as f64 / 1024.0,
            SOURCES[0],
            SOURCES[SOURCES.len() - 1],
        )),
    ];
    for (i, (name, unit)) in GAUGES.iter().enumerate() {
        let (Some(was), Some(is)) = (before.gauges[i], after.gauges[i]) else {
            rows.push(Row::not_measured(
                BENCHMARK,
                format!("{name} after the soak"),
                "not exported by this server",
            ));
            continue;
        };
        let back = match returned_after {
            Some(after) if is == was => format!("back {:.1} s after the soak", after.as_secs_f64()),
            _ => format!("not back {} s after the soak", RETURN_LIMIT.as_secs()),
        };
        let peak = peaks.gauges[i].unwrap_or(is);
        rows.push(
            Row::new(
                BENCHMARK,
                format!("{name} after the soak"),
                Measure::new(is, unit),
                Better::Lower,
            )
            .against("before", Measure::new(was, unit))
            .target("back to its baseline", is == was)
            .note(format!(
                "peak {peak:.0} in readings every {} ms during the soak; {back}",
                SAMPLE_EVERY.as_millis()
            )),
        );
    }
    rows
}

/// Runs the cycles numbered `numbers`, [`IN_FLIGHT`] at a time, until
/// `deadline`; cycles not started by then are skipped.
async fn cycles(
    url: &str,
    pacer: &Pacer,
    numbers: std::ops::Range<usize>,
    deadline: Instant,
) -> Soak {
    let started = Instant::now();
    let outcomes: Vec<Option<Result<()>>> = futures_util::stream::iter(numbers)
        .map(|i| async move {
            if Instant::now() >= deadline {
                return None;
            }
            let outcome = tokio::time::timeout(CYCLE_TIMEOUT, cycle(url, pacer, i))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("cycle {i} took over {CYCLE_TIMEOUT:?}")));
            Some(outcome)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut soak = Soak {
        seconds: started.elapsed().as_secs_f64(),
        ..Soak::default()
    };
    for outcome in outcomes.into_iter().flatten() {
        match outcome {
            Ok(()) => soak.done += 1,
            Err(error) => {
                soak.failed += 1;
                if soak.failures.len() < FAILURES_KEPT {
                    soak.failures.push(format!("{error:#}"));
                }
            }
        }
    }
    soak
}

/// How cycle `i` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `phx_leave`, then a websocket close handshake.
    LeaveThenClose,
    /// A close handshake without leaving: the server must leave for it.
    Close,
    /// The TCP connection dropped without a close frame, as a tab that
    /// crashes or a network that goes away.
    Drop,
}

impl Ending {
    fn of(i: usize) -> Self {
        match i % 3 {
            0 => Self::LeaveThenClose,
            1 => Self::Close,
            _ => Self::Drop,
        }
    }
}

/// One client's life: connect, join a page's `have:` (even `i`) or
/// `want:` (odd `i`, which also asks for the page), and end.
async fn cycle(url: &str, pacer: &Pacer, i: usize) -> Result<()> {
    let source = i % SOURCES.len();
    let page = PageHash::of(format!("churn page {}", i % PAGES).as_bytes());
    let visitor = i % 2 == 1;
    let topic = if visitor {
        Topic::want(page)
    } else {
        Topic::have(page)
    }
    .to_string();
    pacer.wait(source).await;
    let mut client = Client::connect_from(url, SOURCES[source]).await?;
    client
        .join_patiently(&topic, Instant::now() + CYCLE_TIMEOUT)
        .await?;
    if visitor {
        // Not waited for: the request may be queued for a host's slot,
        // and leaving with a request pending is what a visitor who closes
        // the tab does.
        client
            .push(&topic, "content_request", json!({}))
            .await
            .context("cannot ask for the page")?;
    }
    match Ending::of(i) {
        Ending::LeaveThenClose => {
            client.leave(&topic).await?;
            client.close().await?;
        }
        Ending::Close => {
            client.close().await?;
        }
        Ending::Drop => drop(client),
    }
    Ok(())
}

/// Hands out join slots per source address, [`JOINS_PER_SECOND_PER_SOURCE`]
/// a second each.
struct Pacer {
    next: [Mutex<Instant>; SOURCES.len()],
    every: Duration,
}

impl Pacer {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            next: std::array::from_fn(|_| Mutex::new(now)),
            every: Duration::from_secs(1) / JOINS_PER_SECOND_PER_SOURCE,
        }
    }

    /// Waits for `source`'s next slot.
    async fn wait(&self, source: usize) {
        let slot = {
            let mut next = self.next[source]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.every;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Peaks of RSS and gauges, sampled until `stop` turns true. A reading
/// that fails is skipped: the sampler must not end the soak.
async fn sample(server: &ChildServer, mut stop: watch::Receiver<bool>) -> Peaks {
    let mut peaks = Peaks::default();
    loop {
        if let Ok(reading) = Reading::now(server).await {
            peaks.add(&reading);
        }
        if *stop.borrow() {
            return peaks;
        }
        let _ = tokio::time::timeout(SAMPLE_EVERY, stop.changed()).await;
    }
}

/// Polls until every gauge the server exports equals `baseline` (how long
/// that took), or [`RETURN_LIMIT`] passes (`None`).
async fn wait_for_gauges(
    server: &ChildServer,
    baseline: &[Option<f64>; GAUGES.len()],
) -> Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        let now = gauges(&server.scrape().await?);
        let back = now
            .iter()
            .zip(baseline)
            .all(|(now, was)| now.is_none() || was.is_none() || now == was);
        if back {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= RETURN_LIMIT {
            return Ok(None);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_and_role_comes_up() {
        let endings: Vec<Ending> = (0..6).map(Ending::of).collect();
        for ending in [Ending::LeaveThenClose, Ending::Close, Ending::Drop] {
            // Each ending meets both roles (i even: host, odd: visitor).
            assert!((0..6).any(|i| endings[i] == ending && i % 2 == 0));
            assert!((0..6).any(|i| endings[i] == ending && i % 2 == 1));
        }
    }

    #[test]
    fn peaks_keep_the_largest() {
        let mut peaks = Peaks::default();
        peaks.add(&Reading {
            rss_kib: 10,
            gauges: [Some(3.0), None, Some(1.0)],
        });
        peaks.add(&Reading {
            rss_kib: 8,
            gauges: [Some(1.0), None, Some(4.0)],
        });
        assert_eq!(peaks.rss_kib, 10);
        assert_eq!(peaks.gauges, [Some(3.0), None, Some(4.0)]);
    }
}
