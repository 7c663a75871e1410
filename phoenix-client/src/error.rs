use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ephemeral_shared::FrameError;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::Reply;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url} is not a websocket URL this client can open: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot resolve the host of {url}: {source}")]
    Resolve { url: String, source: std::io::Error },
    #[error("TCP to {addr}: cannot {action}: {source}")]
    Tcp {
        addr: SocketAddr,
        action: &'static str,
        source: std::io::Error,
    },
    /// The server refused the upgrade (`source` is `Http` with its
    /// response) or the handshake failed on the way.
    #[error("websocket handshake with {url} failed: {source}")]
    Handshake {
        url: String,
        source: tungstenite::Error,
    },
    #[error("connecting to {to} took over {timeout:?}")]
    ConnectTimeout { to: String, timeout: Duration },
    #[error("websocket write failed: {0}")]
    Send(tungstenite::Error),
    #[error("websocket read failed: {0}")]
    Receive(tungstenite::Error),
    #[error("the server ended the connection: {0}")]
    Ended(Ended),
    #[error("the server sent an invalid frame ({error}): {text}")]
    BadFrame { text: String, error: FrameError },
    #[error("the server's {what} is malformed: {frame}")]
    BadReply { what: &'static str, frame: String },
    /// `unread` names the frames that came meanwhile and are still kept.
    #[error("no {waited_for} within {wait:?}; unread: {unread:?}")]
    Timeout {
        waited_for: String,
        wait: Duration,
        unread: Vec<String>,
    },
    #[error("{event} on {topic} refused: {reply}")]
    Refused {
        topic: String,
        event: String,
        reply: Reply,
    },
}

/// How the server ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// With a close frame, and its code and reason if it had them.
    Closed(Option<(u16, String)>),
    /// Without a close frame: the TCP connection went away.
    Dropped,
}

impl Ended {
    pub(crate) fn closed(frame: Option<CloseFrame>) -> Self {
        Ended::Closed(frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())))
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed(Some((code, reason))) => write!(f, "closed with {code} {reason}"),
            Ended::Closed(None) => f.write_str("closed without a code"),
            Ended::Dropped => f.write_str("dropped without a close frame"),
        }
    }
}
