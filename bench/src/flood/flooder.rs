//! The flooder: [`FLOOD_SOCKETS`] sockets from [`FLOOD_SOURCE`] on a runtime
//! of their own at nice 19, each connecting, flooding until the server
//! closes it, and connecting again; what they did, counted, and how they
//! were refused or closed, as short labels.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ephemeral_phoenix_client::{Error as ClientError, Options, Websocket, websocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::mix::FloodMessages;
use super::{FLOOD_SOCKETS, FLOOD_SOURCE};

/// How long a flood socket waits before connecting again after a refusal
/// or a close. Without a pause the refused sockets spin on connect, and
/// the TCP handshakes alone would take the cores from everything else.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// A handshake that takes longer counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds each flood socket's loop in count as well as in time.
const MAX_ATTEMPTS_PER_SOCKET: u32 = 2_000;
const MAX_MESSAGES_PER_CONNECTION: u64 = 1_000_000;
/// The flooder's threads' nice value: the lowest priority there is.
const FLOODER_NICE: libc::c_int = 19;
/// Set when a flooder thread could not lower its priority, so the
/// results can say the flood ran at normal priority.
pub(super) static FLOODER_NOT_NICED: AtomicBool = AtomicBool::new(false);

/// A runtime for the flooder alone, its threads at nice 19.
pub(super) fn flooder_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flooder")
        .enable_all()
        .on_thread_start(lower_this_threads_priority)
        .build()
        .context("cannot start the flooder's runtime")
}

/// Linux keeps a nice value per thread, so this lowers the calling
/// thread's priority only, not the benchmark's.
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority only read and set this thread's
    // scheduling attributes.
    let set = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, FLOODER_NICE)
    };
    if set != 0 {
        FLOODER_NOT_NICED.store(true, Ordering::Relaxed);
    }
}

/// Shared by every flood socket; events that are counted by kind (refusals
/// and closes) are rare next to messages, so a mutex is cheap there.
#[derive(Debug, Default)]
struct FloodCounts {
    attempts: AtomicU64,
    accepted: AtomicU64,
    messages: AtomicU64,
    open: AtomicI64,
    peak_open: AtomicI64,
    refused: Mutex<BTreeMap<String, u64>>,
    closed: Mutex<BTreeMap<String, u64>>,
}

impl FloodCounts {
    fn count(map: &Mutex<BTreeMap<String, u64>>, what: String) {
        let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *map.entry(what).or_default() += 1;
    }

    fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
    }
}

/// What the flood did, over its whole run.
#[derive(Debug)]
pub(super) struct FloodSummary {
    pub(super) seconds: f64,
    pub(super) attempts: u64,
    pub(super) accepted: u64,
    pub(super) messages: u64,
    pub(super) peak_open: i64,
    /// Refused connection attempts, by how (`HTTP 429`, `TCP: …`).
    pub(super) refused: BTreeMap<String, u64>,
    /// Accepted sockets the server closed, by close code and reason.
    pub(super) closed: BTreeMap<String, u64>,
}

