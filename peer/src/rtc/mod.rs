//! One WebRTC peer connection carrying one page: building it with the
//! settings that make webrtc-rs fast here, negotiating it through signals,
//! and turning its callbacks into an ordered stream of [`SessionEvent`]s.
//!
//! A [`Session`] is either the offering side (a host: it creates the data
//! channel) or the answering side (a visitor: the channel arrives). Either
//! way the owner feeds remote signals in with [`Session::signal`] and reads
//! events from the channel it passed in. Signals are applied strictly in
//! order by one task per session; the data channel is drained by another,
//! continuously, because webrtc-rs stalls the whole connection when a
//! channel's events are not read (docs/webrtc-facts.md).
//!
//! Tuning, measured on loopback (release build, 2 cores):
//!
//! | setting | why | effect |
//! |---|---|---|
//! | UDP bound to [`RtcSettings::bind`] | `0.0.0.0` leaves out loopback | tests connect at all |
//! | SCTP receive window 128 KiB | bigger bursts drop on the UDP socket | 110–140 MB/s for 8 MiB |
//! | 64 KiB messages (remote's `a=max-message-size`) | 16 KiB collapses throughput | as above |
//! | ICE checks every 20 ms, not 200 ms | check pacing dominated set-up | −180 ms |
//! | host/peer-reflexive pairs accepted at once | prflx waited 1 s | no 1 s outliers |
//! | driver nudged until the channel opens | two queued packets waited ~200 ms each | −400 ms |
//! | server-reflexive pairs accepted at once, not after 500 ms | cone↔cone waited for them | −0.5 s across cone NATs |
//! | relay pairs nominated after 1 s, not 2 s | webrtc-rs waits 2 s for direct pairs | −1 s over TURN |
//! | both sides nudged while relayed, for the connection's life | every relayed packet waited up to ~200 ms | DTLS→open over TURN 1.8 s → <0.3 s; 8 MiB 0.25 → 1.5–4 MB/s (debug), ~20 MB/s release |
//!
//! Together: a data channel opens ~30 ms after the offer (0.45–1.5 s with
//! the defaults); through a TURN server on loopback, both sides relay-only,
//! in 0.1–0.3 s (3.4–3.9 s with the defaults, which missed the fetch's 5 s
//! WebRTC deadline behind symmetric NATs).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

mod driver;
mod negotiation;

use driver::{has_turn_server, nudge_driver, selected_path};
use negotiation::apply_signals;
pub use negotiation::is_mdns_candidate;

use bytes::BytesMut;
use ephemeral_shared::Page;
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::{IceServer, SignalBody};
use ephemeral_shared::transfer::{MAX_MESSAGE_BYTES, TransferSender, message_size_for};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::{RTCDtlsRole, RTCIceCandidateType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry,
    SettingEngineBuilder, StatsSelector,
};

/// The label of the one data channel a session opens.
const CHANNEL_LABEL: &str = "page";

/// SCTP receive window. The 1 MiB default lets a sender burst more than the
/// UDP socket buffer holds on loopback: packets drop and SCTP stalls on its
/// retransmit timers (1.5–30 MB/s); 128 KiB gave 111–184 MB/s.
const SCTP_RECEIVE_BUFFER: u32 = 128 * 1024;

/// Bytes a data channel may have handed to SCTP but not yet had
/// acknowledged before `send` waits: the back-pressure that keeps a large
/// page from being queued whole in memory. Well above the receive window, so
/// the pipe stays full.
const SEND_BUFFER_LIMIT: usize = 1024 * 1024;

/// How often, and for how long at most, a connecting session nudges the
/// webrtc-rs driver (see [`nudge_driver`]); the limit does not apply to a
/// relayed connection once open.
const NUDGE_INTERVAL: Duration = Duration::from_millis(2);
const NUDGE_FOR: Duration = Duration::from_secs(15);

