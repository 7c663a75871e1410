//! The rows: the server's RSS growth at its peak against the bound, its
//! RSS readings, and how many stalled readers it closed, when and why
//! (from its counters).

use std::collections::HashMap;

use super::attack::{AFTER_LIMIT, Outcome};
use super::bound::Bound;
use super::{
    BURST_SECONDS, BYTES_PER_SECOND_PER_ADDRESS, MIB, OUTBOUND_QUEUE_BYTES, Plan, WRITE_TIMEOUT,
};
use crate::children::Scrape;
use crate::report::{Better, Percentiles, Row, Value as Measure};

const BENCHMARK: &str = "8. Stalled readers";

/// Everything the rows are made of.
pub(super) struct Results {
    pub(super) plan: Plan,
    pub(super) signal_bytes: usize,
    pub(super) probe_refusals: Vec<String>,
    pub(super) baseline_kib: u64,
    pub(super) peak_kib: u64,
    pub(super) after_kib: u64,
    pub(super) before: Scrape,
    pub(super) after: Scrape,
    pub(super) outcome: Outcome,
}

pub(super) fn rows(results: &Results) -> Vec<Row> {
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
