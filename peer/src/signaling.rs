//! The websocket to the signaling server, as Phoenix V2 frames: connect,
//! send frames without waiting, receive parsed frames. One writer task and
//! one reader task per socket, so the peer's own loop never blocks on the
//! network and reading stays cancel-safe.
//!
//! This is deliberately thin — no refs, joins or reconnects; those belong
//! to [`crate::peer`]. Tests use it directly to write misbehaving peers.

use std::time::Duration;

use ephemeral_shared::Frame;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, error::UrlError, http::StatusCode};

/// Incoming frames buffered between the reader task and the peer's loop.
const INCOMING_BUFFER: usize = 256;

/// Why the server could not be reached, in words for whoever runs the
/// peer. Each message says its cause itself, so none has a `source` that
/// an error chain would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{}", io_words(.0))]
    Io(std::io::Error),
    #[error("it answered HTTP {0} instead of opening a websocket; is it an Ephemeral server?")]
    NotWebsocket(StatusCode),
    #[error("this build has no TLS, so it cannot open wss:// (https) connections")]
    NoTls,
    #[error("the websocket handshake failed ({0}); is it an Ephemeral server?")]
    Websocket(tungstenite::Error),
}

impl From<tungstenite::Error> for ConnectError {
    fn from(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Io(error) => Self::Io(error),
            tungstenite::Error::Http(response) => Self::NotWebsocket(response.status()),
            tungstenite::Error::Url(UrlError::TlsFeatureNotEnabled) => Self::NoTls,
            other => Self::Websocket(other),
        }
    }
}

/// The common socket failures in plain words; the OS's own text (with its
/// `(os error 111)`) for the rest.
fn io_words(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            "the connection was cut".to_string()
        }
        ErrorKind::TimedOut => "the connection timed out".to_string(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "no route to the host".to_string()
        }
        _ => error.to_string(),
    }
}

/// The sending half: frames are queued and written in order by a task.
#[derive(Debug, Clone)]
pub struct FrameSender {
    out: mpsc::UnboundedSender<Message>,
}

impl FrameSender {
    /// Queues a frame; `false` once the socket is gone.
    pub fn send(&self, frame: &Frame) -> bool {
        self.out.send(Message::text(frame.encode())).is_ok()
    }

    /// Closes the socket after the frames already queued.
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }
}

/// The receiving half: parsed frames until the socket closes.
#[derive(Debug)]
pub struct FrameReceiver {
    incoming: mpsc::Receiver<Frame>,
}

impl FrameReceiver {
    /// The next frame, or `None` once the socket has closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.incoming.recv().await
    }
}

/// Opens a websocket to `url` (`ws://host:port/ws/websocket?vsn=2.0.0`).
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<(FrameSender, FrameReceiver), ConnectError> {
    let (stream, _response) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    let (mut sink, mut source) = stream.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (in_tx, incoming) = mpsc::channel(INCOMING_BUFFER);

    tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if let Err(error) = sink.send(message).await {
                tracing::debug!(%error, "websocket write failed");
                break;
            }
            if closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    tokio::spawn(async move {
        while let Some(message) = source.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%error, "websocket read failed");
                    break;
                }
            };
            match Frame::parse(&text) {
                Ok(frame) => {
                    if in_tx.send(frame).await.is_err() {
                        break;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a malformed frame from the server"),
            }
        }
    });

    Ok((FrameSender { out }, FrameReceiver { incoming }))
}
