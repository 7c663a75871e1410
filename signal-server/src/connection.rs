//! One websocket connection: reads Phoenix frames, spends the socket's and
//! the address's limits on each before any work is done for it, answers
//! joins, leaves and heartbeats, routes requests, relays pages and signals.
//! Its one task also writes what is queued for it ([`socket`]), without
//! ever waiting on the socket, so a client that stops reading never blocks
//! the reader, the idle timer or a close. Closes follow RFC 6455: a code
//! and a reason a client can show, the client's close echoed, and the
//! client's reply awaited before the socket drops.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{IceServer, JoinPayload, JoinReply, PeerId, Reason};
use ephemeral_shared::rate::RateLimiter;
use ephemeral_shared::topic::PHOENIX_TOPIC;
use ephemeral_shared::{Role, Topic};
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use crate::AppState;
use crate::addresses::Hold;
use crate::cluster::local::PendingJoin;
use crate::conn::Conn;
use crate::membership::{Member, Target};
use crate::metrics::Metrics;

mod events;
pub mod socket;

use socket::{Socket, Wake, WebSocket};

/// Close codes (RFC 6455, section 7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// How long a closing socket waits for the client's close frame: long
/// enough for a round trip, short enough that a silent client cannot hold
/// the socket.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Refused messages a socket may send in a row before it is closed as a
/// flood, and how fast that allowance comes back: a client briefly over
/// its rate hears why; one that keeps going is cut off instead of being
/// answered forever.
const REFUSAL_BURST: u32 = 32;
const REFUSALS_PER_SECOND: u32 = 2;

/// An input refused, with the reason code and a sentence for people.
type Refusal = (Reason, String);

/// How the read loop ended.
enum Ending {
    /// The socket is gone (read or write error, or the stream ended).
    Gone,
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

/// What a connection holds until it ends.
pub struct Admission {
    /// Counts it against its client's address.
    pub hold: Hold,
    /// Its place in the server's total.
    pub permit: OwnedSemaphorePermit,
    /// Its part of the server's count of open connections, which a
    /// shutdown waits on.
    pub done: mpsc::Sender<()>,
}

/// Serves one upgraded websocket until it closes; `ice_host` is the host
/// its STUN/TURN URLs name.
///
/// The session is built before the future, and this future is the task
/// itself (not awaited inside another): an async fn keeps its arguments
/// for its whole life, and an async block awaiting a future it was given
/// keeps it twice, either way bytes every idle connection would pay.
pub fn serve(
    ws: WebSocket,
    state: Arc<AppState>,
    admission: Admission,
    ice_host: String,
) -> impl Future<Output = ()> + Send + 'static {
    // In a cluster a peer id names its node, so that signals for it go
    // straight there.
    let peer = match &state.cluster {
        Some(cluster) => cluster.new_peer_id(),
        None => PeerId::from_random(rand::random()),
    };
    let conn = Conn::new(
        peer,
        admission.hold.address().clone(),
        state.config.outbound_queue_bytes,
    );
    let session = Session::new(conn, state, ice_host);
    serve_session(Socket::new(ws), session, admission)
}

async fn serve_session(mut socket: Socket, mut session: Session, admission: Admission) {
    let peer = session.peer();
    let metrics = session.state.metrics.clone();
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, address = %admission.hold.address().key(), "connected");

    let idle = session.state.config.idle_timeout();
    let write_timeout = session.state.config.write_timeout();
    let mut idle_at = Instant::now() + idle;
    let timer = tokio::time::sleep_until(idle_at);
    tokio::pin!(timer);
    let mut shutdown = session.state.shutdown.clone();

    let ending = loop {
        let conn = &session.conn;
        let wake = tokio::select! {
            wake = poll_fn(|cx| socket.poll_wake(cx, conn, timer.as_mut(), idle_at, write_timeout)) => wake,
            _ = shutdown.changed() => break Ending::Close(close::GOING_AWAY, "server shutting down"),
        };
        match wake {
            Wake::Message(Message::Close(_)) => break Ending::ClientClosed,
            Wake::Message(message) => {
                idle_at = Instant::now() + idle;
                if let Some(ending) = session.on_message(message) {
                    break ending;
                }
            }
            Wake::ReadEnded(None) | Wake::WriteFailed => break Ending::Gone,
            Wake::ReadEnded(Some(error)) => break read_error(&error, &metrics),
            Wake::WriteTimedOut | Wake::Stalled => {
                session.conn.stall(&metrics);
                break Ending::Close(close::POLICY, "too slow: messages were not read");
            }
            Wake::Idle => {
                metrics.reject(Reason::IdleTimeout);
                break Ending::Close(close::NORMAL, "idle timeout: no message or heartbeat");
            }
        }
    };
    drop(shutdown);
    // Nothing more is written but the close: off the queue, and off every
    // topic, so nobody routes to a socket that is closing.
    session.conn.close_queue();
    session.leave_all();
    drop(session);
    // The closing phase runs once per socket, boxed: inline, its timers
    // would size the future every idle socket keeps.
    match ending {
        Ending::Gone => {}
        Ending::ClientClosed => Box::pin(socket.echo_close(CLOSE_HANDSHAKE_WAIT)).await,
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            Box::pin(socket.close(frame, CLOSE_HANDSHAKE_WAIT)).await;
        }
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(%peer, "disconnected");
    drop(admission);
}

