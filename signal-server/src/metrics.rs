//! Counters the server keeps about itself, rendered at `GET /metrics` in
//! the Prometheus text format. Plain atomics: every update is one
//! instruction on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ephemeral_shared::path::Path;
pub use ephemeral_shared::protocol::Reason;

#[derive(Debug)]
pub struct Metrics {
    pub connections: AtomicI64,
    /// Topic memberships across all sockets.
    pub topics: AtomicI64,
    /// Pages with at least one host or visitor.
    pub pages: AtomicI64,
    /// TURN allocations open.
    pub turn_allocations: AtomicI64,
    /// Bytes TURN relayed, both directions.
    pub turn_relayed_bytes: AtomicU64,
    pub requests_routed: AtomicU64,
    pub requests_no_host: AtomicU64,
    /// Requests that waited for a host's free upload slot.
    pub requests_queued: AtomicU64,
    pub signals_relayed: AtomicU64,
    /// Page bytes sent to visitors over the websocket relay.
    pub relayed_bytes: AtomicU64,
    pub count_broadcasts: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    /// Pages fetched, by the path they took (what visitors report when
    /// they start hosting).
    fetches: [AtomicU64; Path::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicI64::new(0),
            topics: AtomicI64::new(0),
            pages: AtomicI64::new(0),
            turn_allocations: AtomicI64::new(0),
            turn_relayed_bytes: AtomicU64::new(0),
            requests_routed: AtomicU64::new(0),
            requests_no_host: AtomicU64::new(0),
            requests_queued: AtomicU64::new(0),
            signals_relayed: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            count_broadcasts: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            fetches: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    pub fn reject(&self, why: Reason) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fetched(&self, path: Path) {
        self.fetches[path as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fetches(&self, path: Path) -> u64 {
        self.fetches[path as usize].load(Ordering::Relaxed)
    }

    pub fn rejected(&self, why: Reason) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauges = [
            (
                "ephemeral_connections",
                "Open websocket connections.",
                &self.connections,
            ),
            (
                "ephemeral_topics",
                "Topic memberships across all sockets.",
                &self.topics,
            ),
            (
                "ephemeral_pages",
                "Pages with at least one host or waiting visitor.",
                &self.pages,
            ),
            (
                "ephemeral_turn_allocations",
                "TURN allocations open.",
                &self.turn_allocations,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let counters = [
            (
                "ephemeral_requests_routed_total",
                "content_request messages routed to a host.",
                &self.requests_routed,
            ),
            (
                "ephemeral_requests_no_host_total",
                "content_request messages answered no_hosts.",
                &self.requests_no_host,
            ),
            (
                "ephemeral_requests_queued_total",
                "content_request messages that waited for a free upload slot.",
                &self.requests_queued,
            ),
            (
                "ephemeral_signals_relayed_total",
                "WebRTC signal messages forwarded between peers.",
                &self.signals_relayed,
            ),
            (
                "ephemeral_relayed_bytes_total",
                "Page bytes sent to visitors through the websocket relay.",
                &self.relayed_bytes,
            ),
            (
                "ephemeral_turn_relayed_bytes_total",
                "Bytes the built-in TURN server relayed, both directions.",
                &self.turn_relayed_bytes,
            ),
            (
                "ephemeral_count_broadcasts_total",
                "Coalesced visitors_count broadcasts (one per topic).",
                &self.count_broadcasts,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "ephemeral_fetches_total";
        let _ = writeln!(
            out,
            "# HELP {name} Pages fetched, by path (direct, turn, relay), as visitors report.\n# TYPE {name} counter"
        );
        for path in Path::ALL {
            let _ = writeln!(out, "{name}{{path=\"{path}\"}} {}", self.fetches(path));
        }
        let name = "ephemeral_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inputs refused, by reason.\n# TYPE {name} counter"
        );
        for why in Reason::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                why.as_str(),
                self.rejected(*why)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason_with_its_count() {
        let metrics = Metrics::default();
        metrics.reject(Reason::HashMismatch);
        metrics.reject(Reason::HashMismatch);
        metrics.connections.fetch_add(3, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("ephemeral_rejected_total{reason=\"hash_mismatch\"} 2\n"));
        assert!(text.contains("ephemeral_rejected_total{reason=\"too_many_connections\"} 0\n"));
        assert!(text.contains("ephemeral_connections 3\n"));
        for (i, why) in Reason::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "ALL is in declaration order");
        }
    }
}
