//! Benchmark 3, signaling: how many WebRTC offer/answer exchanges a server
//! relays per second, and how long one takes, with many pages and peers —
//! our server, the WebTorrent reference tracker, and a bare echo server as
//! the ceiling, one after the other in the same run, under the same load
//! generator. Then `content_request` → `content` round trips over our relay.
//!
//! One exchange, in each system:
//! - ours: a visitor on `want:<h>` sends an `offer` signal to a host of
//!   `<h>` picked at random; the host sends an `answer` signal back (2
//!   relayed signals; a delivered signal gets no reply).
//! - tracker: a peer announces with one offer; the tracker relays it to a
//!   random peer of the swarm, which announces its answer; the tracker
//!   relays that back (2 relayed messages, plus the announce response).
//! - echo: the visitor sends the same offer text and gets it back, then the
//!   answer text and gets it back (2 messages through the server).
//!
//! Every visitor runs a closed loop (next exchange when the last one is
//! answered); the servers run in their own processes, and their CPU time
//! over the measured window gives a cost per exchange that does not depend
//! on how fast the load generator is. On a 2-core machine the generator and
//! the server share the cores, which caps every rate here.
//!
//! The parts:
//! - [`measure`]: the measured window, what each visitor and each system
//!   did in it, and the server's CPU over it.
//! - [`ours`]: our server: hosts answering, visitors offering.
//! - [`tracker`]: the WebTorrent tracker's peers.
//! - [`echo`]: the bare echo ceiling.
//! - [`content`]: `content_request` → `content` over our relay.

mod content;
mod echo;
mod measure;
mod ours;
mod tracker;

use std::time::Duration;

use anyhow::{Context, Result};

use crate::children;
use crate::report::{Better, Percentiles, Row, Value as Measure};
use content::content_round_trips;
use echo::echo;
use measure::{Outcome, median_round};
pub use ours::answer_offers;
use ours::ours;
use tracker::tracker;

const BENCHMARK: &str = "3. Signaling";
/// An exchange not answered within this is counted as lost, so a dropped
/// message cannot stall a visitor's loop for the rest of the run.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Our server's per-socket rate limit is there against abuse; the load
/// generator concentrates a crowd's traffic on a few sockets, so it is
/// lifted for this benchmark (the other systems have none).
const UNLIMITED: &[&str] = &[
    "--messages-per-second",
    "10000000",
    "--message-burst",
    "10000000",
];

/// [`UNLIMITED`], and the per-address limits lifted too: the load comes
/// from eight loopback addresses, tens of thousands of signals a second,
/// thousands per address against a default of 1,000 messages.
fn unlimited() -> Vec<&'static str> {
    [UNLIMITED, children::NO_PER_ADDRESS_LIMITS].concat()
}

/// The shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub pages: usize,
    pub hosts_per_page: usize,
    pub visitors_per_page: usize,
    pub warm_up: Duration,
    pub measure: Duration,
    /// Turns each system gets; the median one is reported.
    pub rounds: usize,
}

impl Load {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                pages: 50,
                hosts_per_page: 2,
                visitors_per_page: 2,
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(4),
                rounds: 1,
            }
        } else {
            Self {
                pages: 250,
                hosts_per_page: 2,
                visitors_per_page: 2,
                warm_up: Duration::from_secs(2),
                measure: Duration::from_secs(8),
                rounds: 3,
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} pages × ({} hosts + {} visitors)",
            self.pages, self.hosts_per_page, self.visitors_per_page
        )
    }
}

