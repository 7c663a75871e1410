//! The peer's whole logic, sans-IO, for the browser and the native peer
//! alike: a [`Session`] to the server, the pages this peer hosts (each with
//! its uploads, see [`hosting`]) and the pages it is fetching (each a
//! [`Fetch`], see [`fetching`]).
//!
//! ```text
//!   shell                                  Client                     shell
//!   ─────                                  ──────                     ─────
//!   socket open/frame/close ─► on_connected, on_frame, on_disconnected
//!   peer connection events ─► on_rtc(conn, RtcEvent)      ┌─► poll_output():
//!   user: share, fetch     ─► share, unshare, fetch       │    Socket(Connect | Send | Close)
//!   timer at next_deadline ─► handle_timeout(now) ────────┤    OpenRtc / SignalRtc /
//!                                                          │    SendPage / CloseRtc
//!                                                          └─►  Event(…) for the app
//! ```
//!
//! Every input takes `now` (a `Duration` since the shell's epoch); the
//! jitter's randomness is a seed given at construction. Nothing here reads
//! a clock, draws a random number or touches a socket, so every path is
//! tested faster than real time (see `tests.rs`).

mod fetching;
mod hosting;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::fetch::{FetchConfig, FetchFailure, Transport};
use crate::frame::event;
use crate::hash::PageHash;
use crate::page::Page;
use crate::path::Path;
use crate::protocol::{IceServer, JoinReply, PeerId, SignalBody, VisitorsCount};
use crate::session::{LinkLoss, Refusal, Session, SessionConfig, SessionEvent, Transmit};
use crate::topic::{Role, Topic};

use fetching::FetchRun;
use hosting::Hosted;

/// How a client behaves; the shells expose these as settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub session: SessionConfig,
    /// How fetches behave. `fetch.webrtc = false` makes this peer relay-only
    /// on both sides: it asks for relayed pages and serves by relay.
    pub fetch: FetchConfig,
    /// Most WebRTC uploads at once; more visitors are served by relay so
    /// that nobody queues behind a busy host.
    pub max_uploads: usize,
    /// An upload whose channel has not opened by then is abandoned: the
    /// visitor gave up on it long before (it waits
    /// [`FetchConfig::rtc_timeout`]).
    pub upload_open_timeout: Duration,
    /// An upload still open after this long is abandoned: the visitor
    /// closes the connection once it has verified the page.
    pub upload_max: Duration,
    /// Signals from a host that arrive before the server's reply naming it
    /// are kept, at most this many, and replayed once it is named.
    pub max_early_signals: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            fetch: FetchConfig::default(),
            max_uploads: 16,
            upload_open_timeout: Duration::from_secs(30),
            upload_max: Duration::from_secs(120),
            max_early_signals: 64,
        }
    }
}

/// One peer connection, as the core names it to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rtc#{}", self.0)
    }
}

/// Which end of the negotiation a peer connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host: it creates the data channel and sends the offer.
    Offer,
    /// The visitor: it answers the host's offer.
    Answer,
}

/// What happened on a peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcEvent {
    /// A local description or candidate to send to the other side.
    Signal(SignalBody),
    /// The data channel opened.
    Open,
    /// Which way the open channel goes, once WebRTC's stats say.
    Path(Option<Path>),
    Text(String),
    Binary(Vec<u8>),
    /// The whole page was handed to the channel (host side).
    Sent,
    /// The connection closed or failed; `reason` is for logs.
    Closed(String),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Socket(Transmit),
    /// Create a peer connection; with [`Side::Offer`], create its data
    /// channel and start the offer.
    OpenRtc {
        conn: ConnId,
        side: Side,
        /// The server's STUN/TURN servers, from its join replies.
        ice_servers: Vec<IceServer>,
    },
    /// Apply the other side's description or candidate, in order.
    SignalRtc {
        conn: ConnId,
        body: SignalBody,
    },
    /// Send the page over the open channel, then report [`RtcEvent::Sent`].
    SendPage {
        conn: ConnId,
        page: Page,
    },
    /// Close the peer connection and forget it; asked for every connection
    /// the core opened, also after it reported [`RtcEvent::Closed`]. No
    /// more events are wanted from it but one: a [`RtcEvent::Path`] asked
    /// for before the close, so a page delivered before WebRTC's stats
    /// answered still gets its path reported.
    CloseRtc {
        conn: ConnId,
    },
    Event(Event),
}

