//! Counters the server keeps about itself, rendered at `GET /metrics` in
//! the Prometheus text format. Plain atomics: every update is one
//! instruction on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

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
    /// The link to the other nodes, with `--redis`.
    pub cluster: ClusterMetrics,
}

/// A cluster node's link through Redis; rendered only on a cluster node.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub enabled: AtomicBool,
    /// 1 while the node reaches Redis, 0 while it serves alone.
    pub redis_up: AtomicI64,
    /// Live nodes this node sees, itself included.
    pub nodes_alive: AtomicI64,
    pub messages_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Messages published that no node was subscribed to receive.
    pub undelivered: AtomicU64,
    /// Messages not sent: the link was down or its queue full.
    pub dropped: AtomicU64,
    /// Received messages refused as malformed or invalid.
    pub invalid: AtomicU64,
    /// Failed Redis connections and commands.
    pub errors: AtomicU64,
    /// Times the link came back after being lost.
    pub reconnects: AtomicU64,
    /// Snapshots sent to re-home pages or repair a node's view.
    pub snapshots: AtomicU64,
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
            cluster: ClusterMetrics::default(),
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
        if self.cluster.enabled.load(Ordering::Relaxed) {
            self.cluster.render(&mut out);
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

impl ClusterMetrics {
    fn render(&self, out: &mut String) {
        let gauges = [
            (
                "ephemeral_cluster_redis_up",
                "1 while this node reaches Redis; 0 while it serves alone (degraded).",
                &self.redis_up,
            ),
            (
                "ephemeral_cluster_nodes_alive",
                "Live nodes this node sees, itself included.",
                &self.nodes_alive,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let counters = [
            (
                "ephemeral_cluster_messages_out_total",
                "Messages published to other nodes through Redis.",
                &self.messages_out,
            ),
            (
                "ephemeral_cluster_messages_in_total",
                "Messages received from other nodes through Redis.",
                &self.messages_in,
            ),
            (
                "ephemeral_cluster_bytes_out_total",
                "Bytes of messages published to other nodes.",
                &self.bytes_out,
            ),
            (
                "ephemeral_cluster_bytes_in_total",
                "Bytes of messages received from other nodes.",
                &self.bytes_in,
            ),
            (
                "ephemeral_cluster_undelivered_total",
                "Messages published while their node was not subscribed.",
                &self.undelivered,
            ),
            (
                "ephemeral_cluster_dropped_total",
                "Messages not sent: the link was down or its queue full.",
                &self.dropped,
            ),
            (
                "ephemeral_cluster_invalid_total",
                "Received messages refused as malformed or invalid.",
                &self.invalid,
            ),
            (
                "ephemeral_cluster_errors_total",
                "Failed Redis connections and commands.",
                &self.errors,
            ),
            (
                "ephemeral_cluster_reconnects_total",
                "Times the link to Redis came back after being lost.",
                &self.reconnects,
            ),
            (
                "ephemeral_cluster_snapshots_total",
                "Membership snapshots sent to other nodes.",
                &self.snapshots,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
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
        assert!(
            !text.contains("ephemeral_cluster_"),
            "no cluster, no cluster metrics"
        );
        metrics.cluster.enabled.store(true, Ordering::Relaxed);
        metrics.cluster.nodes_alive.store(3, Ordering::Relaxed);
        assert!(
            metrics
                .render()
                .contains("ephemeral_cluster_nodes_alive 3\n")
        );
    }
}
