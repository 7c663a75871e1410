//! A running peer: one websocket to the server, the pages it hosts and the
//! pages it is fetching. [`Peer`] is the handle; an actor task owns all the
//! state and is the only thing that touches the websocket.
//!
//! ```text
//!  Peer (handle) ── Command ──►┐
//!  server frames ─────────────►│ Actor: refs, joins, Fetch machines,
//!  uploads / visitor sessions ►│ host decisions, heartbeat, reconnect
//!  timers (deadlines) ────────►┘   │
//!                                  ├─► frames to the server
//!                                  └─► upload tasks (one per visitor),
//!                                      visitor session tasks (one per host)
//! ```
//!
//! The visitor flow is `ephemeral_shared::Fetch`; the host's choice is
//! `ephemeral_shared::host::Uploads`. This module only moves their inputs
//! and outputs between the network and the machines.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ephemeral_shared::frame::event;
use ephemeral_shared::host::{HostAction, Uploads, fits_relay};
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::{
    Content, ContentRequest, ContentUnavailable, ContentUnavailableFrom, HostRequest, IceServer,
    JoinPayload, JoinReply, NO_HOSTS, Reason, RequestRouted, SignalBody, SignalFrom, SignalTo,
    VisitorsCount,
};
use ephemeral_shared::{
    Fetch, FetchAction, FetchConfig, FetchFailure, Frame, PageHash, PeerId, Phase, Role, Topic,
    Transport,
};
use serde_json::Map;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rtc::{RtcSettings, Session, SessionEvent};
use crate::signaling::{self, ConnectError, FrameReceiver, FrameSender};

/// How a peer behaves. [`PeerConfig::new`] gives the defaults for a server.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// `ws://host:port/ws/websocket?vsn=2.0.0`.
    pub server: String,
    /// How WebRTC connections are built (bind address, ICE servers, pacing).
    pub rtc: RtcSettings,
    /// How fetches behave. `fetch.webrtc = false` makes this peer relay-only
    /// on both sides: it asks for relayed pages and serves by relay.
    pub fetch: FetchConfig,
    /// Most WebRTC uploads this peer runs at once; more visitors are served
    /// by relay so that nobody queues behind a busy host.
    pub max_uploads: usize,
    /// How long one upload may take in all, negotiation included, before it
    /// is abandoned (the visitor will have asked someone else by then).
    pub upload_timeout: Duration,
    /// How long to wait for the websocket handshake.
    pub connect_timeout: Duration,
    /// Heartbeat period; the server closes sockets silent for 60 s, and a
    /// heartbeat unanswered by the next one means the link is dead.
    pub heartbeat_interval: Duration,
    /// First delay before reconnecting after the server went away; doubles
    /// on each failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl PeerConfig {
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            rtc: RtcSettings::default(),
            fetch: FetchConfig::default(),
            max_uploads: 16,
            upload_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Why a peer could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: ConnectError,
    },
    #[error("pages are UTF-8 text, and this is not valid UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("the peer has stopped")]
    Stopped,
}

/// Why a fetch ended without the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the page is gone: nobody hosts it any more")]
    Gone,
    #[error(transparent)]
    Failed(#[from] FetchFailure),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("this peer is already fetching that page")]
    AlreadyFetching,
    #[error("this peer already hosts that page")]
    AlreadyHosted,
    #[error("the peer has stopped")]
    Stopped,
}

/// How long the steps of a fetch took, from the moment it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTimings {
    /// The server first named a host.
    pub routed: Option<Duration>,
    /// The data channel that delivered (or the last one) opened.
    pub channel_open: Option<Duration>,
    /// Verified bytes in hand: time to content.
    pub total: Duration,
}

/// A page fetched and verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub hash: PageHash,
    pub page: Vec<u8>,
    /// How the bytes arrived.
    pub transport: Transport,
    /// Which way exactly: direct, through TURN, or the server's relay;
    /// `None` when WebRTC's stats did not say.
    pub path: Option<Path>,
    /// The host that served them, when known.
    pub host: Option<PeerId>,
    /// `content_request`s sent, the first one included.
    pub requests: u32,
    pub timings: FetchTimings,
}

/// Where a fetch stands, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    pub phase: Phase,
    /// Bytes received over the current data channel, and the announced size.
    pub received: usize,
    pub size: Option<usize>,
}

/// Options of one fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Keep hosting the page after it arrives (the default for visitors).
    pub host_after: bool,
    /// Receives progress while the fetch runs.
    pub progress: Option<watch::Sender<FetchProgress>>,
}

impl FetchOptions {
    /// Fetch, then host the page.
    pub fn hosting() -> Self {
        Self {
            host_after: true,
            progress: None,
        }
    }
}

/// The peer's connection to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStatus {
    /// Whether the websocket is up.
    pub online: bool,
    /// Successful connections so far; above 1 after a reconnect.
    pub connections: u64,
    /// The id the server gave the current connection.
    pub peer_id: Option<PeerId>,
    /// `have:` topics joined on the current connection.
    pub hosting: usize,
    /// The largest page the server relays, in bytes, from its latest join
    /// reply; `None` until then, or from a server that does not say.
    pub max_relay_bytes: Option<usize>,
}

/// Uploads this peer has completed, by transport.
#[derive(Debug, Default)]
pub struct ServedCounters {
    webrtc: AtomicU64,
    relay: AtomicU64,
}

impl ServedCounters {
    pub fn webrtc(&self) -> u64 {
        self.webrtc.load(Ordering::Relaxed)
    }

    pub fn relay(&self) -> u64 {
        self.relay.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.webrtc() + self.relay()
    }
}

/// A handle on a running peer. Dropping it stops the peer.
pub struct Peer {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<PeerStatus>,
    served: Arc<ServedCounters>,
    task: Option<JoinHandle<()>>,
}