/// What to close with after a read error (RFC 6455 codes).
fn read_error(error: &tungstenite::Error, metrics: &Metrics) -> Ending {
    match error {
        tungstenite::Error::Capacity(_) => {
            metrics.reject(Reason::OversizeMessage);
            Ending::Close(close::TOO_BIG, "message too big")
        }
        tungstenite::Error::Utf8(_) => {
            metrics.reject(Reason::InvalidUtf8);
            Ending::Close(close::INVALID_DATA, "text frame is not valid UTF-8")
        }
        tungstenite::Error::Protocol(_) => {
            tracing::debug!(%error, "websocket protocol violation");
            Ending::Close(close::PROTOCOL_ERROR, "websocket protocol error")
        }
        _ => {
            tracing::debug!(%error, "websocket read failed");
            Ending::Gone
        }
    }
}

/// The size of a message as it counts against the byte rates.
fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
        Message::Frame(frame) => frame.len(),
        Message::Close(_) => 0,
    }
}

/// The protocol state of one connection.
struct Session {
    conn: Arc<Conn>,
    state: Arc<AppState>,
    /// Topics joined (their join refs are in the registry's members). A
    /// handful at most, so a vector beats a map.
    joined: Vec<Topic>,
    /// Messages of this socket, before any work is done for them.
    limiter: RateLimiter,
    /// Refusals this socket may still earn before it is closed as a flood.
    refusals: RateLimiter,
    /// Monotonic origin for the limiters' clock.
    epoch: Instant,
    /// The host name the client reached the server by, for the STUN/TURN
    /// URLs it is handed, and when its TURN credentials expire (they are
    /// minted for the socket when it opens). The list itself is built for
    /// each join reply: kept, it would cost every idle socket half a
    /// kilobyte.
    ice_host: Box<str>,
    turn_expiry: u64,
}

impl Session {
    fn new(conn: Arc<Conn>, state: Arc<AppState>, ice_host: String) -> Self {
        let config = &state.config;
        let limiter = RateLimiter::new(
            config.messages_per_second,
            config.message_burst,
            Duration::ZERO,
        );
        let refusals = RateLimiter::new(REFUSALS_PER_SECOND, REFUSAL_BURST, Duration::ZERO);
        let turn_expiry = state
            .stun_turn
            .as_ref()
            .map_or(0, |service| service.credential_expiry());
        Self {
            ice_host: ice_host.into_boxed_str(),
            turn_expiry,
            conn,
            state,
            joined: Vec::new(),
            limiter,
            refusals,
            epoch: Instant::now(),
        }
    }

    fn peer(&self) -> PeerId {
        self.conn.peer
    }

    /// The STUN/TURN servers this session is handed: `--ice-server`s, then
    /// the built-in ones with this session's TURN credentials.
    fn ice_servers(&self) -> Vec<IceServer> {
        let mut servers = self.state.config.ice_servers.clone();
        if let Some(service) = &self.state.stun_turn {
            servers.extend(service.ice_servers_until(
                &self.ice_host,
                self.peer(),
                self.turn_expiry,
            ));
        }
        servers
    }

