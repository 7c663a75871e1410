//! One websocket connection: reads Phoenix frames, applies the limits,
//! answers joins, leaves and heartbeats, routes requests, relays pages and
//! signals, and writes what other connections queued for it. Closes with a
//! code and a reason a client can show.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{
    Content, ContentRequest, HostRequest, JoinReply, NO_HOSTS, PeerId, SignalFrom, SignalTo,
};
use ephemeral_shared::rate::RateLimiter;
use ephemeral_shared::selection::Selection;
use ephemeral_shared::topic::PHOENIX_TOPIC;
use ephemeral_shared::{Role, Topic};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::AppState;
use crate::metrics::Rejection;
use crate::registry::{Conn, Member, Outbound, Request, Routing};

/// Close codes (RFC 6455).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// An input refused, with the reason code and a sentence for people.
type Refusal = (Rejection, String);

/// Serves one upgraded websocket until it closes.
pub async fn serve(mut socket: WebSocket, state: Arc<AppState>, _permit: OwnedSemaphorePermit) {
    let peer = PeerId::from_random(rand::random());
    let (conn, mut outbound) = Conn::new(peer, state.config.outbound_queue);
    let mut session = Session::new(conn.clone(), state.clone());
    let metrics = &state.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, "connected");

    let idle = state.config.idle_timeout();
    let idle_deadline = tokio::time::sleep(idle);
    tokio::pin!(idle_deadline);
    let mut shutdown = state.shutdown.clone();

    let close: Option<(u16, &str)> = loop {
        tokio::select! {
            incoming = socket.recv() => {
                let message = match incoming {
                    None => break None,
                    Some(Ok(message)) => message,
                    Some(Err(error)) => break read_error(&error, metrics),
                };
                idle_deadline.as_mut().reset(Instant::now() + idle);
                let replies = match message {
                    Message::Text(text) => session.on_text(text.as_str()),
                    Message::Binary(_) => {
                        let why = "binary frames are not part of this protocol; send JSON text";
                        vec![session.refuse_unparsed((Rejection::BinaryFrame, why.into()))]
                    }
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => Vec::new(),
                };
                if !send_all(&mut socket, replies).await {
                    break None;
                }
                if session.flooding() {
                    break Some((close::POLICY, "rate limit exceeded"));
                }
            }
            Some(Outbound::Text(text)) = outbound.recv() => {
                if socket.send(Message::Text(text)).await.is_err() {
                    break None;
                }
            }
            () = &mut idle_deadline => {
                metrics.reject(Rejection::IdleTimeout);
                break Some((close::NORMAL, "idle timeout: no message or heartbeat"));
            }
            () = conn.kill.notified() => {
                break Some((close::POLICY, "too slow: messages were not read"));
            }
            _ = shutdown.changed() => break Some((close::GOING_AWAY, "server shutting down")),
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    session.leave_all();
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(%peer, ?close, "disconnected");
}

/// What to close with after a read error; oversize messages get 1009.
fn read_error(
    error: &axum::Error,
    metrics: &crate::metrics::Metrics,
) -> Option<(u16, &'static str)> {
    use std::error::Error as _;
    let capacity = error
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if capacity {
        metrics.reject(Rejection::OversizeMessage);
        Some((close::TOO_BIG, "message too big"))
    } else {
        tracing::debug!(%error, "websocket read failed");
        Some((close::PROTOCOL_ERROR, "websocket protocol error"))
    }
}

async fn send_all(socket: &mut WebSocket, frames: Vec<Frame>) -> bool {
    for frame in frames {
        if socket
            .send(Message::Text(frame.encode().into()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// The protocol state of one connection.
struct Session {
    conn: Arc<Conn>,
    state: Arc<AppState>,
    /// Topics joined, with the join ref their pushes carry. A handful at
    /// most, so a vector beats a map.
    joined: Vec<(Topic, Option<String>)>,
    limiter: RateLimiter,
    /// Messages refused in a row for the rate; past the burst, the socket
    /// is closed instead of answered.
    refused_in_a_row: u32,
    /// Monotonic origin for the rate limiter's clock.
    epoch: Instant,
}

impl Session {
    fn new(conn: Arc<Conn>, state: Arc<AppState>) -> Self {
        let config = &state.config;
        let limiter = RateLimiter::new(
            config.messages_per_second,
            config.message_burst,
            Duration::ZERO,
        );
        Self {
            conn,
            state,
            joined: Vec::new(),
            limiter,
            refused_in_a_row: 0,
            epoch: Instant::now(),
        }
    }

    fn peer(&self) -> PeerId {
        self.conn.peer
    }

    fn flooding(&self) -> bool {
        self.refused_in_a_row > self.state.config.message_burst
    }

    /// Handles one text message; returns the replies to write.
    fn on_text(&mut self, text: &str) -> Vec<Frame> {
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                let why = match error.code() {
                    "malformed_json" => Rejection::MalformedJson,
                    "wrong_arity" => Rejection::WrongArity,
                    _ => Rejection::MalformedFrame,
                };
                return vec![self.refuse_unparsed((why, error.to_string()))];
            }
        };
        if !self.limiter.allow(self.epoch.elapsed()) {
            self.refused_in_a_row += 1;
            let why = format!(
                "over {} messages per second; slow down",
                self.state.config.messages_per_second
            );
            return vec![self.refuse(&frame, (Rejection::RateLimited, why))];
        }
        self.refused_in_a_row = 0;
        match self.on_frame(&frame) {
            Ok(replies) => replies,
            Err(refusal) => vec![self.refuse(&frame, refusal)],
        }
    }

    fn refuse(&self, frame: &Frame, (why, detail): Refusal) -> Frame {
        self.state.metrics.reject(why);
        frame.reply_error_detail(why.as_str(), &detail)
    }

    /// Refuses a message whose refs are unknown: the reply goes on the
    /// `phoenix` topic with null refs.
    fn refuse_unparsed(&self, refusal: Refusal) -> Frame {
        let unaddressed = Frame::new(None, None, PHOENIX_TOPIC, "", Default::default());
        self.refuse(&unaddressed, refusal)
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
                Rejection::UnknownTopic,
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
            event::SIGNAL => {
                self.require_joined(topic)?;
                self.signal(frame, topic)
            }
            other => Err(unknown_event(
                other,
                "phx_join, phx_leave, content_request, content, signal",
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
            None => Err((Rejection::NotJoined, format!("join {topic} first"))),
        }
    }

    fn require(&self, topic: Topic, role: Role, event: &str) -> Result<(), Refusal> {
        if topic.role != role {
            let detail = format!("{event} is sent on {}:<hash> topics", role.as_str());
            return Err((Rejection::UnknownEvent, detail));
        }
        self.require_joined(topic)
    }

    fn join(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        if self.join_ref(topic).is_some() {
            return Err((Rejection::AlreadyJoined, format!("already joined {topic}")));
        }
        let max = self.state.config.max_topics_per_socket;
        if self.joined.len() >= max {
            return Err((
                Rejection::TooManyTopics,
                format!("at most {max} topics per socket"),
            ));
        }
        self.joined.push((topic, frame.join_ref.clone()));
        let member = Member {
            conn: self.conn.clone(),
            join_ref: frame.join_ref.clone(),
        };
        let counts = self.state.registry.join(topic, member);
        let reply = JoinReply {
            peer_id: self.peer(),
            count: counts.count,
            waiting: counts.waiting,
            ice_servers: self.state.config.ice_servers.clone(),
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
            .map_err(|e| (Rejection::BadPayload, e.to_string()))?;
        if self.state.config.selection == Selection::CoinFlip {
            return Ok(vec![self.coin_flip_request(frame, topic, request)]);
        }
        let visitor = Member {
            conn: self.conn.clone(),
            join_ref: frame.join_ref.clone(),
        };
        let request = Request {
            visitor,
            msg_ref: frame.msg_ref.clone(),
            relay: request.relay,
            exclude: request.exclude,
        };
        // The registry queues the reply on this socket (now, or when a host
        // has a free slot), ahead of anything the host will send.
        if let Routing::Queued(ticket) = self.state.registry.request(topic.hash, request) {
            let state = Arc::downgrade(&self.state);
            let wait = self.state.config.queue_wait();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(state) = state.upgrade() {
                    state.registry.route_overdue(topic.hash, ticket);
                }
            });
        }
        Ok(Vec::new())
    }

    /// The seed's routing: every host gets the request with probability
    /// 1/n; the reply says how many did.
    fn coin_flip_request(&self, frame: &Frame, topic: Topic, request: ContentRequest) -> Frame {
        let metrics = &self.state.metrics;
        let (hosts, eligible) =
            self.state
                .registry
                .coin_flip_hosts(topic.hash, self.peer(), &request.exclude);
        if eligible == 0 {
            metrics.requests_no_host.fetch_add(1, Ordering::Relaxed);
            return frame.reply_error(NO_HOSTS);
        }
        let have = topic.opposite().to_string();
        for host in &hosts {
            let push = HostRequest {
                from: self.peer(),
                relay: request.relay,
            };
            let text = Frame::with_payload(
                host.join_ref.clone(),
                None,
                have.clone(),
                event::CONTENT_REQUEST,
                &push,
            )
            .encode();
            host.conn.deliver(text.into(), metrics);
            metrics.requests_routed.fetch_add(1, Ordering::Relaxed);
        }
        frame.reply_ok(&json!({ "routed": hosts.len() }))
    }

    fn content(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let Content { content } = frame
            .payload_as()
            .map_err(|e| (Rejection::BadPayload, e.to_string()))?;
        let max = self.state.config.max_page_bytes;
        if content.len() > max {
            let detail = format!("page is {} bytes, the limit is {max}", content.len());
            return Err((Rejection::PageTooLarge, detail));
        }
        if !topic.hash.matches(content.as_bytes()) {
            let detail = "content does not hash to the topic's SHA-256".to_string();
            return Err((Rejection::HashMismatch, detail));
        }
        let page_bytes = content.len() as u64;
        let want = Topic::want(topic.hash);
        let wanters = self.state.registry.members(want);
        let text: Utf8Bytes = Frame::with_payload(
            None,
            None,
            want.to_string(),
            event::CONTENT,
            &Content { content },
        )
        .encode()
        .into();
        let metrics = &self.state.metrics;
        for wanter in &wanters {
            if wanter.conn.deliver(text.clone(), metrics) {
                metrics
                    .relayed_bytes
                    .fetch_add(page_bytes, Ordering::Relaxed);
            }
        }
        Ok(vec![frame.reply_ok(&json!({ "delivered": wanters.len() }))])
    }

    fn signal(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let SignalTo { to, body } = frame
            .payload_as()
            .map_err(|e| (Rejection::BadPayload, e.to_string()))?;
        let other_side = topic.opposite();
        let Some(target) = self.state.registry.member(other_side, to) else {
            let detail = format!("peer {to} is not on {other_side}");
            return Err((Rejection::UnknownPeer, detail));
        };
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

fn unknown_event(event: &str, expected: &str) -> Refusal {
    (
        Rejection::UnknownEvent,
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