enum Command {
    Share {
        page: Arc<Vec<u8>>,
        reply: oneshot::Sender<Result<PageHash, PeerError>>,
    },
    Unshare {
        hash: PageHash,
        reply: oneshot::Sender<()>,
    },
    Fetch {
        hash: PageHash,
        options: FetchOptions,
        reply: oneshot::Sender<Result<Fetched, FetchError>>,
    },
    WatchCount {
        hash: PageHash,
        reply: oneshot::Sender<watch::Receiver<Option<VisitorsCount>>>,
    },
    DropLink,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Peer {
    /// Connects to the server. Fails at once if it cannot be reached; once
    /// connected, the peer reconnects on its own whenever the link drops.
    pub async fn connect(config: PeerConfig) -> Result<Peer, PeerError> {
        let (sender, receiver) = signaling::connect(&config.server, config.connect_timeout)
            .await
            .map_err(|source| PeerError::Unreachable {
                url: config.server.clone(),
                source,
            })?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(PeerStatus::default());
        let served = Arc::new(ServedCounters::default());
        let mut actor = Actor {
            backoff: config.reconnect_min,
            config,
            link: None,
            connecting: false,
            reconnect_at: None,
            next_ref: 0,
            next_task_id: 0,
            pending: HashMap::new(),
            hosted: HashMap::new(),
            fetches: HashMap::new(),
            counts: HashMap::new(),
            server_ice: Vec::new(),
            max_relay_bytes: None,
            heartbeat_at: Instant::now(),
            heartbeat_outstanding: None,
            internal,
            status: status_tx,
            served: served.clone(),
            arrived_by: HashMap::new(),
        };
        actor.on_connected(sender);
        let task = tokio::spawn(actor.run(receiver, commands_rx, internal_rx));
        Ok(Peer {
            commands,
            status,
            served,
            task: Some(task),
        })
    }

    /// Connects `n` peers with the same configuration: a swarm in one
    /// process, for tests and benchmarks.
    pub async fn connect_many(config: &PeerConfig, n: usize) -> Result<Vec<Peer>, PeerError> {
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            peers.push(Peer::connect(config.clone()).await?);
        }
        Ok(peers)
    }

