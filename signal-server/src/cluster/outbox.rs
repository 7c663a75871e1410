//! The queue of messages for other nodes: encoded when queued, in the order
//! queued, bounded in bytes. One task (the Redis link) drains it, so what
//! one node says to another arrives in the order it was said.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::ring::NodeId;
use super::wire::{Envelope, Message};
use crate::metrics::Metrics;

/// An encoded message and the node it is for.
#[derive(Debug)]
pub struct Outgoing {
    pub to: NodeId,
    pub text: String,
}

#[derive(Debug)]
struct Inner {
    from: NodeId,
    tx: mpsc::UnboundedSender<Outgoing>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    /// Whether the link is up; while it is down nothing can be sent, and
    /// what would have been is rebuilt by snapshots once it is back.
    open: AtomicBool,
    /// Set when a message was dropped for the bound: the nodes must then
    /// be resynchronised.
    overflowed: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A handle on the queue; clones share it.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl Outbox {
    pub fn new(
        from: NodeId,
        max_queued_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            from,
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            open: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            metrics,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Queues `message` for `to`. Dropped, and counted, when the link is
    /// down or the queue is over its bound: Redis is not keeping up, and
    /// the link resynchronises the nodes once it is (see docs/cluster.md).
    pub fn send(&self, to: NodeId, message: Message) {
        let inner = &self.inner;
        let cluster = &inner.metrics.cluster;
        if !inner.open.load(Ordering::Acquire) {
            cluster.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let text = Envelope {
            from: inner.from,
            msg: message,
        }
        .encode();
        let len = text.len();
        let queued = inner.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > inner.max_queued_bytes {
            inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            cluster.dropped.fetch_add(1, Ordering::Relaxed);
            inner.overflowed.store(true, Ordering::Release);
            return;
        }
        if inner.tx.send(Outgoing { to, text }).is_err() {
            inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            cluster.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The link took `len` bytes off the queue.
    pub fn taken(&self, len: usize) {
        self.inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Whether a message was dropped for the bound since last asked.
    pub fn take_overflowed(&self) -> bool {
        self.inner.overflowed.swap(false, Ordering::AcqRel)
    }

    pub fn set_open(&self, open: bool) {
        self.inner.open.store(open, Ordering::Release);
    }
}
