//! The rows: the normal clients' latency with and without the flood, and
//! what the flood got: sockets accepted, attempts refused, sockets closed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::flooder::{FLOODER_NOT_NICED, FloodSummary};
use super::normal::{Phase, VisitorTally};
use super::{EXCHANGE_TIMEOUT, FLOOD_SOCKETS, FLOOD_SOURCE, PAGES};
use crate::report::{Better, Percentiles, Row, Value as Measure};

const BENCHMARK: &str = "7. Flood from one address";

/// Everything the rows are made of.
pub(super) struct Results {
    pub(super) quiet_latency: Percentiles,
    pub(super) flood_latency: Percentiles,
    pub(super) quiet: Phase,
    pub(super) flooded: Phase,
    pub(super) recovered: Phase,
    pub(super) quiet_cpu: Option<f64>,
    pub(super) flood_cpu: Option<f64>,
    pub(super) flood: FloodSummary,
    pub(super) tallies: Vec<VisitorTally>,
    pub(super) hosts_closed: Vec<String>,
}

pub(super) fn rows(results: &Results) -> Vec<Row> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdowns_list_the_largest_first() {
        let counts = BTreeMap::from([("HTTP 429".to_string(), 3), ("TCP: x".to_string(), 9)]);
        assert_eq!(breakdown_or_none(&counts), "TCP: x: 9, HTTP 429: 3");
        assert_eq!(breakdown_or_none(&BTreeMap::new()), "none");
    }
}