    /// Hosts a page (UTF-8 text). Returns its address once the server has
    /// accepted this peer as a host.
    pub async fn share(&self, page: Vec<u8>) -> Result<PageHash, PeerError> {
        std::str::from_utf8(&page)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Share {
            page: Arc::new(page),
            reply,
        })?;
        rx.await.map_err(|_| PeerError::Stopped)?
    }

    /// Stops hosting a page.
    pub async fn unshare(&self, hash: PageHash) -> Result<(), PeerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Unshare { hash, reply })?;
        rx.await.map_err(|_| PeerError::Stopped)
    }

    /// Fetches and verifies a page, then hosts it.
    pub async fn fetch(&self, hash: PageHash) -> Result<Fetched, FetchError> {
        self.fetch_with(hash, FetchOptions::hosting()).await
    }

    /// Fetches and verifies a page with explicit options.
    pub async fn fetch_with(
        &self,
        hash: PageHash,
        options: FetchOptions,
    ) -> Result<Fetched, FetchError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Fetch {
            hash,
            options,
            reply,
        })
        .map_err(|_| FetchError::Stopped)?;
        rx.await.map_err(|_| FetchError::Stopped)?
    }

    /// Live host and visitor counts of a page this peer hosts or fetches;
    /// `None` until the server has said.
    pub async fn watch_count(
        &self,
        hash: PageHash,
    ) -> Result<watch::Receiver<Option<VisitorsCount>>, PeerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::WatchCount { hash, reply })?;
        rx.await.map_err(|_| PeerError::Stopped)
    }

    /// The connection's state, live.
    pub fn status(&self) -> watch::Receiver<PeerStatus> {
        self.status.clone()
    }

    /// Uploads completed by this peer.
    pub fn served(&self) -> &ServedCounters {
        &self.served
    }

    /// Drops the websocket as if the network failed; the peer reconnects.
    pub fn drop_link(&self) {
        let _ = self.send(Command::DropLink);
    }

    /// Stops hosting and fetching, closes every connection and waits for it.
    pub async fn shutdown(mut self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn send(&self, command: Command) -> Result<(), PeerError> {
        self.commands.send(command).map_err(|_| PeerError::Stopped)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the helper tasks tell the actor.
enum Internal {
    Connected(Result<(FrameSender, FrameReceiver), ConnectError>),
    /// A signal an upload or visitor session wants delivered.
    Signal {
        topic: Topic,
        to: PeerId,
        body: SignalBody,
    },
    /// Which way a visitor session's channel carries bytes, known when it
    /// opens; sent before the open event itself.
    VisitorPath {
        hash: PageHash,
        task: u64,
        path: Option<Path>,
    },
    UploadDone {
        hash: PageHash,
        visitor: PeerId,
        task: u64,
        delivered: bool,
    },
    Visitor {
        hash: PageHash,
        task: u64,
        event: SessionEvent,
    },
}

/// A reply the actor is waiting for, by ref.
enum Pending {
    Join(Topic),
    ContentRequest(PageHash),
    /// A relayed page (`content`) or a refusal to relay one
    /// (`content_unavailable`) sent to `visitor`.
    Relay {
        hash: PageHash,
        visitor: PeerId,
        event: &'static str,
    },
    Heartbeat,
}

/// A page this peer hosts.
struct Hosted {
    page: Arc<Vec<u8>>,
    uploads: Uploads,
    active: HashMap<PeerId, TaskLink>,
    joined: bool,
    /// `share` calls waiting for the join.
    waiters: Vec<oneshot::Sender<Result<PageHash, PeerError>>>,
}

/// A task serving one visitor or receiving from one host.
struct TaskLink {
    id: u64,
    signals: mpsc::UnboundedSender<SignalBody>,
    task: JoinHandle<()>,
}

impl Drop for TaskLink {
    fn drop(&mut self) {
        // The task owns the peer connection; aborting it closes it.
        self.task.abort();
    }
}

/// A page this peer is fetching.
struct FetchRun {
    fetch: Fetch,
    started: Instant,
    options: FetchOptions,
    reply: Option<oneshot::Sender<Result<Fetched, FetchError>>>,
    joined: bool,
    /// Whether the want topic was ever joined; a later join is a rejoin.
    ever_joined: bool,
    /// The ref of the latest `content_request`: replies to older ones are
    /// stale and ignored.
    request_ref: Option<String>,
    /// A request made while not joined, sent on join.
    unsent_request: Option<ContentRequest>,
    session: Option<(PeerId, TaskLink)>,
    /// Which way the current session's channel goes, once open.
    path: Option<Path>,
    requests: u32,
    routed: Option<Duration>,
    channel_open: Option<Duration>,
}

struct Actor {
    config: PeerConfig,
    /// The websocket, while up.
    link: Option<FrameSender>,
    /// A connection attempt is under way.
    connecting: bool,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    next_ref: u64,
    next_task_id: u64,
    pending: HashMap<String, Pending>,
    hosted: HashMap<PageHash, Hosted>,
    fetches: HashMap<PageHash, FetchRun>,
    counts: HashMap<PageHash, watch::Sender<Option<VisitorsCount>>>,
    /// ICE servers from the server's join replies.
    server_ice: Vec<IceServer>,
    /// The server's relay limit, from its latest join reply.
    max_relay_bytes: Option<usize>,
    heartbeat_at: Instant,
    /// The ref of a heartbeat not yet answered.
    heartbeat_outstanding: Option<String>,
    internal: mpsc::UnboundedSender<Internal>,
    status: watch::Sender<PeerStatus>,
    served: Arc<ServedCounters>,
    /// Which way a fetched page came, said on its first join of `have:`.
    arrived_by: HashMap<PageHash, Path>,
}

async fn next_frame(receiver: &mut Option<FrameReceiver>) -> Option<Frame> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(
        mut self,
        receiver: FrameReceiver,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut receiver = Some(receiver);
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                frame = next_frame(&mut receiver) => match frame {
                    Some(frame) => self.on_frame(frame),
                    None => self.on_disconnected(),
                },
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.stop();
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(message) = internal.recv() => match message {
                    Internal::Connected(Ok((sender, new_receiver))) => {
                        receiver = Some(new_receiver);
                        self.on_connected(sender);
                    }
                    other => self.on_internal(other),
                },
                () = tokio::time::sleep_until(wake) => self.on_timer(),
            }
            if self.link.is_none() {
                receiver = None;
            }
        }
        self.stop();
    }

    fn next_wakeup(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if self.link.is_some() {
            wake = wake.min(self.heartbeat_at);
        }
        if let Some(at) = self.reconnect_at.filter(|_| !self.connecting) {
            wake = wake.min(at);
        }
        for run in self.fetches.values() {
            if let Some(deadline) = run.fetch.next_deadline() {
                wake = wake.min(run.started + deadline);
            }
        }
        wake
    }

    // ---- the link ------------------------------------------------------

    fn on_connected(&mut self, sender: FrameSender) {
        tracing::debug!(server = %self.config.server, "connected");
        self.connecting = false;
        self.reconnect_at = None;
        self.backoff = self.config.reconnect_min;
        self.link = Some(sender);
        self.heartbeat_at = Instant::now() + self.config.heartbeat_interval;
        self.heartbeat_outstanding = None;
        self.status.send_modify(|status| {
            status.online = true;
            status.connections += 1;
            status.hosting = 0;
        });
        let topics: Vec<Topic> = self
            .hosted
            .keys()
            .map(|hash| Topic::have(*hash))
            .chain(self.fetches.keys().map(|hash| Topic::want(*hash)))
            .collect();
        for topic in topics {
            self.join(topic);
        }
    }

    fn on_disconnected(&mut self) {
        if self.link.take().is_none() {
            return;
        }
        tracing::info!(server = %self.config.server, "lost the server; reconnecting");
        self.pending.clear();
        self.heartbeat_outstanding = None;
        for hosted in self.hosted.values_mut() {
            hosted.joined = false;
        }
        for run in self.fetches.values_mut() {
            run.joined = false;
            run.request_ref = None;
        }
        self.status.send_modify(|status| {
            status.online = false;
            status.peer_id = None;
            status.hosting = 0;
        });
        self.schedule_reconnect();
    }

    fn schedule_reconnect(&mut self) {
        // Half to all of the backoff, at random: after a server restart,
        // every peer would otherwise knock at the same instants.
        let delay = self.backoff.mul_f64(rand::random_range(0.5..=1.0));
        self.reconnect_at = Some(Instant::now() + delay);
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|at| at <= now) && !self.connecting {
            self.reconnect_at = None;
            self.connecting = true;
            let url = self.config.server.clone();
            let timeout = self.config.connect_timeout;
            let internal = self.internal.clone();
            tokio::spawn(async move {
                let result = signaling::connect(&url, timeout).await;
                let _ = internal.send(Internal::Connected(result));
            });
        }
        if self.link.is_some() && self.heartbeat_at <= now {
            if self.heartbeat_outstanding.is_some() {
                tracing::info!("heartbeat unanswered; dropping the link");
                self.drop_link();
            } else {
                let msg_ref = self.next_ref();
                let frame = Frame::heartbeat(msg_ref.clone());
                self.send_frame(&frame);
                self.pending.insert(msg_ref.clone(), Pending::Heartbeat);
                self.heartbeat_outstanding = Some(msg_ref);
                self.heartbeat_at = now + self.config.heartbeat_interval;
            }
        }
        let hashes: Vec<PageHash> = self.fetches.keys().copied().collect();
        for hash in hashes {
            if let Some(run) = self.fetches.get_mut(&hash) {
                let now = run.started.elapsed();
                run.fetch.on_tick(now);
            }
            self.drive(hash);
        }
    }

    fn drop_link(&mut self) {
        if let Some(link) = &self.link {
            link.close();
        }
        self.on_disconnected();
    }

    fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn send_frame(&mut self, frame: &Frame) {
        let sent = self.link.as_ref().is_some_and(|link| link.send(frame));
        if !sent && self.link.is_some() {
            self.on_disconnected();
        }
    }

    /// Pushes `event` on `topic`; returns the ref, if sent.
    fn push<P: serde::Serialize>(
        &mut self,
        topic: Topic,
        event: &str,
        payload: &P,
    ) -> Option<String> {
        self.link.as_ref()?;
        let msg_ref = self.next_ref();
        // Phoenix tolerates a push whose join_ref is absent; our topics are
        // identified by name, and a rejoin must not strand a late push.
        let frame = Frame::with_payload(
            None,
            Some(msg_ref.clone()),
            topic.to_string(),
            event,
            payload,
        );
        self.send_frame(&frame);
        Some(msg_ref)
    }

    fn join(&mut self, topic: Topic) {
        if self.link.is_none() {
            return;
        }
        let msg_ref = self.next_ref();
        // The first join of `have:` after a fetch says which way the page
        // came, so the server can count fetches by path.
        let payload = match topic.role {
            Role::Have => self
                .arrived_by
                .remove(&topic.hash)
                .map_or_else(Map::new, |path| {
                    ephemeral_shared::frame::to_object(&JoinPayload { path: Some(path) })
                }),
            Role::Want => Map::new(),
        };
        let frame = Frame::new(
            Some(msg_ref.clone()),
            Some(msg_ref.clone()),
            topic.to_string(),
            event::JOIN,
            payload,
        );
        self.pending.insert(msg_ref, Pending::Join(topic));
        self.send_frame(&frame);
    }

    fn leave(&mut self, topic: Topic) {
        let _ = self.push(topic, event::LEAVE, &Map::new());
    }

    fn rtc_settings(&self) -> RtcSettings {
        let mut settings = self.config.rtc.clone();
        for server in &self.server_ice {
            if !settings.ice_servers.contains(server) {
                settings.ice_servers.push(server.clone());
            }
        }
        settings
    }

    // ---- frames from the server ----------------------------------------

    fn on_frame(&mut self, frame: Frame) {
        if frame.event == event::REPLY {
            self.on_reply(frame);
            return;
        }
        let Ok(topic) = frame.topic.parse::<Topic>() else {
            tracing::debug!(topic = %frame.topic, event = %frame.event, "push on an unknown topic");
            return;
        };
        match (topic.role, frame.event.as_str()) {
            (Role::Have, event::CONTENT_REQUEST) => match frame.payload_as::<HostRequest>() {
                Ok(request) => self.on_host_request(topic.hash, request),
                Err(error) => tracing::debug!(%error, "bad content_request"),
            },
            (_, event::SIGNAL) => match frame.payload_as::<SignalFrom>() {
                Ok(signal) => self.on_signal(topic, signal),
                Err(error) => tracing::debug!(%error, "bad signal"),
            },
            (Role::Want, event::CONTENT) => match frame.payload_as::<Content>() {
                Ok(content) => self.on_relay_content(topic.hash, &content.content),
                Err(error) => tracing::debug!(%error, "bad content"),
            },
            (Role::Want, event::CONTENT_UNAVAILABLE) => {
                match frame.payload_as::<ContentUnavailableFrom>() {
                    Ok(unavailable) => self.on_content_unavailable(topic.hash, unavailable),
                    Err(error) => tracing::debug!(%error, "bad content_unavailable"),
                }
            }
            (_, event::VISITORS_COUNT) => {
                if let Ok(count) = frame.payload_as::<VisitorsCount>() {
                    self.set_count(topic.hash, count);
                }
            }
            (_, event::CLOSE | event::ERROR) => {
                // The server ended our membership; take it back if we
                // still want it.
                let still_wanted = match topic.role {
                    Role::Have => self.hosted.contains_key(&topic.hash),
                    Role::Want => self.fetches.contains_key(&topic.hash),
                };
                if still_wanted {
                    self.join(topic);
                }
            }
            (_, other) => tracing::debug!(event = other, "ignoring a push"),
        }
    }

    fn on_reply(&mut self, frame: Frame) {
        let Some(pending) = frame.msg_ref.as_ref().and_then(|r| self.pending.remove(r)) else {
            if let Some((status, response)) = frame.as_reply()
                && status != "ok"
            {
                tracing::debug!(topic = %frame.topic, ?response, "error reply");
            }
            return;
        };
        let Some((status, response)) = frame.as_reply() else {
            return;
        };
        let ok = status == "ok";
        let response = serde_json::Value::Object(response.clone());
        let reason = response
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("unknown")
            .to_string();
        match pending {
            Pending::Heartbeat => self.heartbeat_outstanding = None,
            Pending::Relay {
                hash,
                visitor,
                event,
            } => {
                if !ok {
                    let detail = response.get("detail").and_then(|d| d.as_str());
                    on_relay_refused(hash, visitor, event, &reason, detail);
                }
            }
            Pending::Join(topic) => {
                if ok {
                    match serde_json::from_value::<JoinReply>(response) {
                        Ok(reply) => self.on_joined(topic, reply),
                        Err(error) => tracing::warn!(%error, "unexpected join reply"),
                    }
                } else {
                    self.on_join_refused(topic, reason);
                }
            }
            Pending::ContentRequest(hash) => {
                let Some(run) = self.fetches.get_mut(&hash) else {
                    return;
                };
                if run.request_ref != frame.msg_ref {
                    return;
                }
                let now = run.started.elapsed();
                if ok {
                    match serde_json::from_value::<RequestRouted>(response) {
                        Ok(routed) => {
                            run.routed.get_or_insert(now);
                            run.fetch.on_routed(routed.host, now);
                        }
                        Err(error) => tracing::warn!(%error, "unexpected content_request reply"),
                    }
                } else if reason == NO_HOSTS {
                    run.fetch.on_no_hosts();
                } else {
                    // Rate limited or the like: the fetch's own deadline
                    // asks again.
                    tracing::debug!(%reason, "content_request refused");
                }
                self.drive(hash);
            }
        }
    }

    fn on_joined(&mut self, topic: Topic, reply: JoinReply) {
        for server in reply.ice_servers {
            if !self.server_ice.contains(&server) {
                self.server_ice.push(server);
            }
        }
        // Every reply says it; after a reconnect it may be another server.
        self.max_relay_bytes = reply.max_relay_bytes;
        self.status.send_modify(|status| {
            status.peer_id = Some(reply.peer_id);
            status.max_relay_bytes = reply.max_relay_bytes;
        });
        self.set_count(
            topic.hash,
            VisitorsCount {
                count: reply.count,
                waiting: reply.waiting,
            },
        );
        match topic.role {
            Role::Have => {
                let Some(hosted) = self.hosted.get_mut(&topic.hash) else {
                    // Unshared while the join was in flight.
                    self.leave(topic);
                    return;
                };
                hosted.joined = true;
                for waiter in hosted.waiters.drain(..) {
                    let _ = waiter.send(Ok(topic.hash));
                }
                let hosting = self.hosted.values().filter(|h| h.joined).count();
                self.status.send_modify(|status| status.hosting = hosting);
            }
            Role::Want => {
                let Some(run) = self.fetches.get_mut(&topic.hash) else {
                    self.leave(topic);
                    return;
                };
                run.joined = true;
                if run.ever_joined {
                    run.unsent_request = None;
                    let now = run.started.elapsed();
                    run.fetch.on_reconnected(now);
                }
                run.ever_joined = true;
                if let Some(request) = run.unsent_request.take() {
                    self.send_request(topic.hash, request);
                }
                self.drive(topic.hash);
            }
        }
    }

    fn on_join_refused(&mut self, topic: Topic, reason: String) {
        tracing::warn!(%topic, %reason, "join refused");
        match topic.role {
            Role::Have => {
                if let Some(hosted) = self.hosted.remove(&topic.hash) {
                    for waiter in hosted.waiters {
                        let _ = waiter.send(Err(PeerError::Refused(reason.clone())));
                    }
                }
            }
            Role::Want => {
                if let Some(mut run) = self.fetches.remove(&topic.hash)
                    && let Some(reply) = run.reply.take()
                {
                    let _ = reply.send(Err(FetchError::Refused(reason)));
                }
            }
        }
    }

    fn set_count(&mut self, hash: PageHash, count: VisitorsCount) {
        self.counts
            .entry(hash)
            .or_insert_with(|| watch::channel(None).0)
            .send_replace(Some(count));
    }

    // ---- hosting -------------------------------------------------------

    fn on_host_request(&mut self, hash: PageHash, request: HostRequest) {
        let settings = self.rtc_settings();
        let task_id = self.next_task_id();
        let Some(hosted) = self.hosted.get_mut(&hash) else {
            return;
        };
        // Whatever was under way for this visitor is superseded.
        hosted.active.remove(&request.from);
        let relayable = fits_relay(hosted.page.len(), self.max_relay_bytes);
        match hosted.uploads.on_request(&request, relayable) {
            HostAction::RelayUnavailable => {
                let refusal = ContentUnavailable {
                    to: request.from,
                    size: hosted.page.len() as u64,
                };
                tracing::debug!(%hash, visitor = %request.from, size = refusal.size, "too large to relay");
                self.push_relay(hash, request.from, event::CONTENT_UNAVAILABLE, &refusal);
            }
            HostAction::Relay => {
                let Ok(text) = std::str::from_utf8(&hosted.page) else {
                    tracing::warn!(%hash, "cannot relay a page that is not UTF-8");
                    return;
                };
                let content = Content {
                    content: text.to_string(),
                };
                tracing::debug!(%hash, visitor = %request.from, "serving by relay");
                if self.push_relay(hash, request.from, event::CONTENT, &content) {
                    self.served.relay.fetch_add(1, Ordering::Relaxed);
                }
            }
            HostAction::Offer => {
                tracing::debug!(%hash, visitor = %request.from, "serving over WebRTC");
                let (signals, signals_rx) = mpsc::unbounded_channel();
                let upload = Upload {
                    hash,
                    visitor: request.from,
                    task: task_id,
                    page: hosted.page.clone(),
                    settings,
                    timeout: self.config.upload_timeout,
                    internal: self.internal.clone(),
                    served: self.served.clone(),
                };
                let task = tokio::spawn(upload.run(signals_rx));
                hosted.active.insert(
                    request.from,
                    TaskLink {
                        id: task_id,
                        signals,
                        task,
                    },
                );
            }
        }
    }

    /// Pushes `content` or `content_unavailable` for `visitor` on
    /// `have:<hash>`, keeping its ref so that a refusal is logged; returns
    /// whether it was sent.
    fn push_relay<P: serde::Serialize>(
        &mut self,
        hash: PageHash,
        visitor: PeerId,
        event: &'static str,
        payload: &P,
    ) -> bool {
        let Some(msg_ref) = self.push(Topic::have(hash), event, payload) else {
            return false;
        };
        self.pending.insert(
            msg_ref,
            Pending::Relay {
                hash,
                visitor,
                event,
            },
        );
        true
    }

    fn next_task_id(&mut self) -> u64 {
        self.next_task_id += 1;
        self.next_task_id
    }

    fn on_signal(&mut self, topic: Topic, signal: SignalFrom) {
        match topic.role {
            Role::Have => {
                // Only the visitor this host is serving may negotiate.
                let Some(link) = self
                    .hosted
                    .get(&topic.hash)
                    .and_then(|hosted| hosted.active.get(&signal.from))
                else {
                    tracing::debug!(from = %signal.from, "signal from a visitor we do not serve");
                    return;
                };
                let _ = link.signals.send(signal.body);
            }
            Role::Want => self.on_visitor_signal(topic.hash, signal),
        }
    }

    fn host_page(&mut self, page: Arc<Vec<u8>>) -> PageHash {
        let hash = PageHash::of(&page);
        if !self.hosted.contains_key(&hash) {
            self.hosted.insert(
                hash,
                Hosted {
                    page,
                    uploads: Uploads::new(self.config.max_uploads, self.config.fetch.webrtc),
                    active: HashMap::new(),
                    joined: false,
                    waiters: Vec::new(),
                },
            );
            self.join(Topic::have(hash));
        }
        hash
    }

    // ---- fetching ------------------------------------------------------

    fn start_fetch(
        &mut self,
        hash: PageHash,
        options: FetchOptions,
        reply: oneshot::Sender<Result<Fetched, FetchError>>,
    ) {
        if self.fetches.contains_key(&hash) {
            let _ = reply.send(Err(FetchError::AlreadyFetching));
            return;
        }
        if self.hosted.contains_key(&hash) {
            let _ = reply.send(Err(FetchError::AlreadyHosted));
            return;
        }
        let fetch = Fetch::new(hash, self.config.fetch.clone(), Duration::ZERO);
        self.fetches.insert(
            hash,
            FetchRun {
                fetch,
                started: Instant::now(),
                options,
                reply: Some(reply),
                joined: false,
                ever_joined: false,
                request_ref: None,
                unsent_request: None,
                session: None,
                requests: 0,
                routed: None,
                channel_open: None,
                path: None,
            },
        );
        self.join(Topic::want(hash));
        self.drive(hash);
    }

    fn send_request(&mut self, hash: PageHash, request: ContentRequest) {
        let msg_ref = self.push(Topic::want(hash), event::CONTENT_REQUEST, &request);
        if let Some(msg_ref) = &msg_ref {
            self.pending
                .insert(msg_ref.clone(), Pending::ContentRequest(hash));
        }
        if let Some(run) = self.fetches.get_mut(&hash) {
            run.requests += 1;
            run.request_ref = msg_ref;
        }
    }

    /// Carries out everything the fetch machine asks for.
    fn drive(&mut self, hash: PageHash) {
        loop {
            let Some(run) = self.fetches.get_mut(&hash) else {
                return;
            };
            let Some(action) = run.fetch.poll() else {
                break;
            };
            match action {
                FetchAction::Request(request) => {
                    if run.joined && self.link.is_some() {
                        self.send_request(hash, request);
                    } else {
                        run.unsent_request = Some(request);
                    }
                }
                FetchAction::CloseRtc(host) => {
                    if run.session.as_ref().is_some_and(|(h, _)| *h == host) {
                        run.session = None;
                    }
                }
                FetchAction::Delivered {
                    page,
                    transport,
                    host,
                } => {
                    let path = match transport {
                        Transport::Relay => Some(Path::Relay),
                        Transport::WebRtc => run.path,
                    };
                    let fetched = Fetched {
                        hash,
                        page,
                        transport,
                        path,
                        host,
                        requests: run.requests,
                        timings: FetchTimings {
                            routed: run.routed,
                            channel_open: run.channel_open,
                            total: run.started.elapsed(),
                        },
                    };
                    tracing::info!(
                        %hash,
                        transport = transport.as_str(),
                        path = path.map_or("unknown", Path::as_str),
                        bytes = fetched.page.len(),
                        ms = fetched.timings.total.as_millis() as u64,
                        "page delivered"
                    );
                    self.finish_fetch(hash, Ok(fetched));
                    return;
                }
                FetchAction::Gone => {
                    self.finish_fetch(hash, Err(FetchError::Gone));
                    return;
                }
                FetchAction::Failed(failure) => {
                    self.finish_fetch(hash, Err(FetchError::Failed(failure)));
                    return;
                }
            }
        }
        self.report_progress(hash);
    }

    fn finish_fetch(&mut self, hash: PageHash, outcome: Result<Fetched, FetchError>) {
        let Some(mut run) = self.fetches.remove(&hash) else {
            return;
        };
        run.session = None;
        // Host before leaving want: the server frees the serving host's
        // slot on the leave, and the queued visitors it then routes should
        // find this new host already there.
        if let Ok(fetched) = &outcome
            && run.options.host_after
        {
            if let Some(path) = fetched.path {
                self.arrived_by.insert(hash, path);
            }
            self.host_page(Arc::new(fetched.page.clone()));
        }
        self.leave(Topic::want(hash));
        if let Some(progress) = &run.options.progress {
            let _ = progress.send(FetchProgress {
                phase: run.fetch.phase(),
                received: outcome.as_ref().map_or(0, |f| f.page.len()),
                size: outcome.as_ref().ok().map(|f| f.page.len()),
            });
        }
        if let Some(reply) = run.reply.take() {
            let _ = reply.send(outcome);
        }
    }

    fn report_progress(&self, hash: PageHash) {
        let Some(run) = self.fetches.get(&hash) else {
            return;
        };
        let Some(progress) = &run.options.progress else {
            return;
        };
        let (received, size) = match run.fetch.progress() {
            Some((received, size)) => (received, Some(size)),
            None => (0, None),
        };
        progress.send_if_modified(|current| {
            let next = FetchProgress {
                phase: run.fetch.phase(),
                received,
                size,
            };
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn on_visitor_signal(&mut self, hash: PageHash, signal: SignalFrom) {
        let settings = self.rtc_settings();
        let task_id = self.next_task_id();
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        // Only the host the server named may negotiate with us.
        if !run.fetch.accepts_signal_from(signal.from) {
            tracing::debug!(from = %signal.from, "signal from a peer that is not our host");
            return;
        }
        let fresh_offer = matches!(signal.body, SignalBody::Offer { .. });
        let current = run
            .session
            .as_ref()
            .filter(|(host, _)| *host == signal.from);
        match current {
            Some((_, link)) if !fresh_offer => {
                let _ = link.signals.send(signal.body);
            }
            _ if fresh_offer => {
                // A new offer starts a new connection (the host restarted
                // its upload); the old one, if any, is closed by the drop.
                let (signals, signals_rx) = mpsc::unbounded_channel();
                let _ = signals.send(signal.body);
                let task = tokio::spawn(visitor_session(
                    hash,
                    task_id,
                    settings,
                    signals_rx,
                    self.internal.clone(),
                ));
                run.session = Some((
                    signal.from,
                    TaskLink {
                        id: task_id,
                        signals,
                        task,
                    },
                ));
            }
            _ => tracing::debug!("candidate before any offer; dropped"),
        }
    }

    fn on_relay_content(&mut self, hash: PageHash, content: &str) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        let now = run.started.elapsed();
        run.fetch.on_relay_content(content, now);
        self.drive(hash);
    }

    fn on_content_unavailable(&mut self, hash: PageHash, unavailable: ContentUnavailableFrom) {
        let max_relay = self.max_relay_bytes;
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        let now = run.started.elapsed();
        run.fetch
            .on_content_unavailable(unavailable.from, unavailable.size, max_relay, now);
        self.drive(hash);
    }

    fn on_visitor_event(&mut self, hash: PageHash, task: u64, event: SessionEvent) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        let Some((host, link)) = &run.session else {
            return;
        };
        if link.id != task {
            return;
        }
        let host = *host;
        let now = run.started.elapsed();
        match event {
            SessionEvent::Signal(body) => {
                let signal = SignalTo { to: host, body };
                let _ = self.push(Topic::want(hash), event::SIGNAL, &signal);
                return;
            }
            SessionEvent::Open { .. } => {
                run.channel_open = Some(now);
                run.fetch.on_channel_open(now);
            }
            SessionEvent::Text(text) => run.fetch.on_channel_text(&text, now),
            SessionEvent::Binary(data) => run.fetch.on_channel_binary(&data, now),
            SessionEvent::Closed { reason } => {
                tracing::debug!(%hash, %host, %reason, "connection to host ended");
                run.session = None;
                run.fetch.on_rtc_failed(now);
            }
        }
        self.drive(hash);
    }

    // ---- commands and helpers' messages --------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Share { page, reply } => {
                let hash = self.host_page(page);
                match self.hosted.get_mut(&hash) {
                    Some(hosted) if hosted.joined => {
                        let _ = reply.send(Ok(hash));
                    }
                    Some(hosted) => hosted.waiters.push(reply),
                    None => {
                        let _ = reply.send(Err(PeerError::Stopped));
                    }
                }
            }
            Command::Unshare { hash, reply } => {
                if self.hosted.remove(&hash).is_some() {
                    self.leave(Topic::have(hash));
                    let hosting = self.hosted.values().filter(|h| h.joined).count();
                    self.status.send_modify(|status| status.hosting = hosting);
                }
                let _ = reply.send(());
            }
            Command::Fetch {
                hash,
                options,
                reply,
            } => self.start_fetch(hash, options, reply),
            Command::WatchCount { hash, reply } => {
                let receiver = self
                    .counts
                    .entry(hash)
                    .or_insert_with(|| watch::channel(None).0)
                    .subscribe();
                let _ = reply.send(receiver);
            }
            Command::DropLink => self.drop_link(),
            // Handled by the run loop, which must return after it.
            Command::Shutdown { .. } => {}
        }
    }

    fn on_internal(&mut self, message: Internal) {
        match message {
            // The run loop takes successful connections itself: it owns
            // the receiving half.
            Internal::Connected(Ok(_)) => {}
            Internal::Connected(Err(error)) => {
                tracing::debug!(%error, "reconnect failed");
                self.connecting = false;
                self.schedule_reconnect();
            }
            Internal::Signal { topic, to, body } => {
                let _ = self.push(topic, event::SIGNAL, &SignalTo { to, body });
            }
            Internal::UploadDone {
                hash,
                visitor,
                task,
                delivered,
            } => {
                let Some(hosted) = self.hosted.get_mut(&hash) else {
                    return;
                };
                if hosted.active.get(&visitor).is_some_and(|l| l.id == task) {
                    hosted.active.remove(&visitor);
                    hosted.uploads.on_finished(visitor);
                }
                tracing::debug!(%hash, %visitor, delivered, "upload ended");
            }
            Internal::Visitor { hash, task, event } => self.on_visitor_event(hash, task, event),
            Internal::VisitorPath { hash, task, path } => {
                if let Some(run) = self.fetches.get_mut(&hash)
                    && run
                        .session
                        .as_ref()
                        .is_some_and(|(_, link)| link.id == task)
                {
                    run.path = path;
                }
            }
        }
    }

    /// Ends everything: fetches fail with `Stopped`, uploads and sessions
    /// close, the socket closes.
    fn stop(&mut self) {
        for (_, mut run) in self.fetches.drain() {
            run.session = None;
            if let Some(reply) = run.reply.take() {
                let _ = reply.send(Err(FetchError::Stopped));
            }
        }
        self.hosted.clear();
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.reconnect_at = None;
        self.status.send_modify(|status| {
            status.online = false;
            status.hosting = 0;
        });
    }
}

