//! One websocket connection: reads Phoenix frames, spends the socket's and
//! the address's limits on each before any work is done for it, answers
//! joins, leaves and heartbeats, routes requests, relays pages and signals.
//! A writer task of its own ([`write_queue`]) sends what is queued for it,
//! so a client that stops reading never blocks the reader, the idle timer
//! or a close. Closes follow RFC 6455: a code and a reason a client can
//! show, the client's close echoed, and the client's reply awaited before
//! the socket drops.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{
    Content, ContentRequest, ContentUnavailable, IceServer, JoinPayload, JoinReply, MAX_EXCLUDE,
    PeerId, Reason, SignalFrom, SignalTo,
};
use ephemeral_shared::rate::RateLimiter;
use ephemeral_shared::selection::Selection;
use ephemeral_shared::topic::PHOENIX_TOPIC;
use ephemeral_shared::{Role, Topic};
use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::{Instant, timeout};

use crate::AppState;
use crate::addresses::Hold;
use crate::conn::{Conn, write_queue};
use crate::membership::Member;
use crate::metrics::Metrics;
use crate::registry::Request;

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
    /// The socket is gone (read error, or the stream ended).
    Gone,
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

/// Serves one upgraded websocket until it closes. `hold` counts it against
/// its client's address, `_permit` against the server's total; `ice_host`
/// is the host its STUN/TURN URLs name.
pub async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    hold: Hold,
    _permit: OwnedSemaphorePermit,
    ice_host: String,
) {
    let peer = PeerId::from_random(rand::random());
    let config = &state.config;
    let (conn, queue) = Conn::new(peer, hold.address().clone(), config.outbound_queue_bytes);
    let (sink, mut stream) = socket.split();
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_queue(
        sink,
        queue,
        close_rx,
        conn.clone(),
        config.write_timeout(),
        CLOSE_HANDSHAKE_WAIT,
        state.metrics.clone(),
    ));
    let mut session = Session::new(conn.clone(), state.clone(), ice_host);
    let metrics = &state.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, address = %hold.address().key(), "connected");

    let idle = config.idle_timeout();
    let idle_deadline = tokio::time::sleep(idle);
    tokio::pin!(idle_deadline);
    let mut shutdown = state.shutdown.clone();

    let ending = loop {
        tokio::select! {
            incoming = stream.next() => {
                let message = match incoming {
                    None => break Ending::Gone,
                    Some(Ok(message)) => message,
                    Some(Err(error)) => break read_error(&error, metrics),
                };
                idle_deadline.as_mut().reset(Instant::now() + idle);
                if let Message::Close(_) = message {
                    break Ending::ClientClosed;
                }
                if let Some(ending) = session.on_message(message) {
                    break ending;
                }
            }
            () = &mut idle_deadline => {
                metrics.reject(Reason::IdleTimeout);
                break Ending::Close(close::NORMAL, "idle timeout: no message or heartbeat");
            }
            () = conn.kill.notified() => {
                break Ending::Close(close::POLICY, "too slow: messages were not read");
            }
            _ = shutdown.changed() => break Ending::Close(close::GOING_AWAY, "server shutting down"),
            _ = &mut writer => break Ending::Gone,
        }
    };
    // Off every topic first, so nobody routes to a socket that is closing.
    session.leave_all();
    match ending {
        Ending::Gone => writer.abort(),
        Ending::ClientClosed => {
            let _ = close_tx.send(None);
            let _ = timeout(CLOSE_HANDSHAKE_WAIT, &mut writer).await;
        }
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = close_tx.send(Some(frame));
            // Read until the client answers the close: dropping a socket with
            // unread input makes the kernel send a reset, and the client would
            // lose the close frame and its code.
            let _ = timeout(CLOSE_HANDSHAKE_WAIT, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
            let _ = timeout(CLOSE_HANDSHAKE_WAIT, &mut writer).await;
        }
    }
    writer.abort();
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(%peer, "disconnected");
    drop(hold);
}

/// What to close with after a read error (RFC 6455 codes).
fn read_error(error: &axum::Error, metrics: &Metrics) -> Ending {
    use std::error::Error as _;
    let cause = error
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>());
    match cause {
        Some(tungstenite::Error::Capacity(_)) => {
            metrics.reject(Reason::OversizeMessage);
            Ending::Close(close::TOO_BIG, "message too big")
        }
        Some(tungstenite::Error::Utf8(_)) => {
            metrics.reject(Reason::InvalidUtf8);
            Ending::Close(close::INVALID_DATA, "text frame is not valid UTF-8")
        }
        Some(tungstenite::Error::Protocol(_)) => {
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
        Message::Close(_) => 0,
    }
}

