//! The native peer's public face: [`Peer`], a handle on a running peer,
//! and the types of its API. All behaviour is `ephemeral_shared`'s
//! [`Client`](ephemeral_shared::client::Client), driven by the run loop in
//! [`crate::run_loop`]; this module only turns calls into commands for it
//! and its answers back into results.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ephemeral_shared::client::{self, ClientConfig, StartError};
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::VisitorsCount;
use ephemeral_shared::session::SessionConfig;
use ephemeral_shared::{FetchConfig, FetchFailure, Page, PageHash, PeerId, Phase, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::rtc::RtcSettings;
use crate::run_loop::{Command, RunLoop};
use crate::signaling::ConnectError;

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
    /// An upload whose channel has not opened by then is abandoned.
    pub upload_open_timeout: Duration,
    /// An upload still open after this long is abandoned.
    pub upload_max: Duration,
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
    /// The defaults of the shared client core, for a server at `server`.
    pub fn new(server: impl Into<String>) -> Self {
        let core = ClientConfig::default();
        Self {
            server: server.into(),
            rtc: RtcSettings::default(),
            fetch: core.fetch,
            max_uploads: core.max_uploads,
            upload_open_timeout: core.upload_open_timeout,
            upload_max: core.upload_max,
            connect_timeout: core.session.connect_timeout,
            heartbeat_interval: core.session.heartbeat_interval,
            reconnect_min: core.session.reconnect_min,
            reconnect_max: core.session.reconnect_max,
        }
    }

    /// The core's configuration.
    pub(crate) fn client(&self) -> ClientConfig {
        ClientConfig {
            session: SessionConfig {
                heartbeat_interval: self.heartbeat_interval,
                connect_timeout: self.connect_timeout,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            },
            fetch: self.fetch.clone(),
            max_uploads: self.max_uploads,
            upload_open_timeout: self.upload_open_timeout,
            upload_max: self.upload_max,
            ..ClientConfig::default()
        }
    }
}

/// Why a peer could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The cause is in the message and is not a `source`: an error chain
    /// printed in full would say it twice.
    #[error("cannot reach the server at {url}: {cause}")]
    Unreachable { url: String, cause: ConnectError },
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

impl From<client::FetchError> for FetchError {
    fn from(error: client::FetchError) -> Self {
        match error {
            client::FetchError::Gone => FetchError::Gone,
            client::FetchError::Failed(failure) => FetchError::Failed(failure),
            client::FetchError::Refused(refusal) => FetchError::Refused(refusal.to_string()),
            client::FetchError::Stopped => FetchError::Stopped,
        }
    }
}

impl From<StartError> for FetchError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::AlreadyFetching => FetchError::AlreadyFetching,
            StartError::AlreadyHosted => FetchError::AlreadyHosted,
        }
    }
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

impl From<client::Delivered> for Fetched {
    fn from(delivered: client::Delivered) -> Self {
        Self {
            hash: delivered.hash,
            transport: delivered.transport,
            path: delivered.path,
            host: delivered.host,
            requests: delivered.requests,
            timings: FetchTimings {
                routed: delivered.routed,
                channel_open: delivered.channel_open,
                total: delivered.total,
            },
            page: delivered.page.into_vec(),
        }
    }
}

/// Where a fetch stands, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    pub phase: Phase,
    /// Bytes received, over the current data channel or in relayed parts,
    /// and the announced size.
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

impl From<client::Status> for PeerStatus {
    fn from(status: client::Status) -> Self {
        Self {
            online: status.online,
            connections: status.connections,
            peer_id: status.peer_id,
            hosting: status.hosting,
            max_relay_bytes: status.max_relay_bytes,
        }
    }
}

/// Uploads this peer has completed, by transport.
#[derive(Debug, Default)]
pub struct ServedCounters {
    webrtc: AtomicU64,
    relay: AtomicU64,
}

impl ServedCounters {
    pub(crate) fn count(&self, transport: Transport) {
        let counter = match transport {
            Transport::WebRtc => &self.webrtc,
            Transport::Relay => &self.relay,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

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

impl Peer {
    /// Connects to the server. Fails at once if it cannot be reached; once
    /// connected, the peer reconnects on its own whenever the link drops.
    pub async fn connect(config: PeerConfig) -> Result<Peer, PeerError> {
        let (status_tx, status) = watch::channel(PeerStatus::default());
        let served = Arc::new(ServedCounters::default());
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let run_loop = RunLoop::connect(config, status_tx, served.clone()).await?;
        let task = tokio::spawn(run_loop.run(commands_rx));
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
            page: Page::new(page),
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