/// The server refused a relayed page or a refusal to relay one. Nothing to
/// undo: the visitor's own timeout asks again, so this is only said.
fn on_relay_refused(
    hash: PageHash,
    visitor: PeerId,
    event: &str,
    reason: &str,
    detail: Option<&str>,
) {
    let detail = detail.unwrap_or("");
    match reason.parse::<Reason>() {
        // The visitor did not ask us for relay (it asked for WebRTC, which
        // a busy or relay-only host answers by relay), or it left before
        // our answer arrived: it will ask again if it still wants the page.
        Ok(Reason::NotRequested) => {
            tracing::debug!(%hash, %visitor, event, "the server did not expect this relay");
        }
        Ok(Reason::PageTooLarge) => tracing::warn!(
            %hash, %visitor, event, detail,
            "the server refused to relay the page: larger than it relays"
        ),
        _ => tracing::warn!(%hash, %visitor, event, reason, detail, "the server refused a relay"),
    }
}

/// One WebRTC upload of a page to one visitor.
struct Upload {
    hash: PageHash,
    visitor: PeerId,
    task: u64,
    page: Arc<Vec<u8>>,
    settings: RtcSettings,
    timeout: Duration,
    internal: mpsc::UnboundedSender<Internal>,
    served: Arc<ServedCounters>,
}

