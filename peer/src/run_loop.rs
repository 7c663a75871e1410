//! The native peer's run loop: the tokio shell around `ephemeral_shared`'s
//! [`Client`]. It feeds the client websocket frames, peer-connection
//! events, the [`Peer`](crate::Peer) handle's commands and the clock, and
//! carries out what the client asks — open or close the websocket, send a
//! frame, open, signal or close a peer connection, send a page — then
//! answers the handle's waiting calls from the client's events.
//!
//! ```text
//!  Peer handle ── Command ─────┐
//!  websocket frames / close ───┤               ┌─► Socket: connect task, frames out
//!  Connections (RtcEvent) ─────┼─► Client ─────┼─► Connections: open/signal/send/close
//!  sleep_until(next_deadline) ─┘               └─► Events: replies, watches, counters
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ephemeral_shared::client::{Client, ConnId, Event, Output, RtcEvent};
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::{IceServer, VisitorsCount};
use ephemeral_shared::session::Transmit;
use ephemeral_shared::{Frame, Page, PageHash};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::connections::Connections;
use crate::peer::{
    FetchError, FetchOptions, FetchProgress, Fetched, PeerConfig, PeerError, PeerStatus,
    ServedCounters,
};
use crate::rtc::RtcSettings;
use crate::signaling::{self, ConnectError, FrameReceiver, FrameSender};