/// How WebRTC connections are built.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    /// The local address ICE binds its UDP socket to. `0.0.0.0` means every
    /// interface but leaves out loopback; tests use `127.0.0.1`.
    pub bind: IpAddr,
    /// STUN/TURN servers: configured ones plus those the server hands out.
    pub ice_servers: Vec<IceServer>,
    /// Pause between ICE connectivity checks. webrtc-rs paces them at
    /// 200 ms, which alone puts 0.6–1.6 s into every connection set-up; on a
    /// LAN a check answers in well under a millisecond.
    pub ice_check_interval: Duration,
    /// Checks per candidate pair before giving up on it; with the interval
    /// this bounds how long ICE tries (default: 2 s).
    pub ice_max_binding_requests: u16,
    /// How long a connection may go silent before it counts as lost. The
    /// webrtc-rs default (5 s, then 25 s more until "failed") is far longer
    /// than a visitor should wait for a vanished host.
    pub ice_disconnected_timeout: Duration,
    /// How long after ICE starts a pair with a TURN (relay) candidate may be
    /// nominated. webrtc-rs waits 2 s (`DEFAULT_RELAY_ACCEPTANCE_MIN_WAIT`)
    /// to give direct pairs a chance; behind symmetric NATs there are none,
    /// and those 2 s are most of the fetch's 5 s WebRTC budget. A second
    /// still lets a direct pair win over the relay: every relayed byte costs
    /// the operator, and in the NAT lab Chromium's first direct check
    /// across cone NATs came ~330 ms after it started checking, so a
    /// 300 ms wait handed such visitors to TURN one time in three.
    /// Ignored with [`turn_only`](Self::turn_only): nothing to wait for.
    pub ice_relay_min_wait: Duration,
    /// Gather and use relay (TURN) candidates only, like the W3C
    /// `iceTransportPolicy: "relay"`: the remote never learns our
    /// addresses. Not to be confused with the server's websocket relay.
    pub turn_only: bool,
}

impl Default for RtcSettings {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            ice_servers: Vec::new(),
            ice_check_interval: Duration::from_millis(20),
            ice_max_binding_requests: 100,
            ice_disconnected_timeout: Duration::from_secs(4),
            ice_relay_min_wait: Duration::from_millis(1000),
            turn_only: false,
        }
    }
}

/// What went wrong with a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("the data channel is not open")]
    NoChannel,
    #[error("the session is closed")]
    Closed,
}

/// What happened on a session, in order.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A signal to deliver to the remote peer through the server.
    Signal(SignalBody),
    /// The data channel opened; the remote accepts messages up to
    /// `message_size` bytes.
    Open { message_size: usize },
    /// A text message arrived.
    Text(String),
    /// A binary message arrived.
    Binary(BytesMut),
    /// The connection or its channel failed or closed; nothing more will
    /// arrive.
    Closed { reason: String },
}

/// Which side of the negotiation this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Offerer,
    Answerer,
}

/// One peer connection to one remote peer.
pub struct Session {
    pc: Arc<dyn PeerConnection>,
    /// Remote signals, applied in order by the signaling task.
    signals: mpsc::UnboundedSender<SignalBody>,
    shared: Arc<Shared>,
    /// The signaling task; the drain task ends on its own with the channel.
    signaling: JoinHandle<()>,
}

/// State the callbacks, the signaling task and the owner share.
struct Shared {
    events: mpsc::UnboundedSender<SessionEvent>,
    /// The channel, once created (offerer) or announced (answerer).
    channel: OnceLock<Arc<dyn DataChannel>>,
    /// The remote's largest message, from its SDP; set before the channel
    /// can open.
    message_size: AtomicUsize,
    /// Set once the channel opened (or closed): set-up nudging stops unless
    /// the connection is relayed (see [`nudge_driver`]).
    settled: AtomicBool,
    /// Set once the channel closed: all nudging stops.
    closed: AtomicBool,
    /// Whether the answering side nudges its driver too: only when a TURN
    /// server may put a relay candidate into the selected pair.
    nudge_answerer: bool,
    /// Local candidates wait here until our description has been sent: a
    /// candidate that overtakes the offer or answer is an error in browsers.
    candidates: Mutex<CandidateGate>,
}

#[derive(Default)]
struct CandidateGate {
    description_sent: bool,
    held: Vec<SignalBody>,
}

impl Shared {
    fn emit(&self, event: SessionEvent) {
        // The owner dropping its receiver means it lost interest; nothing to do.
        let _ = self.events.send(event);
    }