/// What the app may want to show, count or log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Online,
    Offline(LinkLoss),
    /// The server accepted this peer as a host of the page.
    Hosting(PageHash),
    /// The server refused to let this peer host the page.
    ShareRefused {
        hash: PageHash,
        refusal: Refusal,
    },
    Count {
        hash: PageHash,
        count: VisitorsCount,
    },
    /// A fetch's phase or bytes changed; see [`Client::fetch_progress`].
    Progress(PageHash),
    Delivered(Delivered),
    /// A fetch ended without the page.
    FetchEnded {
        hash: PageHash,
        error: FetchError,
    },
    /// Which way a page delivered before WebRTC's stats answered came.
    PathKnown {
        hash: PageHash,
        path: Path,
    },
    /// An upload ended; `delivered`: the page was sent in full.
    UploadEnded {
        hash: PageHash,
        visitor: PeerId,
        transport: Transport,
        delivered: bool,
    },
    /// The server refused something this peer pushed: nothing to undo (the
    /// other side's own timeout asks again), said for the logs.
    PushRefused {
        hash: PageHash,
        event: &'static str,
        refusal: Refusal,
    },
    /// Something from the server or a peer was ignored, and why; for logs.
    Ignored {
        hash: PageHash,
        what: String,
    },
}

/// A page fetched and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub hash: PageHash,
    /// Verified as it arrived, and not hashed again.
    pub page: Page,
    pub transport: Transport,
    /// Direct, through TURN, or the server's relay; `None` while WebRTC's
    /// stats have not said ([`Event::PathKnown`] follows then).
    pub path: Option<Path>,
    /// The host that served it, when known.
    pub host: Option<PeerId>,
    /// `content_request`s sent, the first one included.
    pub requests: u32,
    /// From the fetch's start: the server first named a host…
    pub routed: Option<Duration>,
    /// …the data channel that delivered (or the last one) opened…
    pub channel_open: Option<Duration>,
    /// …and the verified bytes were in hand.
    pub total: Duration,
}

/// Why a fetch ended without the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the page is gone: nobody hosts it any more")]
    Gone,
    #[error(transparent)]
    Failed(#[from] FetchFailure),
    #[error("the server refused: {0}")]
    Refused(Refusal),
    #[error("the peer has stopped")]
    Stopped,
}

/// Why a fetch could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("this peer is already fetching that page")]
    AlreadyFetching,
    #[error("this peer already hosts that page")]
    AlreadyHosted,
}

/// The link to the server, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub online: bool,
    /// Successful connections so far; above 1 after a reconnect.
    pub connections: u64,
    /// The id the server gave the current connection.
    pub peer_id: Option<PeerId>,
    /// Pages the server accepts this peer as a host of, on this link.
    pub hosting: usize,
    /// The largest page the server relays, from its latest join reply.
    pub max_relay_bytes: Option<usize>,
}

/// What a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// The `seq`-th `content_request` of a fetch: replies to older ones
    /// are stale.
    Request { hash: PageHash, seq: u64 },
    /// `content`, `content_unavailable` or `signal`, pushed on `hash`.
    Push { hash: PageHash, event: &'static str },
}

/// Who a peer connection belongs to.
#[derive(Debug, Clone, Copy)]
struct ConnOwner {
    hash: PageHash,
    side: Side,
}

/// A peer: what it hosts, what it fetches, and its session to the server.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    session: Session<Tag>,
    hosted: HashMap<PageHash, Hosted>,
    fetches: HashMap<PageHash, FetchRun>,
    conns: HashMap<ConnId, ConnOwner>,
    next_conn: u64,
    /// Pages delivered over a channel before its path was known.
    awaiting_path: HashMap<ConnId, PageHash>,
    ice_servers: Vec<IceServer>,
    status: Status,
    outputs: VecDeque<Output>,
}

