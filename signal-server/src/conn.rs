//! The handle other tasks use to reach one connection: its peer id, its
//! address, and its send queue, bounded in bytes, with the writer task that
//! drains the queue into the socket. A reader that stops reading fills its
//! queue and is closed instead of growing server memory; past half full it
//! already counts as busy and is given no visitors; a write that stalls
//! past the write timeout closes it too.
//!
//! The queue holds no memory while it is empty: most connections are idle
//! most of the time, and a channel's preallocated block would cost each of
//! them a kilobyte (docs: README, memory per connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ephemeral_shared::protocol::{PeerId, Reason};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{Notify, oneshot};
use tokio::time::timeout;

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
    /// Wakes the writer when the queue gets a message.
    queued: Notify,
    /// Set once the writer has stopped: nothing more is queued.
    closed: AtomicBool,
    /// Bytes queued and not yet written: the queue's real bound, since a
    /// count of messages says nothing when one message may be 2 MiB.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    /// Set once the connection must close because it does not keep up.
    stalled: AtomicBool,
    /// Wakes the connection's task to close it.
    pub kill: Notify,
}

impl Conn {
    pub fn new(peer: PeerId, address: Arc<Address>, max_queued_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            peer,
            address,
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            closed: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            stalled: AtomicBool::new(false),
            kill: Notify::new(),
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
        self.queued.notify_one();
        true
    }

    /// The oldest message queued; an emptied queue gives its memory back.
    fn pop(&self) -> Option<Utf8Bytes> {
        let mut queue = lock(&self.queue);
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        next
    }

    /// Waits for the next message. Cancel-safe: a message is taken only
    /// when this returns it.
    async fn next(&self) -> Utf8Bytes {
        loop {
            if let Some(text) = self.pop() {
                return text;
            }
            // A message queued since `pop` left a permit: no wake is lost.
            self.queued.notified().await;
        }
    }

    /// The writer stopped: drop what is queued and refuse more.
    fn close_queue(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *lock(&self.queue));
        let bytes: usize = dropped.iter().map(|text| text.len()).sum();
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The writer wrote `len` bytes of the queue.
    pub fn written(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Marks the connection as not keeping up and wakes it to close.
    pub fn stall(&self, metrics: &Metrics) {
        if !self.stalled.swap(true, Ordering::AcqRel) {
            metrics.reject(Reason::SlowConsumer);
        }
        self.kill.notify_one();
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Too far behind to be given more work: half its queue is waiting.
    pub fn congested(&self) -> bool {
        self.is_stalled() || self.queued_bytes.load(Ordering::Acquire) > self.max_queued_bytes / 2
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

/// Closes the queue when the writer ends, however it ends (returned,
/// or aborted with its task).
struct CloseOnDrop(Arc<Conn>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_queue();
    }
}

/// The connection's writer task: writes what is queued, each write bounded
/// by `write_timeout`; then the close frame, or the echo of the client's,
/// waiting at most `close_wait` for it to go out.
pub async fn write_queue(
    mut sink: SplitSink<WebSocket, Message>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
    conn: Arc<Conn>,
    write_timeout: Duration,
    close_wait: Duration,
    metrics: Arc<Metrics>,
) {
    let _closing = CloseOnDrop(conn.clone());
    loop {
        tokio::select! {
            biased;
            closing = &mut close => {
                let closing = async {
                    match closing {
                        Ok(Some(frame)) => sink.send(Message::Close(Some(frame))).await,
                        // The library queued the echo when it read the
                        // client's close; closing the sink flushes it.
                        _ => sink.close().await,
                    }
                };
                // Boxed, as the send below: inline, their timers would
                // size the task every idle socket keeps.
                let _ = Box::pin(timeout(close_wait, closing)).await;
                return;
            }
            text = conn.next() => {
                let len = text.len();
                match Box::pin(timeout(write_timeout, sink.send(Message::Text(text)))).await {
                    Ok(Ok(())) => conn.written(len),
                    Ok(Err(_)) => return,
                    Err(_) => {
                        conn.stall(&metrics);
                        return;
                    }
                }
            }
        }
    }
}