    /// Handles one message (not a close); `Some` when the socket must
    /// close.
    fn on_message(&mut self, message: Message) -> Option<Ending> {
        // Every frame — text, binary, ping, malformed — spends the socket's
        // and the address's allowance before anything else is done for it.
        let admitted = if self.limiter.allow(self.epoch.elapsed()) {
            self.conn.address.admit_message(message_len(&message))
        } else {
            Err(Reason::RateLimited)
        };
        if let Err(why) = admitted {
            let detail = match why {
                Reason::RateLimited => format!(
                    "over {} messages per second on this socket; slow down",
                    self.state.config.messages_per_second
                ),
                _ => "your address is over its messages or bytes per second; slow down".into(),
            };
            return self.refused(None, (why, detail));
        }
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let why = "binary frames are not part of this protocol; send JSON text";
                return self.refused(None, (Reason::BinaryFrame, why.into()));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return None;
            }
        };
        let frame = match Frame::parse(text.as_str()) {
            Ok(frame) => frame,
            Err(error) => return self.refused(None, (error.reason(), error.to_string())),
        };
        if let Err(refusal) = self.check_size(&frame, text.len()) {
            return self.refused(Some(&frame), refusal);
        }
        match self.on_frame(&frame) {
            Ok(replies) => {
                for reply in replies {
                    self.send(reply);
                }
                None
            }
            Err(refusal) => self.refused(Some(&frame), refusal),
        }
    }

    /// Every event has a size cap: `content` the page limit (enforced on
    /// the page itself), `signal` its own, everything else a small one.
    fn check_size(&self, frame: &Frame, len: usize) -> Result<(), Refusal> {
        let config = &self.state.config;
        let (cap, what) = match frame.event.as_str() {
            event::CONTENT => return Ok(()),
            event::SIGNAL => (config.max_signal_bytes, "signal"),
            _ => (config.max_control_bytes, "this event's"),
        };
        if len > cap {
            let detail = format!("{what} messages are at most {cap} bytes; this one is {len}");
            return Err((Reason::MessageTooLarge, detail));
        }
        Ok(())
    }

    /// Answers a refused message with its reason (addressed to the frame
    /// when it parsed), or closes the socket once it has been refused too
    /// often.
    fn refused(&mut self, frame: Option<&Frame>, (why, detail): Refusal) -> Option<Ending> {
        let metrics = &self.state.metrics;
        metrics.reject(why);
        if !self.refusals.allow(self.epoch.elapsed()) {
            metrics.reject(Reason::Flooding);
            tracing::debug!(peer = %self.peer(), reason = why.as_str(), "closing a flooding socket");
            return Some(Ending::Close(
                close::POLICY,
                "flooding: kept sending after being refused",
            ));
        }
        let reply = match frame {
            Some(frame) => reply_to(frame).reply_error_detail(why.as_str(), &detail),
            None => Frame::new(None, None, PHOENIX_TOPIC, "", Default::default())
                .reply_error_detail(why.as_str(), &detail),
        };
        self.send(reply);
        None
    }

    /// Queues a frame for this socket, behind what others queued for it.
    fn send(&self, frame: Frame) {
        self.conn
            .deliver(frame.encode().into(), &self.state.metrics);
    }

    fn on_frame(&mut self, frame: &Frame) -> Result<Vec<Frame>, Refusal> {
        if frame.topic == PHOENIX_TOPIC {
            return match frame.event.as_str() {
                event::HEARTBEAT => Ok(vec![frame.reply_ok(&json!({}))]),
                other => Err(unknown_event(other, "heartbeat")),
            };
        }
        let topic: Topic = frame.topic.parse().map_err(|e| {
            (
                Reason::UnknownTopic,
                format!("{e}; got {:?}", truncate(&frame.topic)),
            )
        })?;
        match frame.event.as_str() {
            event::JOIN => self.join(frame, topic),
            event::LEAVE => self.leave(frame, topic),
            event::CONTENT_REQUEST => {
                self.require(topic, Role::Want, event::CONTENT_REQUEST)?;
                self.content_request(frame, topic)
            }
            event::CONTENT => {
                self.require(topic, Role::Have, event::CONTENT)?;
                self.content(frame, topic)
            }
            event::CONTENT_UNAVAILABLE => {
                self.require(topic, Role::Have, event::CONTENT_UNAVAILABLE)?;
                self.content_unavailable(frame, topic)
            }
            event::SIGNAL => {
                self.require_joined(topic)?;
                self.signal(frame, topic)
            }
            other => Err(unknown_event(
                other,
                "phx_join, phx_leave, content_request, content, content_unavailable, signal",
            )),
        }
    }

    fn is_joined(&self, topic: Topic) -> bool {
        self.joined.contains(&topic)
    }

    fn require_joined(&self, topic: Topic) -> Result<(), Refusal> {
        if self.is_joined(topic) {
            Ok(())
        } else {
            Err((Reason::NotJoined, format!("join {topic} first")))
        }
    }

    fn require(&self, topic: Topic, role: Role, event: &str) -> Result<(), Refusal> {
        if topic.role != role {
            let detail = format!("{event} is sent on {}:<hash> topics", role.as_str());
            return Err((Reason::UnknownEvent, detail));
        }
        self.require_joined(topic)
    }

    fn join(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        if self.is_joined(topic) {
            return Err((Reason::AlreadyJoined, format!("already joined {topic}")));
        }
        let config = &self.state.config;
        let max = config.max_topics_per_socket;
        if self.joined.len() >= max {
            return Err((
                Reason::TooManyTopics,
                format!("at most {max} topics per socket"),
            ));
        }
        let JoinPayload { path } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if !self.conn.address.admit_join() {
            let detail = format!(
                "your address is over {} joins per second; slow down",
                config.joins_per_second_per_address
            );
            return Err((Reason::AddressRateLimited, detail));
        }
        if self.joined.capacity() == 0 {
            // Most sockets join one or two topics: not room for four.
            self.joined.reserve_exact(2);
        }
        self.joined.push(topic);
        let member = Member {
            conn: self.conn.clone(),
            join_ref: frame.join_ref.clone(),
        };
        if let (Role::Have, Some(path)) = (topic.role, path) {
            self.state.metrics.fetched(path);
        }
        let mut reply = JoinReply {
            peer_id: self.peer(),
            count: 0,
            waiting: 0,
            ice_servers: self.ice_servers(),
            max_relay_bytes: Some(config.max_page_bytes),
        };
        let counts = match &self.state.cluster {
            None => Some(
                self.state
                    .registry
                    .join(topic, self.peer(), Target::Local(member)),
            ),
            // The counts are the page's home's to give: on another node,
            // the reply goes out when its answer comes back.
            Some(cluster) => {
                let pending = PendingJoin {
                    frame: reply_to(frame),
                    reply: reply.clone(),
                };
                cluster.join(topic, member, pending)
            }
        };
        let Some(counts) = counts else {
            return Ok(Vec::new());
        };
        reply.count = counts.count;
        reply.waiting = counts.waiting;
        Ok(vec![frame.reply_ok(&reply)])
    }

    fn leave(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        self.require_joined(topic)?;
        self.joined.retain(|t| *t != topic);
        self.leave_topic(topic);
        // Phoenix closes a left channel with phx_close carrying the join ref
        // as both refs.
        let close = Frame::new(
            frame.join_ref.clone(),
            frame.join_ref.clone(),
            topic.to_string(),
            event::CLOSE,
            Default::default(),
        );
        Ok(vec![frame.reply_ok(&json!({})), close])
    }

    fn leave_topic(&self, topic: Topic) {
        match &self.state.cluster {
            Some(cluster) => cluster.leave(topic, self.peer()),
            None => self.state.registry.leave(topic, self.peer()),
        }
    }

    /// Removes this connection from every topic it joined.
    fn leave_all(&mut self) {
        for topic in std::mem::take(&mut self.joined) {
            self.leave_topic(topic);
        }
    }
}

/// The frame an error reply answers, with a long topic cut short: a reply
/// must not echo a client's megabytes back to it.
fn reply_to(frame: &Frame) -> Frame {
    Frame::new(
        frame.join_ref.clone(),
        frame.msg_ref.clone(),
        truncate(&frame.topic),
        frame.event.as_str(),
        Default::default(),
    )
}

fn unknown_event(event: &str, expected: &str) -> Refusal {
    (
        Reason::UnknownEvent,
        format!("unknown event {:?}; expected {expected}", truncate(event)),
    )
}

/// Echoes at most 80 characters of client input back in errors.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}
