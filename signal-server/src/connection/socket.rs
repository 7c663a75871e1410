//! One connection's websocket, driven from the connection's own task: it
//! writes what others queued for the connection as fast as the socket takes
//! it while it goes on reading, and says what woke it.
//!
//! Why not a reader task and a writer task over a split socket: the second
//! task, its channel and the split's lock cost every idle connection more
//! than half a kilobyte, and an idle connection is what the server holds
//! most of. Nothing here ever waits on the socket: a client that stops
//! reading blocks only its own writes, which the write timeout bounds.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use crate::conn::Conn;
use crate::lean_io::LeanIo;

/// The websocket over the accepted TCP stream itself: no boxed stream and
/// no wrapper in between (see `upgrade`).
pub type WebSocket = WebSocketStream<LeanIo<TcpStream>>;

/// What woke the connection.
#[derive(Debug)]
pub enum Wake {
    /// The client sent a message.
    Message(Message),
    /// The client's side ended: the stream closed (`None`) or broke.
    ReadEnded(Option<tungstenite::Error>),
    /// Writing to the socket failed.
    WriteFailed,
    /// A write has waited longer than the write timeout for the client
    /// to read.
    WriteTimedOut,
    /// Others found the connection too slow for what they queued.
    Stalled,
    /// No message arrived before the idle deadline.
    Idle,
}

pub struct Socket {
    ws: WebSocket,
    /// Messages handed to the websocket and not yet flushed.
    unflushed: bool,
    /// Since when the socket has not taken what is being written.
    blocked_since: Option<Instant>,
}

impl Socket {
    pub fn new(ws: WebSocket) -> Self {
        Self {
            ws,
            unflushed: false,
            blocked_since: None,
        }
    }

    /// Writes what `conn` has queued while the socket takes it, then
    /// reads; wakes for a message, an ending, or `timer` at the idle
    /// deadline `idle_at` (or earlier, when a write is past
    /// `write_timeout`). Cancel-safe: whatever it takes off the queue is
    /// already in the websocket.
    pub fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        conn: &Conn,
        mut timer: Pin<&mut Sleep>,
        idle_at: Instant,
        write_timeout: Duration,
    ) -> Poll<Wake> {
        conn.register(cx.waker());
        if conn.is_stalled() {
            return Poll::Ready(Wake::Stalled);
        }
        if let Err(()) = self.poll_write(cx, conn) {
            return Poll::Ready(Wake::WriteFailed);
        }
        let write_due = self.blocked_since.map(|since| since + write_timeout);
        if write_due.is_some_and(|due| due <= Instant::now()) {
            return Poll::Ready(Wake::WriteTimedOut);
        }
        match Pin::new(&mut self.ws).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => return Poll::Ready(Wake::Message(message)),
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Wake::ReadEnded(Some(error))),
            Poll::Ready(None) => return Poll::Ready(Wake::ReadEnded(None)),
            Poll::Pending => {}
        }
        let due = write_due.map_or(idle_at, |write| write.min(idle_at));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if write_due.is_some_and(|write| write <= Instant::now()) {
            Poll::Ready(Wake::WriteTimedOut)
        } else {
            Poll::Ready(Wake::Idle)
        }
    }

    /// Hands queued messages to the websocket while it is ready for them,
    /// then flushes. `Err` when the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>, conn: &Conn) -> Result<(), ()> {
        loop {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(())) => self.blocked_since = None,
            }
            let Some(text) = conn.pop() else { break };
            Pin::new(&mut self.ws)
                .start_send(Message::Text(text))
                .map_err(drop)?;
            self.unflushed = true;
        }
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                }
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.blocked_since = None;
                }
            }
        }
        Ok(())
    }

    /// Echoes the client's close (the library queued the echo when it read
    /// it), waiting at most `wait` for it to go out.
    pub async fn echo_close(mut self, wait: Duration) {
        let _ = timeout(wait, SinkExt::close(&mut self.ws)).await;
    }

    /// Closes with `frame`, then reads until the client answers it:
    /// dropping a socket with unread input makes the kernel send a reset,
    /// and the client would lose the close frame and its code. Each step
    /// waits at most `wait`.
    pub async fn close(mut self, frame: CloseFrame, wait: Duration) {
        if let Ok(Ok(())) = timeout(wait, self.ws.send(Message::Close(Some(frame)))).await {
            let _ = timeout(wait, async {
                while let Some(Ok(message)) = self.ws.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            })
            .await;
            let _ = timeout(wait, SinkExt::close(&mut self.ws)).await;
        }
    }
}