    fn emit_candidate(&self, body: SignalBody) {
        let Ok(mut gate) = self.candidates.lock() else {
            return;
        };
        if gate.description_sent {
            self.emit(body_event(body));
        } else {
            gate.held.push(body);
        }
    }

    /// Sends our offer or answer, then every candidate that waited for it.
    fn emit_description(&self, body: SignalBody) {
        let Ok(mut gate) = self.candidates.lock() else {
            return;
        };
        self.emit(body_event(body));
        gate.description_sent = true;
        for held in gate.held.drain(..) {
            self.emit(body_event(held));
        }
    }
}

fn body_event(body: SignalBody) -> SessionEvent {
    SessionEvent::Signal(body)
}

impl Session {
    /// The host's side: creates the connection and its channel and emits
    /// the offer as the first event.
    pub async fn offer(
        settings: &RtcSettings,
        events: mpsc::UnboundedSender<SessionEvent>,
    ) -> Result<Self, RtcError> {
        let session = Self::build(settings, events, Role::Offerer).await?;
        let init = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        let channel = session
            .pc
            .create_data_channel(CHANNEL_LABEL, Some(init))
            .await?;
        let _ = session.shared.channel.set(channel.clone());
        tokio::spawn(drain(channel, session.shared.clone()));
        tokio::spawn(nudge_driver(session.pc.clone(), session.shared.clone()));
        let offer = session.pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        session.pc.set_local_description(offer).await?;
        session.shared.emit_description(SignalBody::Offer { sdp });
        Ok(session)
    }

    /// The visitor's side: waits for the remote offer (through
    /// [`Session::signal`]) and answers it.
    pub async fn answer(
        settings: &RtcSettings,
        events: mpsc::UnboundedSender<SessionEvent>,
    ) -> Result<Self, RtcError> {
        Self::build(settings, events, Role::Answerer).await
    }

    async fn build(
        settings: &RtcSettings,
        events: mpsc::UnboundedSender<SessionEvent>,
        role: Role,
    ) -> Result<Self, RtcError> {
        let shared = Arc::new(Shared {
            events,
            channel: OnceLock::new(),
            message_size: AtomicUsize::new(MAX_MESSAGE_BYTES),
            settled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            nudge_answerer: role == Role::Answerer && has_turn_server(&settings.ice_servers),
            candidates: Mutex::new(CandidateGate::default()),
        });
        let engine = SettingEngineBuilder::new()
            .with_sctp_max_receive_buffer_size(SCTP_RECEIVE_BUFFER)
            .with_ice_connection_attempts(
                Some(settings.ice_check_interval),
                Some(settings.ice_max_binding_requests),
            )
            .with_ice_timeouts(
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_disconnected_timeout / 4),
            )
            // A visitor's first check often lands before its candidates
            // do, so the host first sees it as peer reflexive; webrtc-rs
            // then waits 1 s before nominating such a pair (a 1 s outlier in
            // about one set-up of ten here). Browsers hiding their address
            // behind mDNS are always peer reflexive to us. Take such pairs
            // at once: for one short transfer, sooner beats marginally better.
            .with_host_acceptance_min_wait(Some(Duration::ZERO))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // Server-reflexive pairs are what two peers behind cone NATs
            // connect over; webrtc-rs waits 500 ms for them by default,
            // which was most of a cone↔cone fetch in the NAT lab.
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            // See `RtcSettings::ice_relay_min_wait`: the 2 s default alone
            // made TURN set-ups miss the fetch's WebRTC deadline.
            .with_relay_acceptance_min_wait(Some(if settings.turn_only {
                Duration::ZERO
            } else {
                settings.ice_relay_min_wait
            }))
            // Browsers hide host addresses behind `.local` names; resolving
            // them needs a multicast socket per connection. We drop them and
            // let the browser reach our address instead (peer reflexive).
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(settings.bind.is_loopback())
            // The answerer (visitor) takes the DTLS server role, so the
            // offerer, which created the channel, is the DTLS and SCTP
            // client: the side whose stalled queues `nudge_driver`
            // flushes is then the side holding the channel to nudge with.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build();
        let ice_servers = settings
            .ice_servers
            .iter()
            .map(|server| RTCIceServer {
                urls: server.urls.clone(),
                username: server.username.clone().unwrap_or_default(),
                credential: server.credential.clone().unwrap_or_default(),
            })
            .collect();
        let mut configuration = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
        if settings.turn_only {
            configuration = configuration.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let configuration = configuration.build();
        let handler = Arc::new(Handler {
            shared: shared.clone(),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(engine)
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::new(settings.bind, 0)])
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let signaling = tokio::spawn(apply_signals(pc.clone(), role, signals_rx, shared.clone()));
        Ok(Self {
            pc,
            signals,
            shared,
            signaling,
        })
    }

