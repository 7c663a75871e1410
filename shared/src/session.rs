//! The client's Phoenix session, sans-IO: one websocket's refs, the join
//! ref of every topic, replies matched to what they answer, the heartbeat
//! and its deadline, reconnecting with jittered backoff, and joining every
//! wanted topic again after a reconnect or after the server dropped it
//! (`phx_close` / `phx_error`).
//!
//! The shell owns the socket: it carries out what [`Session::poll_transmit`]
//! returns (open, send a text frame, close) and feeds back what happened
//! (`on_connected`, `on_frame`, `on_disconnected`, and time through
//! [`Session::handle_timeout`] at [`Session::next_deadline`]). Time is a
//! `Duration` since any epoch the shell picks; the jitter's randomness is a
//! seed the shell gives. Above the session, [`crate::client::Client`] reads
//! its [`SessionEvent`]s.
//!
//! ```text
//!   Down ── retry_at ──► Connecting ── on_connected ──► Up ── heartbeat unanswered,
//!    ▲                      │ connect_timeout /           │   on_disconnected
//!    └──────────────────────┴─ on_connect_failed ◄────────┘
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::frame::{Frame, event, to_object};
use crate::protocol::{JoinReply, Reason};
use crate::topic::Topic;

/// How the session keeps its link.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Phoenix's own clients beat every 30 s and the server closes sockets
    /// silent for 60 s; a heartbeat unanswered by the next beat means the
    /// link is dead even if the socket says nothing.
    pub heartbeat_interval: Duration,
    /// How long opening the websocket may take before it counts as failed.
    pub connect_timeout: Duration,
    /// The first reconnect delay; it doubles on each failure in a row up to
    /// `reconnect_max`, and each delay is drawn from half to all of it.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            // A blip costs a tenth of a second; a restarted server is found
            // within 5 s, and the jitter keeps its peers from knocking at
            // the same instants.
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// What the shell must do with the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    /// Open the websocket; answer with `on_connected` or `on_connect_failed`.
    Connect,
    /// Send this frame, as a text message.
    Send(Frame),
    /// Close the websocket; no `on_disconnected` is needed for it.
    Close,
}

/// A server's refusal, from an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire name; [`Refusal::reason`] gives the known ones as a type.
    pub reason: String,
    pub detail: Option<String>,
}

impl Refusal {
    fn of(response: &Map<String, Value>) -> Self {
        let field = |key: &str| response.get(key).and_then(Value::as_str);
        Self {
            reason: field("reason").unwrap_or("unknown").to_string(),
            detail: field("detail").map(str::to_string),
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        self.reason.parse().ok()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{} ({detail})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What happened on the session, for the layer above. `T` is the tag the
/// caller gave a push, handed back with its reply.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent<T> {
    /// The link is up; joins of every wanted topic are on their way.
    Connected,
    /// The link is down; a reconnect is scheduled.
    Disconnected(LinkLoss),
    /// The server accepted a join. `rejoin`: the topic had been joined
    /// before, so whatever went through the server since may be lost.
    Joined {
        topic: Topic,
        reply: JoinReply,
        rejoin: bool,
    },
    /// The server refused a join; the topic is no longer wanted.
    JoinRefused { topic: Topic, refusal: Refusal },
    /// The reply to a push.
    Reply {
        tag: T,
        result: Result<Map<String, Value>, Refusal>,
    },
    /// A server push on a joined topic.
    Push { topic: Topic, frame: Frame },
}

/// Why a link that was up went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLoss {
    /// The socket closed or failed.
    Closed,
    /// A heartbeat went unanswered for a whole interval.
    HeartbeatUnanswered,
    /// The shell asked for it ([`Session::drop_link`]).
    Dropped,
}

impl std::fmt::Display for LinkLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkLoss::Closed => "the connection closed",
            LinkLoss::HeartbeatUnanswered => "the server stopped answering heartbeats",
            LinkLoss::Dropped => "the link was dropped on purpose",
        })
    }
}

#[derive(Debug)]
enum Link {
    Down { retry_at: Duration },
    Connecting { deadline: Duration },
    Up { heartbeat_at: Duration },
}

/// A topic the layer above wants joined.
#[derive(Debug)]
struct Membership {
    /// The ref of the latest join sent on this link; `None` until sent.
    join_ref: Option<String>,
    /// Whether the server accepted that join.
    joined: bool,
    /// Said on the next join only; cleared once a join succeeds.
    payload: Map<String, Value>,
    ever_joined: bool,
}

#[derive(Debug)]
enum Waiting<T> {
    Join(Topic),
    Heartbeat,
    Push(T),
}

/// One Phoenix session across reconnects.
#[derive(Debug)]
pub struct Session<T> {
    config: SessionConfig,
    link: Link,
    backoff: Duration,
    next_ref: u64,
    heartbeat_ref: Option<String>,
    topics: HashMap<Topic, Membership>,
    waiting: HashMap<String, Waiting<T>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent<T>>,
    rng: SplitMix64,
}

