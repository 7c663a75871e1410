//! Counters the server keeps about itself, rendered at `GET /metrics` in
//! the Prometheus text format. Plain atomics: every update is one
//! instruction on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why an input was refused; the label of `ephemeral_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MalformedJson,
    WrongArity,
    MalformedFrame,
    UnknownTopic,
    NotJoined,
    AlreadyJoined,
    TooManyTopics,
    UnknownEvent,
    BadPayload,
    HashMismatch,
    PageTooLarge,
    UnknownPeer,
    RateLimited,
    OversizeMessage,
    BinaryFrame,
    SlowConsumer,
    IdleTimeout,
    OriginNotAllowed,
    TooManyConnections,
}

impl Rejection {
    const ALL: [Rejection; 19] = [
        Rejection::MalformedJson,
        Rejection::WrongArity,
        Rejection::MalformedFrame,
        Rejection::UnknownTopic,
        Rejection::NotJoined,
        Rejection::AlreadyJoined,
        Rejection::TooManyTopics,
        Rejection::UnknownEvent,
        Rejection::BadPayload,
        Rejection::HashMismatch,
        Rejection::PageTooLarge,
        Rejection::UnknownPeer,
        Rejection::RateLimited,
        Rejection::OversizeMessage,
        Rejection::BinaryFrame,
        Rejection::SlowConsumer,
        Rejection::IdleTimeout,
        Rejection::OriginNotAllowed,
        Rejection::TooManyConnections,
    ];

    /// The stable name, used as the metrics label and as the `reason` of
    /// error replies.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MalformedJson => "malformed_json",
            Rejection::WrongArity => "wrong_arity",
            Rejection::MalformedFrame => "malformed_frame",
            Rejection::UnknownTopic => "unknown_topic",
            Rejection::NotJoined => "not_joined",
            Rejection::AlreadyJoined => "already_joined",
            Rejection::TooManyTopics => "too_many_topics",
            Rejection::UnknownEvent => "unknown_event",
            Rejection::BadPayload => "bad_payload",
            Rejection::HashMismatch => "hash_mismatch",
            Rejection::PageTooLarge => "page_too_large",
            Rejection::UnknownPeer => "unknown_peer",
            Rejection::RateLimited => "rate_limited",
            Rejection::OversizeMessage => "oversize_message",
            Rejection::BinaryFrame => "binary_frame",
            Rejection::SlowConsumer => "slow_consumer",
            Rejection::IdleTimeout => "idle_timeout",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::TooManyConnections => "too_many_connections",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    /// Topic memberships across all sockets.
    pub topics: AtomicI64,
    pub requests_routed: AtomicU64,
    pub requests_no_host: AtomicU64,
    /// Requests that waited for a host's free upload slot.
    pub requests_queued: AtomicU64,
    pub signals_relayed: AtomicU64,
    /// Page bytes sent to visitors over the websocket relay.
    pub relayed_bytes: AtomicU64,
    pub count_broadcasts: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
}

impl Metrics {
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
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
                "ephemeral_count_broadcasts_total",
                "Coalesced visitors_count broadcasts (one per topic).",
                &self.count_broadcasts,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "ephemeral_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inputs refused, by reason.\n# TYPE {name} counter"
        );
        for why in Rejection::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                why.as_str(),
                self.rejected(why)
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
        metrics.reject(Rejection::HashMismatch);
        metrics.reject(Rejection::HashMismatch);
        metrics.connections.fetch_add(3, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("ephemeral_rejected_total{reason=\"hash_mismatch\"} 2\n"));
        assert!(text.contains("ephemeral_rejected_total{reason=\"too_many_connections\"} 0\n"));
        assert!(text.contains("ephemeral_connections 3\n"));
        for (i, why) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "ALL is in declaration order");
        }
    }
}
