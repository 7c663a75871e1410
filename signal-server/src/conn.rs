//! The handle other tasks use to reach one connection: its peer id, its
//! address, and its send queue, bounded in bytes, with the writer task that
//! drains the queue into the socket. A reader that stops reading fills its
//! queue and is closed instead of growing server memory; past half full it
//! already counts as busy and is given no visitors; a write that stalls
//! past the write timeout closes it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ephemeral_shared::protocol::{PeerId, Reason};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::timeout;

use crate::addresses::Address;
use crate::metrics::Metrics;

/// What a connection's writer sends.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
}

#[derive(Debug)]
pub struct Conn {
    pub peer: PeerId,
    /// The client address it counts against.
    pub address: Arc<Address>,
    tx: mpsc::UnboundedSender<Outbound>,
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
    pub fn new(
        peer: PeerId,
        address: Arc<Address>,
        max_queued_bytes: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                peer,
                address,
                tx,
                queued_bytes: AtomicUsize::new(0),
                max_queued_bytes,
                stalled: AtomicBool::new(false),
                kill: Notify::new(),
            }),
            rx,
        )
    }

    /// Queues a message. Past the byte bound the peer is not reading: it is
    /// closed rather than buffered without bound, and the message dropped.
    pub fn deliver(&self, text: Utf8Bytes, metrics: &Metrics) -> bool {
        let len = text.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.stall(metrics);
            return false;
        }
        if self.tx.send(Outbound::Text(text)).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
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

/// The connection's writer task: writes what is queued, each write bounded
/// by `write_timeout`; then the close frame, or the echo of the client's,
/// waiting at most `close_wait` for it to go out.
pub async fn write_queue(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
    conn: Arc<Conn>,
    write_timeout: Duration,
    close_wait: Duration,
    metrics: Arc<Metrics>,
) {
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
                let _ = timeout(close_wait, closing).await;
                return;
            }
            next = queue.recv() => {
                let Some(Outbound::Text(text)) = next else { return };
                let len = text.len();
                match timeout(write_timeout, sink.send(Message::Text(text))).await {
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