/// What the [`Peer`](crate::Peer) handle asks.
pub(crate) enum Command {
    Share {
        page: Page,
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

type Connected = Result<(FrameSender, FrameReceiver), ConnectError>;

/// A `fetch` call waiting for its page.
struct Waiter {
    reply: oneshot::Sender<Result<Fetched, FetchError>>,
    progress: Option<watch::Sender<FetchProgress>>,
}

/// The shell's state; everything else is the client's.
pub(crate) struct RunLoop {
    client: Client,
    config: PeerConfig,
    /// The client's clock starts here.
    epoch: Instant,
    link: Option<FrameSender>,
    receiver: Option<FrameReceiver>,
    connections: Connections,
    rtc_events: mpsc::UnboundedReceiver<(ConnId, RtcEvent)>,
    connected: mpsc::UnboundedSender<(u64, Connected)>,
    connects: mpsc::UnboundedReceiver<(u64, Connected)>,
    /// Connection attempts so far; a result of any but the one the client
    /// waits for (`awaited`) is stale.
    attempts: u64,
    awaited: Option<u64>,
    shares: HashMap<PageHash, Vec<oneshot::Sender<Result<PageHash, PeerError>>>>,
    fetches: HashMap<PageHash, Waiter>,
    counts: HashMap<PageHash, watch::Sender<Option<VisitorsCount>>>,
    status: watch::Sender<PeerStatus>,
    served: Arc<ServedCounters>,
}

impl RunLoop {
    /// Connects once, so that an unreachable server fails the caller at
    /// once; later losses are the client's to reconnect.
    pub(crate) async fn connect(
        config: PeerConfig,
        status: watch::Sender<PeerStatus>,
        served: Arc<ServedCounters>,
    ) -> Result<Self, PeerError> {
        let (sender, receiver) = signaling::connect(&config.server, config.connect_timeout)
            .await
            .map_err(|cause| PeerError::Unreachable {
                url: config.server.clone(),
                cause,
            })?;
        let epoch = Instant::now();
        let client = Client::new(config.client(), rand::random(), Duration::ZERO);
        let (events_tx, rtc_events) = mpsc::unbounded_channel();
        let (connected, connects) = mpsc::unbounded_channel();
        let mut run_loop = Self {
            client,
            config,
            epoch,
            link: None,
            receiver: None,
            connections: Connections::new(events_tx),
            rtc_events,
            connected,
            connects,
            attempts: 0,
            awaited: None,
            shares: HashMap::new(),
            fetches: HashMap::new(),
            counts: HashMap::new(),
            status,
            served,
        };
        // The client's first wish is to connect: that is done.
        if let Some(Output::Socket(Transmit::Connect)) = run_loop.client.poll_output() {
            run_loop.link = Some(sender);
            run_loop.receiver = Some(receiver);
            run_loop.client.on_connected(run_loop.now());
        }
        run_loop.carry_out();
        Ok(run_loop)
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = self.epoch + self.client.next_deadline();
            tokio::select! {
                frame = next_frame(&mut self.receiver) => match frame {
                    Some(frame) => self.client.on_frame(frame, self.now()),
                    None => {
                        tracing::info!(server = %self.config.server, "lost the server; reconnecting");
                        self.link = None;
                        self.receiver = None;
                        self.client.on_disconnected(self.now());
                    }
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
                Some((attempt, result)) = self.connects.recv() => {
                    self.on_connect_result(attempt, result);
                }
                Some((conn, event)) = self.rtc_events.recv() => {
                    self.client.on_rtc(conn, event, self.now());
                }
                () = tokio::time::sleep_until(wake) => self.client.handle_timeout(self.now()),
            }
            self.carry_out();
        }
        self.stop();
    }

    fn on_connect_result(&mut self, attempt: u64, result: Connected) {
        if self.awaited != Some(attempt) {
            // The client gave up on this attempt (it timed out or the peer
            // is stopping): a socket it opened late is not wanted.
            if let Ok((sender, _)) = result {
                sender.close();
            }
            return;
        }
        self.awaited = None;
        match result {
            Ok((sender, receiver)) => {
                tracing::debug!(server = %self.config.server, "connected");
                self.link = Some(sender);
                self.receiver = Some(receiver);
                self.client.on_connected(self.now());
            }
            Err(error) => {
                tracing::debug!(%error, "reconnect failed");
                self.client.on_connect_failed(self.now());
            }
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Share { page, reply } => {
                let hash = self.client.share(page);
                self.shares.entry(hash).or_default().push(reply);
            }
            Command::Unshare { hash, reply } => {
                self.client.unshare(hash);
                let _ = reply.send(());
            }
            Command::Fetch {
                hash,
                options,
                reply,
            } => match self.client.fetch(hash, options.host_after, self.now()) {
                Ok(()) => {
                    let waiter = Waiter {
                        reply,
                        progress: options.progress,
                    };
                    self.fetches.insert(hash, waiter);
                }
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            },
            Command::WatchCount { hash, reply } => {
                let _ = reply.send(self.count(hash).subscribe());
            }
            Command::DropLink => self.client.drop_link(self.now()),
            // The run loop handles it: it must return after it.
            Command::Shutdown { .. } => {}
        }
    }

    /// Carries out everything the client asks for.
    fn carry_out(&mut self) {
        // The status first: callers answered below may read it at once.
        let status = PeerStatus::from(self.client.status());
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Socket(transmit) => self.on_transmit(transmit),
                Output::OpenRtc {
                    conn,
                    side,
                    ice_servers,
                } => {
                    let settings = self.rtc_settings(&ice_servers);
                    self.connections.open(conn, side, settings);
                }
                Output::SignalRtc { conn, body } => self.connections.signal(conn, body),
                Output::SendPage { conn, page } => self.connections.send_page(conn, page),
                Output::CloseRtc { conn } => self.connections.close(conn),
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    fn on_transmit(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Connect => {
                self.attempts += 1;
                let attempt = self.attempts;
                self.awaited = Some(attempt);
                let url = self.config.server.clone();
                let timeout = self.config.connect_timeout;
                let connected = self.connected.clone();
                tokio::spawn(async move {
                    let result = signaling::connect(&url, timeout).await;
                    let _ = connected.send((attempt, result));
                });
            }
            Transmit::Send(frame) => self.send(&frame),
            Transmit::Close => {
                self.awaited = None;
                if let Some(link) = self.link.take() {
                    link.close();
                }
                self.receiver = None;
            }
        }
    }

    fn send(&mut self, frame: &Frame) {
        // A socket gone mid-send shows as the receiver ending; the client
        // hears of it there.
        if let Some(link) = &self.link {
            link.send(frame);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Online => {}
            Event::Offline(cause) => tracing::info!(%cause, "offline; reconnecting"),
            Event::Hosting(hash) => {
                for reply in self.shares.remove(&hash).unwrap_or_default() {
                    let _ = reply.send(Ok(hash));
                }
            }
            Event::ShareRefused { hash, refusal } => {
                tracing::warn!(%hash, %refusal, "the server refused to let this peer host");
                for reply in self.shares.remove(&hash).unwrap_or_default() {
                    let _ = reply.send(Err(PeerError::Refused(refusal.to_string())));
                }
            }
            Event::Count { hash, count } => {
                self.count(hash).send_replace(Some(count));
            }
            Event::Progress(hash) => self.report_progress(hash),
            Event::Delivered(delivered) => {
                tracing::info!(
                    hash = %delivered.hash,
                    transport = delivered.transport.as_str(),
                    path = delivered.path.map_or("unknown", Path::as_str),
                    bytes = delivered.page.len(),
                    ms = delivered.total.as_millis() as u64,
                    "page delivered"
                );
                let hash = delivered.hash;
                let fetched = Fetched::from(delivered);
                self.finish(hash, Ok(fetched));
            }
            Event::FetchEnded { hash, error } => self.finish(hash, Err(error.into())),
            Event::PathKnown { hash, path } => {
                tracing::debug!(%hash, path = path.as_str(), "path known after delivery");
            }
            Event::UploadEnded {
                hash,
                visitor,
                transport,
                delivered,
            } => {
                tracing::debug!(%hash, %visitor, transport = transport.as_str(), delivered, "upload ended");
                if delivered {
                    self.served.count(transport);
                }
            }
            Event::PushRefused {
                hash,
                event,
                refusal,
            } => tracing::debug!(%hash, event, %refusal, "the server refused a push"),
            Event::Ignored { hash, what } => tracing::debug!(%hash, "ignored {what}"),
        }
    }

    fn report_progress(&self, hash: PageHash) {
        let Some(progress) = self.fetches.get(&hash).and_then(|w| w.progress.as_ref()) else {
            return;
        };
        let Some((phase, bytes)) = self.client.fetch_progress(hash) else {
            return;
        };
        let next = FetchProgress {
            phase,
            received: bytes.map_or(0, |(received, _)| received),
            size: bytes.map(|(_, size)| size),
        };
        progress.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn finish(&mut self, hash: PageHash, outcome: Result<Fetched, FetchError>) {
        let Some(waiter) = self.fetches.remove(&hash) else {
            return;
        };
        if let Some(progress) = &waiter.progress {
            let phase = match &outcome {
                Ok(fetched) => ephemeral_shared::Phase::Delivered(fetched.transport),
                Err(FetchError::Gone) => ephemeral_shared::Phase::Gone,
                Err(_) => ephemeral_shared::Phase::Failed,
            };
            let size = outcome.as_ref().ok().map(|f| f.page.len());
            let _ = progress.send(FetchProgress {
                phase,
                received: size.unwrap_or(0),
                size,
            });
        }
        let _ = waiter.reply.send(outcome);
    }

    fn count(&mut self, hash: PageHash) -> &watch::Sender<Option<VisitorsCount>> {
        self.counts
            .entry(hash)
            .or_insert_with(|| watch::channel(None).0)
    }

    /// This peer's own settings plus the server's STUN/TURN servers.
    fn rtc_settings(&self, server_ice: &[IceServer]) -> RtcSettings {
        let mut settings = self.config.rtc.clone();
        for server in server_ice {
            if !settings.ice_servers.contains(server) {
                settings.ice_servers.push(server.clone());
            }
        }
        settings
    }

    /// Ends everything: fetches fail with `Stopped`, peer connections and
    /// the socket close.
    fn stop(&mut self) {
        self.client.shutdown();
        self.carry_out();
        self.connections.close_all();
        for (_, waiter) in self.fetches.drain() {
            let _ = waiter.reply.send(Err(FetchError::Stopped));
        }
        for (_, replies) in self.shares.drain() {
            for reply in replies {
                let _ = reply.send(Err(PeerError::Stopped));
            }
        }
    }
}

async fn next_frame(receiver: &mut Option<FrameReceiver>) -> Option<Frame> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