/// [`FLOOD_SOCKETS`] sockets from [`FLOOD_SOURCE`], flooding until
/// `until`.
pub(super) async fn flood(url: String, until: Instant) -> FloodSummary {
    let started = Instant::now();
    let counts = Arc::new(FloodCounts::default());
    let sockets: Vec<_> = (0..FLOOD_SOCKETS)
        .map(|index| tokio::spawn(flood_socket(url.clone(), index, until, counts.clone())))
        .collect();
    for socket in sockets {
        // A flood socket has no failure of its own to report: everything
        // that goes wrong for it is counted.
        let _ = socket.await;
    }
    let take = |map: &Mutex<BTreeMap<String, u64>>| {
        std::mem::take(&mut *map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    };
    FloodSummary {
        seconds: started.elapsed().as_secs_f64(),
        attempts: counts.attempts.load(Ordering::Relaxed),
        accepted: counts.accepted.load(Ordering::Relaxed),
        messages: counts.messages.load(Ordering::Relaxed),
        peak_open: counts.peak_open.load(Ordering::Relaxed),
        refused: take(&counts.refused),
        closed: take(&counts.closed),
    }
}

/// One flood socket: connect, flood until closed, connect again.
async fn flood_socket(url: String, index: usize, until: Instant, counts: Arc<FloodCounts>) {
    let messages = FloodMessages::new(index);
    for _ in 0..MAX_ATTEMPTS_PER_SOCKET {
        if Instant::now() >= until {
            break;
        }
        counts.attempts.fetch_add(1, Ordering::Relaxed);
        let give_up = (Instant::now() + CONNECT_TIMEOUT).min(until);
        let connected = tokio::time::timeout_at(
            give_up,
            websocket(&url, Options::default().source(FLOOD_SOURCE)),
        )
        .await;
        match connected {
            Err(_) if Instant::now() >= until => break,
            Err(_) => FloodCounts::count(&counts.refused, "handshake timed out".into()),
            Ok(Err(error)) => FloodCounts::count(&counts.refused, refusal(&error)),
            Ok(Ok(ws)) => {
                counts.opened();
                let closed = flood_connection(ws, &messages, until, &counts).await;
                counts.open.fetch_sub(1, Ordering::Relaxed);
                match closed {
                    Some(how) => FloodCounts::count(&counts.closed, how),
                    // The flood is over; this side dropped the socket.
                    None => break,
                }
            }
        }
        tokio::time::sleep_until((Instant::now() + RECONNECT_PAUSE).min(until)).await;
    }
}

/// Floods one accepted socket until the server closes it (how, as a
/// label) or `until` (`None`).
async fn flood_connection(
    ws: Websocket,
    messages: &FloodMessages,
    until: Instant,
    counts: &FloodCounts,
) -> Option<String> {
    let (mut sink, mut stream) = ws.split();
    let read = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Close(frame)) => return close_label(frame),
                Ok(_) => {}
                Err(error) => return format!("read error: {}", error_kind(&error)),
            }
        }
        "ended without a close frame".to_string()
    };
    let write = async {
        for n in 0..MAX_MESSAGES_PER_CONNECTION {
            if sink.send(messages.nth(n)).await.is_err() {
                break;
            }
            counts.messages.fetch_add(1, Ordering::Relaxed);
        }
        // Past the cap, or the server stopped taking messages: what
        // happens next is the server's close, which `read` sees.
        std::future::pending::<()>().await;
    };
    // The deadline goes first: the write loop spends the task's whole
    // cooperative budget on every poll, and a timer polled after it would
    // find the budget gone and never fire.
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(until) => None,
        closed = read => Some(closed),
        () = write => None,
    }
}

/// How a connection attempt was refused: the HTTP status of a refused
/// upgrade, or the kind of a TCP or handshake error.
fn refusal(error: &ClientError) -> String {
    match error {
        ClientError::Handshake {
            source: tungstenite::Error::Http(response),
            ..
        } => format!("HTTP {}", response.status().as_u16()),
        ClientError::Handshake { source, .. } => format!("handshake: {}", error_kind(source)),
        ClientError::Tcp { source, .. } => format!("TCP: {}", source.kind()),
        ClientError::ConnectTimeout { .. } => "handshake timed out".into(),
        _ => "unknown".into(),
    }
}

/// A short, bounded label for a websocket error (not its full text, which
/// can carry per-connection details).
fn error_kind(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".into()
        }
        tungstenite::Error::Io(io) => format!("I/O {}", io.kind()),
        // The server dropped the TCP connection before answering the
        // upgrade, as it does past its per-address connection cap.
        tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            "dropped before the HTTP reply".into()
        }
        tungstenite::Error::Protocol(protocol) => format!("protocol: {protocol}"),
        tungstenite::Error::Capacity(_) => "capacity".into(),
        tungstenite::Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        _ => "other".into(),
    }
}

/// `1008 rate limit exceeded`: the close code and the server's reason.
fn close_label(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(frame) => {
            let reason: String = frame.reason.as_str().chars().take(60).collect();
            format!("{} {reason}", u16::from(frame.code))
        }
        None => "close frame without a code".to_string(),
    }
}