impl Client {
    /// A client that connects at once: the first output is
    /// [`Transmit::Connect`]. `seed` drives the reconnect jitter.
    pub fn new(config: ClientConfig, seed: u64, now: Duration) -> Self {
        let mut client = Self {
            session: Session::new(config.session.clone(), seed, now),
            config,
            hosted: HashMap::new(),
            fetches: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 0,
            awaiting_path: HashMap::new(),
            ice_servers: Vec::new(),
            status: Status::default(),
            outputs: VecDeque::new(),
        };
        client.pump(now);
        client
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Client::handle_timeout`] next has something to do.
    pub fn next_deadline(&self) -> Duration {
        let fetches = self.fetches.values().filter_map(FetchRun::next_deadline);
        let uploads = self
            .hosted
            .values()
            .filter_map(|h| h.next_deadline(&self.config));
        fetches
            .chain(uploads)
            .fold(self.session.next_deadline(), Duration::min)
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.session.handle_timeout(now);
        self.pump(now);
        let hashes: Vec<PageHash> = self.fetches.keys().copied().collect();
        for hash in hashes {
            if let Some(run) = self.fetches.get_mut(&hash) {
                run.fetch.on_tick(now);
            }
            self.drive(hash, now);
        }
        self.expire_uploads(now);
    }

    // ---- the socket ----

    pub fn on_connected(&mut self, now: Duration) {
        self.session.on_connected(now);
        self.pump(now);
    }

    pub fn on_connect_failed(&mut self, now: Duration) {
        self.session.on_connect_failed(now);
        self.pump(now);
    }

    pub fn on_disconnected(&mut self, now: Duration) {
        self.session.on_disconnected(now);
        self.pump(now);
    }

    /// A frame from the server. The shell parses the text (a frame that
    /// does not parse is the shell's to log and drop: one bad frame must not
    /// end the session).
    pub fn on_frame(&mut self, frame: crate::frame::Frame, now: Duration) {
        self.session.on_frame(frame);
        self.pump(now);
    }

    /// Drops the socket as if the network failed; the client reconnects.
    pub fn drop_link(&mut self, now: Duration) {
        self.session.drop_link(now);
        self.pump(now);
    }

    /// Ends everything: fetches end with [`FetchError::Stopped`], every
    /// peer connection and the socket close, nothing reconnects.
    pub fn shutdown(&mut self) {
        let hashes: Vec<PageHash> = self.fetches.keys().copied().collect();
        for hash in hashes {
            if let Some(mut run) = self.fetches.remove(&hash) {
                self.close_fetch_conn(&mut run);
                self.emit(Event::FetchEnded {
                    hash,
                    error: FetchError::Stopped,
                });
            }
        }
        let hashes: Vec<PageHash> = self.hosted.keys().copied().collect();
        for hash in hashes {
            self.unshare(hash);
        }
        self.session.shutdown();
        self.status.online = false;
        self.status.peer_id = None;
        self.status.hosting = 0;
        self.pump(Duration::ZERO);
    }

    // ---- everything the session said ----

    /// Moves the session's transmits out and acts on its events.
    fn pump(&mut self, now: Duration) {
        loop {
            while let Some(transmit) = self.session.poll_transmit() {
                self.outputs.push_back(Output::Socket(transmit));
            }
            let Some(event) = self.session.poll_event() else {
                break;
            };
            match event {
                SessionEvent::Connected => {
                    self.status.online = true;
                    self.status.connections += 1;
                    self.status.hosting = 0;
                    self.emit(Event::Online);
                }
                SessionEvent::Disconnected(cause) => {
                    self.status.online = false;
                    self.status.peer_id = None;
                    self.status.hosting = 0;
                    self.emit(Event::Offline(cause));
                }
                SessionEvent::Joined {
                    topic,
                    reply,
                    rejoin,
                } => self.on_joined(topic, reply, rejoin, now),
                SessionEvent::JoinRefused { topic, refusal } => match topic.role {
                    Role::Have => self.on_share_refused(topic.hash, refusal),
                    Role::Want => self.end_fetch(topic.hash, FetchError::Refused(refusal)),
                },
                SessionEvent::Reply { tag, result } => self.on_reply(tag, result, now),
                SessionEvent::Push { topic, frame } => self.on_push(topic, &frame, now),
            }
        }
    }

    fn on_joined(&mut self, topic: Topic, reply: JoinReply, rejoin: bool, now: Duration) {
        for server in &reply.ice_servers {
            if !self.ice_servers.contains(server) {
                self.ice_servers.push(server.clone());
            }
        }
        // Every reply says it; after a reconnect it may be another server.
        self.status.max_relay_bytes = reply.max_relay_bytes;
        self.status.peer_id = Some(reply.peer_id);
        self.emit(Event::Count {
            hash: topic.hash,
            count: VisitorsCount {
                count: reply.count,
                waiting: reply.waiting,
            },
        });
        match topic.role {
            Role::Have => self.on_hosting(topic.hash),
            Role::Want => self.on_want_joined(topic.hash, rejoin, now),
        }
    }

    fn on_reply(
        &mut self,
        tag: Tag,
        result: Result<serde_json::Map<String, serde_json::Value>, Refusal>,
        now: Duration,
    ) {
        match tag {
            Tag::Request { hash, seq } => self.on_request_reply(hash, seq, result, now),
            Tag::Push { hash, event } => {
                if let Err(refusal) = result {
                    self.emit(Event::PushRefused {
                        hash,
                        event,
                        refusal,
                    });
                }
            }
        }
    }

    fn on_push(&mut self, topic: Topic, frame: &crate::frame::Frame, now: Duration) {
        let hash = topic.hash;
        match (topic.role, frame.event.as_str()) {
            (_, event::VISITORS_COUNT) => match frame.payload_as::<VisitorsCount>() {
                Ok(count) => self.emit(Event::Count { hash, count }),
                Err(error) => self.ignored(hash, error),
            },
            (_, event::SIGNAL) => match frame.payload_as() {
                Ok(signal) => match topic.role {
                    Role::Have => self.on_signal_as_host(hash, signal),
                    Role::Want => self.on_signal_as_visitor(hash, signal),
                },
                Err(error) => self.ignored(hash, error),
            },
            (Role::Have, event::CONTENT_REQUEST) => match frame.payload_as() {
                Ok(request) => self.on_host_request(hash, request, now),
                Err(error) => self.ignored(hash, error),
            },
            (Role::Want, event::CONTENT) => match frame.payload_as() {
                Ok(part) => self.on_relay_part(hash, part, now),
                Err(error) => self.ignored(hash, error),
            },
            (Role::Want, event::CONTENT_UNAVAILABLE) => match frame.payload_as() {
                Ok(unavailable) => self.on_content_unavailable(hash, unavailable, now),
                Err(error) => self.ignored(hash, error),
            },
            (_, other) => self.ignored(hash, format!("a {other} push")),
        }
    }

    // ---- peer connections ----

    /// Something happened on peer connection `conn`.
    pub fn on_rtc(&mut self, conn: ConnId, event: RtcEvent, now: Duration) {
        if let RtcEvent::Path(path) = &event
            && let Some(hash) = self.awaiting_path.remove(&conn)
        {
            if let Some(path) = *path {
                self.emit(Event::PathKnown { hash, path });
            }
            return;
        }
        let Some(owner) = self.conns.get(&conn).copied() else {
            // A late event from a connection already closed.
            return;
        };
        match owner.side {
            Side::Offer => self.on_upload_event(owner.hash, conn, event, now),
            Side::Answer => self.on_fetch_event(owner.hash, conn, event, now),
        }
    }

    fn open_rtc(&mut self, hash: PageHash, side: Side) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.conns.insert(conn, ConnOwner { hash, side });
        self.outputs.push_back(Output::OpenRtc {
            conn,
            side,
            ice_servers: self.ice_servers.clone(),
        });
        conn
    }

    fn close_rtc(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.outputs.push_back(Output::CloseRtc { conn });
        }
    }

    /// Pushes a `signal` to `to` on `topic`.
    fn send_signal(&mut self, topic: Topic, to: PeerId, body: SignalBody) {
        let signal = crate::protocol::SignalTo { to, body };
        let tag = Tag::Push {
            hash: topic.hash,
            event: event::SIGNAL,
        };
        self.session.push(topic, event::SIGNAL, &signal, tag);
        self.flush();
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn ignored(&mut self, hash: PageHash, what: impl fmt::Display) {
        self.emit(Event::Ignored {
            hash,
            what: what.to_string(),
        });
    }

    /// Moves frames the session has queued to the outputs, in order.
    fn flush(&mut self) {
        while let Some(transmit) = self.session.poll_transmit() {
            self.outputs.push_back(Output::Socket(transmit));
        }
    }
}