impl<T> Session<T> {
    /// A session that connects at once: the first transmit is
    /// [`Transmit::Connect`].
    pub fn new(config: SessionConfig, seed: u64, now: Duration) -> Self {
        let mut session = Self {
            backoff: config.reconnect_min,
            config,
            link: Link::Down { retry_at: now },
            next_ref: 0,
            heartbeat_ref: None,
            topics: HashMap::new(),
            waiting: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng: SplitMix64(seed),
        };
        session.handle_timeout(now);
        session
    }

    pub fn is_online(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Whether the server has accepted our join of `topic` on this link.
    pub fn is_joined(&self, topic: Topic) -> bool {
        self.is_online() && self.topics.get(&topic).is_some_and(|m| m.joined)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent<T>> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] next has something to do.
    pub fn next_deadline(&self) -> Duration {
        match self.link {
            Link::Down { retry_at } => retry_at,
            Link::Connecting { deadline } => deadline,
            Link::Up { heartbeat_at } => heartbeat_at,
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        if now < self.next_deadline() {
            return;
        }
        match self.link {
            Link::Down { .. } => {
                self.link = Link::Connecting {
                    deadline: now + self.config.connect_timeout,
                };
                self.transmits.push_back(Transmit::Connect);
            }
            Link::Connecting { .. } => {
                self.transmits.push_back(Transmit::Close);
                self.schedule_retry(now, LinkLoss::Closed);
            }
            Link::Up { .. } if self.heartbeat_ref.is_some() => {
                self.transmits.push_back(Transmit::Close);
                self.schedule_retry(now, LinkLoss::HeartbeatUnanswered);
            }
            Link::Up { .. } => {
                let msg_ref = self.take_ref();
                self.send(Frame::heartbeat(msg_ref.clone()));
                self.waiting.insert(msg_ref.clone(), Waiting::Heartbeat);
                self.heartbeat_ref = Some(msg_ref);
                self.link = Link::Up {
                    heartbeat_at: now + self.config.heartbeat_interval,
                };
            }
        }
    }

    /// The websocket opened.
    pub fn on_connected(&mut self, now: Duration) {
        if !matches!(self.link, Link::Connecting { .. }) {
            return;
        }
        self.link = Link::Up {
            heartbeat_at: now + self.config.heartbeat_interval,
        };
        self.backoff = self.config.reconnect_min;
        self.events.push_back(SessionEvent::Connected);
        let mut topics: Vec<Topic> = self.topics.keys().copied().collect();
        // Joins go out in a stable order, so a reconnect is reproducible.
        topics.sort();
        for topic in topics {
            self.send_join(topic);
        }
    }

    /// Opening the websocket failed.
    pub fn on_connect_failed(&mut self, now: Duration) {
        if matches!(self.link, Link::Connecting { .. }) {
            self.schedule_retry(now, LinkLoss::Closed);
        }
    }

    /// The websocket closed or failed.
    pub fn on_disconnected(&mut self, now: Duration) {
        if matches!(self.link, Link::Up { .. } | Link::Connecting { .. }) {
            self.schedule_retry(now, LinkLoss::Closed);
        }
    }

    /// Closes the link as if the network had failed; it reconnects.
    pub fn drop_link(&mut self, now: Duration) {
        if matches!(self.link, Link::Up { .. } | Link::Connecting { .. }) {
            self.transmits.push_back(Transmit::Close);
            self.schedule_retry(now, LinkLoss::Dropped);
        }
    }

    /// Closes the link for good: no reconnect follows.
    pub fn shutdown(&mut self) {
        if matches!(self.link, Link::Up { .. } | Link::Connecting { .. }) {
            self.transmits.push_back(Transmit::Close);
        }
        self.reset_link();
        self.topics.clear();
        self.link = Link::Down {
            retry_at: Duration::MAX,
        };
    }

    /// A frame from the server.
    pub fn on_frame(&mut self, frame: Frame) {
        if frame.event == event::REPLY {
            self.on_reply(frame);
            return;
        }
        let Ok(topic) = frame.topic.parse::<Topic>() else {
            return;
        };
        let Some(membership) = self.topics.get_mut(&topic) else {
            // A late push for a topic we left.
            return;
        };
        // A push from an earlier join of the topic belongs to a membership
        // the server has already ended.
        if frame.join_ref.is_some() && frame.join_ref != membership.join_ref {
            return;
        }
        match frame.event.as_str() {
            // The server ended our membership; we still want it.
            event::CLOSE | event::ERROR => {
                membership.joined = false;
                self.send_join(topic);
            }
            _ => self.events.push_back(SessionEvent::Push { topic, frame }),
        }
    }

    fn on_reply(&mut self, frame: Frame) {
        let Some(waiting) = frame.msg_ref.as_ref().and_then(|r| self.waiting.remove(r)) else {
            return;
        };
        let Some((status, response)) = frame.as_reply() else {
            return;
        };
        let result = match status {
            "ok" => Ok(response.clone()),
            _ => Err(Refusal::of(response)),
        };
        match waiting {
            Waiting::Heartbeat => {
                if self.heartbeat_ref == frame.msg_ref {
                    self.heartbeat_ref = None;
                }
            }
            Waiting::Push(tag) => self.events.push_back(SessionEvent::Reply { tag, result }),
            Waiting::Join(topic) => self.on_join_reply(topic, frame.msg_ref, result),
        }
    }

    fn on_join_reply(
        &mut self,
        topic: Topic,
        msg_ref: Option<String>,
        result: Result<Map<String, Value>, Refusal>,
    ) {
        let Some(membership) = self.topics.get_mut(&topic) else {
            return;
        };
        if membership.join_ref != msg_ref {
            return;
        }
        let reply = result.and_then(|response| {
            serde_json::from_value::<JoinReply>(Value::Object(response)).map_err(|error| Refusal {
                reason: "bad_join_reply".into(),
                detail: Some(error.to_string()),
            })
        });
        match reply {
            Ok(reply) => {
                let rejoin = membership.ever_joined;
                membership.joined = true;
                membership.ever_joined = true;
                membership.payload = Map::new();
                self.events.push_back(SessionEvent::Joined {
                    topic,
                    reply,
                    rejoin,
                });
            }
            Err(refusal) => {
                self.topics.remove(&topic);
                self.events
                    .push_back(SessionEvent::JoinRefused { topic, refusal });
            }
        }
    }

    /// Joins `topic`, now if online and on every reconnect until left;
    /// `payload` goes with the first successful join only.
    pub fn join<P: Serialize>(&mut self, topic: Topic, payload: &P) {
        if self.topics.contains_key(&topic) {
            return;
        }
        self.topics.insert(
            topic,
            Membership {
                join_ref: None,
                joined: false,
                payload: to_object(payload),
                ever_joined: false,
            },
        );
        if self.is_online() {
            self.send_join(topic);
        }
    }

    /// Leaves `topic`; late pushes on it are dropped.
    pub fn leave(&mut self, topic: Topic) {
        let Some(membership) = self.topics.remove(&topic) else {
            return;
        };
        if self.is_online() && membership.join_ref.is_some() {
            let msg_ref = self.take_ref();
            self.send(Frame::new(
                membership.join_ref,
                Some(msg_ref),
                topic.to_string(),
                event::LEAVE,
                Map::new(),
            ));
        }
    }

    /// Pushes `event` on a joined `topic`; its reply comes back with `tag`.
    /// Returns whether it was sent: nothing is sent on a topic not joined,
    /// since the server would refuse it.
    pub fn push<P: Serialize>(&mut self, topic: Topic, event: &str, payload: &P, tag: T) -> bool {
        if !self.is_joined(topic) {
            return false;
        }
        let join_ref = self.topics.get(&topic).and_then(|m| m.join_ref.clone());
        let msg_ref = self.take_ref();
        self.send(Frame::with_payload(
            join_ref,
            Some(msg_ref.clone()),
            topic.to_string(),
            event,
            payload,
        ));
        self.waiting.insert(msg_ref, Waiting::Push(tag));
        true
    }

    fn send_join(&mut self, topic: Topic) {
        let msg_ref = self.take_ref();
        let Some(membership) = self.topics.get_mut(&topic) else {
            return;
        };
        membership.join_ref = Some(msg_ref.clone());
        membership.joined = false;
        let frame = Frame::new(
            Some(msg_ref.clone()),
            Some(msg_ref.clone()),
            topic.to_string(),
            event::JOIN,
            membership.payload.clone(),
        );
        self.waiting.insert(msg_ref, Waiting::Join(topic));
        self.send(frame);
    }

    fn send(&mut self, frame: Frame) {
        self.transmits.push_back(Transmit::Send(frame));
    }

    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn reset_link(&mut self) {
        self.waiting.clear();
        self.heartbeat_ref = None;
        for membership in self.topics.values_mut() {
            membership.joined = false;
            membership.join_ref = None;
        }
    }

    /// `cause` is reported only if the link was up.
    fn schedule_retry(&mut self, now: Duration, cause: LinkLoss) {
        let was_up = matches!(self.link, Link::Up { .. });
        self.reset_link();
        // Half to all of the backoff, at random: after a server restart,
        // every peer would otherwise knock at the same instants.
        let fraction = 0.5 + 0.5 * self.rng.unit();
        self.link = Link::Down {
            retry_at: now + self.backoff.mul_f64(fraction),
        };
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
        if was_up {
            self.events.push_back(SessionEvent::Disconnected(cause));
        }
    }
}

/// The jitter's generator: tiny, seeded by the shell, reproducible in tests.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