pub async fn run(load: &Load) -> Result<Vec<Row>> {
    // The three systems take turns, round after round, and each is
    // reported by its median round: a burst of other work on this shared
    // machine then skews one round, not one system.
    let mut ours_rounds = Vec::new();
    let mut tracker_rounds = Vec::new();
    let mut tracker_error = None;
    let mut echo_rounds = Vec::new();
    for round in 1..=load.rounds {
        eprintln!(
            "bench: signal relay round {round}/{}: ours, WebTorrent tracker, bare echo ({})",
            load.rounds,
            load.describe()
        );
        ours_rounds.push(ours(load).await?);
        if tracker_error.is_none() {
            match tracker(load).await {
                Ok(outcome) => tracker_rounds.push(outcome),
                Err(error) => {
                    eprintln!("bench: tracker baseline failed: {error:#}");
                    tracker_error = Some(format!("{error:#}"));
                }
            }
        }
        echo_rounds.push(echo(load).await?);
    }
    let ours = median_round(ours_rounds).context("no round of ours")?;
    let tracker = match tracker_error {
        Some(error) => Err(error),
        None => median_round(tracker_rounds)
            .context("no tracker round")
            .map_err(|e| e.to_string()),
    };
    let echo = median_round(echo_rounds).context("no echo round")?;
    eprintln!("bench: content_request → content over relay");
    let content = content_round_trips(load).await?;

    let mut rows = Vec::new();
    let shape = load.describe();
    let signals = |o: &Outcome| Measure::new(2.0 * o.exchanges_per_second, "signals/s");
    let rounds = if load.rounds > 1 {
        format!(", median of {} rounds", load.rounds)
    } else {
        String::new()
    };
    let mut vs_tracker = Row::new(
        BENCHMARK,
        format!("relayed signals/s, {shape}{rounds}"),
        signals(&ours),
        Better::Higher,
    );
    match &tracker {
        Ok(tracker) => {
            vs_tracker = vs_tracker.against("WebTorrent tracker", signals(tracker));
            let met = vs_tracker.advantage.is_some_and(|a| a >= 5.0);
            vs_tracker = vs_tracker.target("≥ 5× tracker", met);
        }
        Err(why) => vs_tracker = vs_tracker.note(format!("tracker not measured: {why}")),
    }
    rows.push(vs_tracker);
    let vs_echo = Row::new(
        BENCHMARK,
        "relayed signals/s vs ceiling",
        signals(&ours),
        Better::Higher,
    )
    .against("bare echo (messages/s)", signals(&echo));
    let met = vs_echo.advantage.is_some_and(|a| a >= 0.5);
    rows.push(vs_echo.target("within 2× of echo", met));

    for (q, pick) in [
        (
            "p50",
            (|p: &Percentiles| p.p50) as fn(&Percentiles) -> Duration,
        ),
        ("p99", |p: &Percentiles| p.p99),
    ] {
        let Some(latency) = ours.latency else {
            continue;
        };
        let mut row = Row::new(
            BENCHMARK,
            format!("offer→answer exchange {q} under that load"),
            Measure::ms(pick(&latency)),
            Better::Lower,
        );
        if let Ok(Some(tracker)) = tracker.as_ref().map(|t| t.latency) {
            row = row.against("WebTorrent tracker", Measure::ms(pick(&tracker)));
        }
        rows.push(row);
    }
    if let Some(cpu) = ours.cpu_per_exchange {
        let mut row = Row::new(
            BENCHMARK,
            "server CPU per exchange",
            Measure::new(cpu.as_secs_f64() * 1e6, "µs"),
            Better::Lower,
        );
        if let Ok(Some(tracker_cpu)) = tracker.as_ref().map(|t| t.cpu_per_exchange) {
            row = row.against(
                "WebTorrent tracker",
                Measure::new(tracker_cpu.as_secs_f64() * 1e6, "µs"),
            );
        }
        if let Some(echo_cpu) = echo.cpu_per_exchange {
            row = row.note(format!(
                "echo ceiling: {:.0} µs",
                echo_cpu.as_secs_f64() * 1e6
            ));
        }
        rows.push(row);
    }
    let lost: Vec<String> = [
        ("ours", Some(&ours)),
        ("tracker", tracker.as_ref().ok()),
        ("echo", Some(&echo)),
    ]
    .into_iter()
    .filter_map(|(name, o)| {
        o.filter(|o| o.lost > 0)
            .map(|o| format!("{name}: {}", o.lost))
    })
    .collect();
    if !lost.is_empty()
        && let Some(row) = rows.first_mut()
    {
        let lost = format!("exchanges lost (no answer in 5 s): {}", lost.join(", "));
        row.note = Some(match row.note.take() {
            Some(note) => format!("{note}; {lost}"),
            None => lost,
        });
    }

    let content_rate = Measure::new(content.exchanges_per_second, "round trips/s");
    let mut content_row = Row::new(
        BENCHMARK,
        format!(
            "content_request→content (10 KB) over relay, {} pages",
            load.pages
        ),
        content_rate,
        Better::Higher,
    );
    if let Some(latency) = content.latency {
        content_row = content_row.note(format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            latency.p50.as_secs_f64() * 1e3,
            latency.p99.as_secs_f64() * 1e3
        ));
    }
    rows.push(content_row);
    Ok(rows)
}
