//! What a run found: one [`Row`] per number, each with the baseline it was
//! measured against in the same run and the target from issue 5, rendered
//! as a Markdown table (for people and README) and as JSON (for tools).
//! Also the small statistics every benchmark shares.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// A measured quantity and its unit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Value {
    pub value: f64,
    pub unit: &'static str,
}

impl Value {
    pub fn ms(duration: Duration) -> Self {
        Self {
            value: duration.as_secs_f64() * 1e3,
            unit: "ms",
        }
    }

    pub fn new(value: f64, unit: &'static str) -> Self {
        Self { value, unit }
    }

    fn display(&self) -> String {
        let value = self.value;
        // Counts (sockets, cycles, gauges) read as whole numbers.
        let number = if value.abs() >= 100.0 || (value.fract() == 0.0 && value.abs() < 1e12) {
            format!("{value:.0}")
        } else if value.abs() >= 10.0 {
            format!("{value:.1}")
        } else {
            format!("{value:.2}")
        };
        format!("{number} {}", self.unit)
    }
}

/// Which way is better for a number: it decides how the ratio is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One line of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The benchmark it belongs to (`1. time to content`, …).
    pub benchmark: &'static str,
    /// What was measured, e.g. `p50, WebRTC`.
    pub metric: String,
    /// Our number; `None` when it could not be measured (see `note`).
    pub ours: Option<Value>,
    pub better: Better,
    /// The in-run baseline: its name and number.
    pub baseline: Option<(String, Value)>,
    /// How many times better ours is than the baseline (> 1 is better,
    /// whichever way `better` points).
    pub advantage: Option<f64>,
    /// The target from issue 5, in words.
    pub target: Option<String>,
    /// Whether the target is met; `None` when there is no target or no
    /// number.
    pub met: Option<bool>,
    /// Why a number is missing, or what qualifies it.
    pub note: Option<String>,
}

impl Row {
    pub fn new(
        benchmark: &'static str,
        metric: impl Into<String>,
        ours: Value,
        better: Better,
    ) -> Self {
        Self {
            benchmark,
            metric: metric.into(),
            ours: Some(ours),
            better,
            baseline: None,
            advantage: None,
            target: None,
            met: None,
            note: None,
        }
    }

    /// A number that could not be measured in this run, and why.
    pub fn not_measured(
        benchmark: &'static str,
        metric: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Self {
            benchmark,
            metric: metric.into(),
            ours: None,
            better: Better::Lower,
            baseline: None,
            advantage: None,
            target: None,
            met: None,
            note: Some(why.into()),
        }
    }

    /// Adds the baseline and computes how many times better ours is.
    pub fn against(mut self, name: impl Into<String>, baseline: Value) -> Self {
        if let Some(ours) = self.ours
            && ours.value > 0.0
            && baseline.value > 0.0
        {
            self.advantage = Some(match self.better {
                Better::Lower => baseline.value / ours.value,
                Better::Higher => ours.value / baseline.value,
            });
        }
        self.baseline = Some((name.into(), baseline));
        self
    }

    /// Adds a target and whether it is met.
    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(text.into());
        if self.ours.is_some() {
            self.met = Some(met);
        }
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Renders the rows as one Markdown table, grouped by benchmark.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| Benchmark | Metric | Ours | Baseline (same run) | Ours vs baseline | Target | Met |\n",
    );
    out.push_str("|---|---|---:|---|---:|---|:-:|\n");
    let mut previous = "";
    for row in rows {
        let benchmark = if row.benchmark == previous {
            ""
        } else {
            row.benchmark
        };
        previous = row.benchmark;
        let ours = row
            .ours
            .map_or_else(|| "not measured".to_string(), |v| v.display());
        let baseline = row
            .baseline
            .as_ref()
            .map_or_else(String::new, |(name, v)| format!("{name}: {}", v.display()));
        let advantage = row.advantage.map_or_else(String::new, |a| {
            if a >= 1.0 {
                format!("{a:.1}× better")
            } else {
                format!("{:.1}× worse", 1.0 / a)
            }
        });
        let target = row.target.clone().unwrap_or_default();
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let metric = match &row.note {
            Some(note) => format!("{} ({note})", row.metric),
            None => row.metric.clone(),
        };
        let _ = writeln!(
            out,
            "| {benchmark} | {} | {ours} | {baseline} | {advantage} | {target} | {met} |",
            escape(&metric)
        );
    }
    out
}

/// Pipes would split a table cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Latency percentiles of a sample, nearest-rank.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub samples: usize,
}

impl Percentiles {
    /// `None` for an empty sample.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the
            // sample at or below it.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            samples: sorted.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples).expect("non-empty");
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert!(Percentiles::of(&[]).is_none());
        let one = Percentiles::of(&[Duration::from_millis(7)]).expect("one");
        assert_eq!(one.p99, Duration::from_millis(7));
    }

    #[test]
    fn advantage_reads_the_right_way() {
        let lower = Row::new("t", "latency", Value::new(10.0, "ms"), Better::Lower)
            .against("seed", Value::new(100.0, "ms"));
        assert_eq!(lower.advantage, Some(10.0));
        let higher = Row::new("t", "rate", Value::new(10.0, "msg/s"), Better::Higher)
            .against("tracker", Value::new(40.0, "msg/s"));
        assert_eq!(higher.advantage, Some(0.25));
        let table = markdown(&[lower, higher]);
        assert!(table.contains("10.0× better"));
        assert!(table.contains("4.0× worse"));
    }

    #[test]
    fn counts_read_as_whole_numbers() {
        assert_eq!(Value::new(3.0, "sockets").display(), "3 sockets");
        assert_eq!(Value::new(0.0, "pages").display(), "0 pages");
        assert_eq!(Value::new(2.5, "ms").display(), "2.50 ms");
    }
}