/// The protocol state of one connection.
struct Session {
    conn: Arc<Conn>,
    state: Arc<AppState>,
    /// Topics joined, with the join ref their pushes carry. A handful at
    /// most, so a vector beats a map.
    joined: Vec<(Topic, Option<String>)>,
    /// Messages of this socket, before any work is done for them.
    limiter: RateLimiter,
    /// Refusals this socket may still earn before it is closed as a flood.
    refusals: RateLimiter,
    /// Monotonic origin for the limiters' clock.
    epoch: Instant,
    /// The STUN/TURN servers this session is handed, with TURN credentials
    /// of its own, minted when the socket opens.
    ice_servers: Vec<IceServer>,
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
        let mut ice_servers = config.ice_servers.clone();
        if let Some(service) = &state.stun_turn {
            ice_servers.extend(service.ice_servers_for(&ice_host, conn.peer));
        }
        Self {
            ice_servers,
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
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return None,
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

    fn join_ref(&self, topic: Topic) -> Option<&Option<String>> {
        self.joined
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, join_ref)| join_ref)
    }

    fn require_joined(&self, topic: Topic) -> Result<(), Refusal> {
        match self.join_ref(topic) {
            Some(_) => Ok(()),
            None => Err((Reason::NotJoined, format!("join {topic} first"))),
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
        if self.join_ref(topic).is_some() {
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
        self.joined.push((topic, frame.join_ref.clone()));
        let member = Member {
            conn: self.conn.clone(),
            join_ref: frame.join_ref.clone(),
        };
        let counts = self.state.registry.join(topic, member);
        if let (Role::Have, Some(path)) = (topic.role, path) {
            self.state.metrics.fetched(path);
        }
        let reply = JoinReply {
            peer_id: self.peer(),
            count: counts.count,
            waiting: counts.waiting,
            ice_servers: self.ice_servers.clone(),
            max_relay_bytes: Some(config.max_page_bytes),
        };
        Ok(vec![frame.reply_ok(&reply)])
    }

    fn leave(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        self.require_joined(topic)?;
        self.joined.retain(|(t, _)| *t != topic);
        self.state.registry.leave(topic, self.peer());
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

    fn content_request(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let request: ContentRequest = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if request.exclude.len() > MAX_EXCLUDE {
            let detail = format!(
                "exclude lists at most {MAX_EXCLUDE} peers; got {}",
                request.exclude.len()
            );
            return Err((Reason::BadPayload, detail));
        }
        let request = Request {
            visitor: Member {
                conn: self.conn.clone(),
                join_ref: frame.join_ref.clone(),
            },
            msg_ref: frame.msg_ref.clone(),
            relay: request.relay,
            exclude: request.exclude.into_iter().collect(),
        };
        // The registry queues the reply on this socket (now, or when a host
        // has a free slot), ahead of anything the host will send.
        let registry = &self.state.registry;
        match self.state.config.selection {
            Selection::Uniform => registry.request(topic.hash, request),
            Selection::CoinFlip => registry.coin_flip(topic.hash, request),
        }
        Ok(Vec::new())
    }

    /// Relayed content goes only to visitors whose request went to this
    /// host, once per request: a host cannot make the server multiply its
    /// bytes over every visitor of the page.
    fn content(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let Content { content } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        let max = self.state.config.max_page_bytes;
        if content.len() > max {
            let detail = format!("page is {} bytes, the limit is {max}", content.len());
            return Err((Reason::PageTooLarge, detail));
        }
        let registry = &self.state.registry;
        let asked = registry.relay_visitors(topic.hash, self.peer());
        if asked == 0 {
            let detail = "no visitor's request for the page went to this host".to_string();
            return Err((Reason::NotRequested, detail));
        }
        if !topic.hash.matches(content.as_bytes()) {
            let detail = "content does not hash to the topic's SHA-256".to_string();
            return Err((Reason::HashMismatch, detail));
        }
        let page_bytes = content.len() as u64;
        if !self
            .conn
            .address
            .admit_relay(page_bytes.saturating_mul(asked as u64))
        {
            let detail = format!(
                "your address is over {} relayed bytes per second",
                self.state.config.relay_bytes_per_second_per_address
            );
            return Err((Reason::RelayQuota, detail));
        }
        let delivered = registry.relay(topic.hash, self.peer(), content);
        Ok(vec![frame.reply_ok(&json!({ "delivered": delivered }))])
    }

    /// A host that cannot relay the page (too large for the relay) says so;
    /// the visitor that asked hears it at once instead of timing out.
    fn content_unavailable(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let ContentUnavailable { to, size } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if !self
            .state
            .registry
            .relay_unavailable(topic.hash, self.peer(), to, size)
        {
            let detail = format!("peer {to} did not ask this host for the page");
            return Err((Reason::NotRequested, detail));
        }
        Ok(vec![frame.reply_ok(&json!({}))])
    }

    fn signal(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let SignalTo { to, body } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        let other_side = topic.opposite();
        let registry = &self.state.registry;
        let Some(target) = registry.member(other_side, to) else {
            let detail = format!("peer {to} is not on {other_side}");
            return Err((Reason::UnknownPeer, detail));
        };
        if topic.role == Role::Want {
            // The visitor answers its host: its upload slot is in use.
            registry.progress(topic.hash, self.peer(), to);
        }
        let forwarded = SignalFrom {
            from: self.peer(),
            body,
        };
        let text = Frame::with_payload(
            target.join_ref.clone(),
            None,
            other_side.to_string(),
            event::SIGNAL,
            &forwarded,
        )
        .encode();
        target.conn.deliver(text.into(), &self.state.metrics);
        self.state
            .metrics
            .signals_relayed
            .fetch_add(1, Ordering::Relaxed);
        // No ok reply (Phoenix's `:noreply`): a negotiation is a dozen
        // signals each way, the receiver's answer is the acknowledgement,
        // and an ok per signal would double what the server writes. Errors
        // are still replied.
        Ok(Vec::new())
    }

    /// Removes this connection from every topic it joined.
    fn leave_all(&mut self) {
        for (topic, _) in self.joined.drain(..) {
            self.state.registry.leave(topic, self.conn.peer);
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
