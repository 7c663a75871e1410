//! The handle other tasks use to reach one connection: its peer id, its
//! address, and its send queue, bounded in bytes, which the connection's
//! own task drains into the socket (`connection::socket`). A reader that
//! stops reading fills its queue and is closed instead of growing server
//! memory; past half full it already counts as busy and is given no
//! visitors; a write that stalls past the write timeout closes it too.
//!
//! The queue holds no memory while it is empty: most connections are idle
//! most of the time, and a channel's preallocated block would cost each of
//! them a kilobyte (docs: README, memory per connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use ephemeral_shared::protocol::{PeerId, Reason};
use futures_util::task::AtomicWaker;
use tungstenite::Utf8Bytes;

use crate::addresses::Address;
use crate::membership::lock;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Conn {
    pub peer: PeerId,
    /// The client address it counts against.
    pub address: Arc<Address>,
    /// Messages not yet written, oldest first.
    queue: Mutex<VecDeque<Utf8Bytes>>,
    /// Wakes the connection's task when it has something to write or must
    /// close: one waker for both, as the task looks at both each time.
    task: AtomicWaker,
    /// Set once the connection stopped writing: nothing more is queued.
    closed: AtomicBool,
    /// Bytes queued and not yet written: the queue's real bound, since a
    /// count of messages says nothing when one message may be 2 MiB.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    /// Set once the connection must close because it does not keep up.
    stalled: AtomicBool,
}

impl Conn {
    pub fn new(peer: PeerId, address: Arc<Address>, max_queued_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            peer,
            address,
            queue: Mutex::new(VecDeque::new()),
            task: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            stalled: AtomicBool::new(false),
        })
    }

    /// Queues a message. Past the byte bound the peer is not reading: it is
    /// closed rather than buffered without bound, and the message dropped.
    pub fn deliver(&self, text: Utf8Bytes, metrics: &Metrics) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let len = text.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.stall(metrics);
            return false;
        }
        lock(&self.queue).push_back(text);
        self.task.wake();
        true
    }

    /// Has the connection's task woken by `waker` when a message is queued
    /// or the connection stalls. Registered before the task looks at the
    /// queue, so nothing queued after the look goes unnoticed.
    pub fn register(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// The oldest message queued, now counted as written: the socket takes
    /// it at once, and takes no more until it is flushed. An emptied queue
    /// gives its memory back.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut queue = lock(&self.queue);
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        drop(queue);
        if let Some(text) = &next {
            self.queued_bytes.fetch_sub(text.len(), Ordering::AcqRel);
        }
        next
    }

    /// The connection stopped writing: drop what is queued and refuse more.
    pub fn close_queue(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *lock(&self.queue));
        let bytes: usize = dropped.iter().map(|text| text.len()).sum();
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Marks the connection as not keeping up and wakes it to close.
    pub fn stall(&self, metrics: &Metrics) {
        if !self.stalled.swap(true, Ordering::AcqRel) {
            metrics.reject(Reason::SlowConsumer);
        }
        self.task.wake();
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Too far behind to be given more work: half its queue is waiting.
    pub fn congested(&self) -> bool {
        self.is_stalled() || self.queued_bytes.load(Ordering::Acquire) > self.max_queued_bytes / 2
    }
}