impl Upload {
    async fn run(self, signals: mpsc::UnboundedReceiver<SignalBody>) {
        let delivered = match tokio::time::timeout(self.timeout, self.serve(signals)).await {
            Ok(Ok(())) => true,
            Ok(Err(reason)) => {
                tracing::debug!(hash = %self.hash, visitor = %self.visitor, %reason, "upload failed");
                false
            }
            Err(_) => {
                tracing::debug!(hash = %self.hash, visitor = %self.visitor, "upload timed out");
                false
            }
        };
        if delivered {
            self.served.webrtc.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.internal.send(Internal::UploadDone {
            hash: self.hash,
            visitor: self.visitor,
            task: self.task,
            delivered,
        });
    }

    /// Offers a channel, sends the page once it opens, and waits for the
    /// visitor to close it: the visitor closes once it has verified the
    /// bytes, so closing before that means the page did not arrive.
    async fn serve(&self, mut signals: mpsc::UnboundedReceiver<SignalBody>) -> Result<(), String> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let session = Arc::new(
            Session::offer(&self.settings, events_tx)
                .await
                .map_err(|e| e.to_string())?,
        );
        let mut sending: Option<JoinHandle<Result<(), String>>> = None;
        let mut sent = false;
        let result = loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(body) => session.signal(body),
                    None => break Err("superseded".to_string()),
                },
                event = events.recv() => match event {
                    Some(SessionEvent::Signal(body)) => {
                        let _ = self.internal.send(Internal::Signal {
                            topic: Topic::have(self.hash),
                            to: self.visitor,
                            body,
                        });
                    }
                    Some(SessionEvent::Open { message_size }) if sending.is_none() && !sent => {
                        let session = session.clone();
                        let page = self.page.clone();
                        sending = Some(tokio::spawn(async move {
                            session
                                .send_page(&page, message_size)
                                .await
                                .map_err(|e| e.to_string())
                        }));
                    }
                    Some(SessionEvent::Closed { reason }) => {
                        // The visitor may verify and close before our send
                        // task reports back; its outcome decides.
                        if let Some(task) = sending.take() {
                            sent = matches!(task.await, Ok(Ok(())));
                        }
                        break if sent { Ok(()) } else { Err(reason) };
                    }
                    Some(_) => {}
                    None => break Err("session ended".to_string()),
                },
                outcome = async {
                    match sending.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                } => {
                    sending = None;
                    match outcome {
                        Ok(Ok(())) => sent = true,
                        Ok(Err(reason)) => break Err(reason),
                        Err(error) => break Err(error.to_string()),
                    }
                }
            }
        };
        if let Some(task) = sending {
            task.abort();
        }
        session.close().await;
        result
    }
}

/// The visitor's end of one connection to one host: builds the answering
/// session, feeds it the host's signals in order and hands its events to
/// the actor.
async fn visitor_session(
    hash: PageHash,
    task: u64,
    settings: RtcSettings,
    mut signals: mpsc::UnboundedReceiver<SignalBody>,
    internal: mpsc::UnboundedSender<Internal>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let session = match Session::answer(&settings, events_tx).await {
        Ok(session) => session,
        Err(error) => {
            let _ = internal.send(Internal::Visitor {
                hash,
                task,
                event: SessionEvent::Closed {
                    reason: error.to_string(),
                },
            });
            return;
        }
    };
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(body) => session.signal(body),
                None => break,
            },
            event = events.recv() => match event {
                Some(event) => {
                    if matches!(event, SessionEvent::Open { .. }) {
                        let path = session.path().await;
                        let _ = internal.send(Internal::VisitorPath { hash, task, path });
                    }
                    let closed = matches!(event, SessionEvent::Closed { .. });
                    if internal.send(Internal::Visitor { hash, task, event }).is_err() || closed {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    session.close().await;
}
