//! What is measured, and over what: the window after the warm-up, each
//! visitor's tally of the exchanges that ended in it, a system's outcome
//! over the window (and the median of its rounds), and the server's CPU
//! time over it.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Load;
use crate::children::ChildServer;
use crate::report::Percentiles;

/// After the window closes, peers keep answering for this long, so that
/// nobody waits on a peer that already stopped.
const DRAIN: Duration = Duration::from_secs(1);

/// When the measured window opens and closes; visitors stop at `end`,
/// everyone at `end + DRAIN`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    start: Instant,
    pub(super) end: Instant,
}

impl Window {
    pub(super) fn after(load: &Load) -> Self {
        let start = Instant::now() + load.warm_up;
        Self {
            start,
            end: start + load.measure,
        }
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    pub(super) fn stop(&self) -> Instant {
        self.end + DRAIN
    }
}

/// What one visitor saw in the window.
#[derive(Debug, Default)]
pub(super) struct Tally {
    latencies: Vec<Duration>,
    lost: u64,
}

/// What one system did over the window.
pub(super) struct Outcome {
    pub(super) exchanges_per_second: f64,
    pub(super) latency: Option<Percentiles>,
    pub(super) lost: u64,
    /// Server CPU per exchange.
    pub(super) cpu_per_exchange: Option<Duration>,
}

impl Outcome {
    pub(super) fn from(tallies: Vec<Tally>, measure: Duration, cpu: Option<Duration>) -> Self {
        let lost = tallies.iter().map(|t| t.lost).sum();
        let latencies: Vec<Duration> = tallies.into_iter().flat_map(|t| t.latencies).collect();
        let count = latencies.len();
        Self {
            exchanges_per_second: count as f64 / measure.as_secs_f64(),
            latency: Percentiles::of(&latencies),
            lost,
            cpu_per_exchange: cpu
                .filter(|_| count > 0)
                .map(|cpu| cpu / u32::try_from(count).unwrap_or(u32::MAX)),
        }
    }
}

impl Tally {
    pub(super) fn record(&mut self, answered: bool, sent: Instant, window: Window) {
        let done = Instant::now();
        if !window.contains(done) {
            return;
        }
        if answered {
            self.latencies.push(done - sent);
        } else {
            self.lost += 1;
        }
    }
}

/// The round with the median rate (the upper one of an even count).
pub(super) fn median_round(mut rounds: Vec<Outcome>) -> Option<Outcome> {
    rounds.sort_by(|a, b| a.exchanges_per_second.total_cmp(&b.exchanges_per_second));
    let middle = rounds.len() / 2;
    rounds.into_iter().nth(middle)
}

/// Server CPU used while `window` was open: read at its edges.
pub(super) async fn cpu_over(server: &ChildServer, window: Window) -> Option<Duration> {
    tokio::time::sleep_until(window.start).await;
    let before = server.cpu_time().ok()?;
    tokio::time::sleep_until(window.end).await;
    let after = server.cpu_time().ok()?;
    Some(after.saturating_sub(before))
}

pub(super) async fn collect(tasks: Vec<JoinHandle<Result<Tally>>>) -> Result<Vec<Tally>> {
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.context("a load task panicked")??);
    }
    Ok(tallies)
}

pub(super) async fn finish(tasks: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await.context("a load task panicked")??;
    }
    Ok(())
}