    /// A signal from the remote peer; applied after every earlier one.
    pub fn signal(&self, body: SignalBody) {
        let _ = self.signals.send(body);
    }

    fn channel(&self) -> Result<&Arc<dyn DataChannel>, RtcError> {
        self.shared.channel.get().ok_or(RtcError::NoChannel)
    }

    /// Sends a text message on the open channel.
    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        Ok(self.channel()?.send_text(text).await?)
    }

    /// Sends a binary message on the open channel, waiting while too much
    /// is unacknowledged.
    pub async fn send_binary(&self, data: &[u8]) -> Result<(), RtcError> {
        Ok(self.channel()?.send(BytesMut::from(data)).await?)
    }

    /// Sends a whole page: its header, then its chunks sized for a remote
    /// that accepts `message_size`-byte messages.
    pub async fn send_page(&self, page: &Page, message_size: usize) -> Result<(), RtcError> {
        let sender = TransferSender::new(page, message_size);
        self.send_text(&sender.header()).await?;
        for chunk in sender.chunks() {
            self.send_binary(&chunk).await?;
        }
        Ok(())
    }

    /// Closes the connection and waits for webrtc-rs to let go of it.
    /// Which way this connection's bytes go (direct or through TURN), once
    /// ICE selected a candidate pair.
    pub async fn path(&self) -> Option<Path> {
        selected_path(self.pc.as_ref()).await
    }

    pub async fn close(&self) {
        self.signaling.abort();
        if let Err(error) = self.pc.close().await {
            tracing::debug!(%error, "closing a peer connection");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.signaling.abort();
        // Closing is async; a dropped session still releases its sockets.
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// webrtc-rs callbacks. They run on the connection's driver task, so they
/// only hand events on and never wait.
struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.shared.emit_candidate(SignalBody::Candidate {
                candidate: init.candidate,
                // webrtc-rs fills in an empty mid, which browsers reject;
                // the m-line index alone names our only section.
                sdp_mid: None,
                sdp_mline_index: Some(0),
            }),
            Err(error) => tracing::debug!(%error, "unusable local candidate"),
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        tracing::debug!(%state, "ICE connection state");
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        // A one-page transfer does not wait for a connection to recover:
        // asking another host is faster than ICE's own failure timer.
        if matches!(
            state,
            RTCPeerConnectionState::Failed
                | RTCPeerConnectionState::Disconnected
                | RTCPeerConnectionState::Closed
        ) {
            self.shared.emit(SessionEvent::Closed {
                reason: format!("connection {state}"),
            });
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        tracing::debug!("remote opened a data channel");
        if self.shared.channel.set(channel.clone()).is_err() {
            tracing::debug!("ignoring a second data channel");
            return;
        }
        tokio::spawn(drain(channel, self.shared.clone()));
    }
}

/// Reads every event of a data channel until it closes.
async fn drain(channel: Arc<dyn DataChannel>, shared: Arc<Shared>) {
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                shared.settled.store(true, Ordering::Release);
                tracing::debug!("data channel open");
                shared.emit(SessionEvent::Open {
                    message_size: shared.message_size.load(Ordering::Acquire),
                })
            }
            DataChannelEvent::OnMessage(message) if message.is_string => {
                let text = String::from_utf8_lossy(&message.data).into_owned();
                shared.emit(SessionEvent::Text(text));
            }
            DataChannelEvent::OnMessage(message) => {
                shared.emit(SessionEvent::Binary(message.data));
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.settled.store(true, Ordering::Release);
    shared.emit(SessionEvent::Closed {
        reason: "data channel closed".into(),
    });
}
