//! The visitor's side of getting a page, as a sans-IO state machine.
//!
//! ```text
//!            ┌───────── no_hosts ──────────► Gone / Failed
//!  Asking ───┤
//!            └─ routed ─► Connecting ─ open ─► Receiving ─ verified ─► Delivered
//!                 │  (relay mode)    │ timeout / ICE failed   │ wrong bytes, dropped
//!                 ▼                  ▼                        ▼
//!              Relaying ◄──── ask again (relay) ──── ask again (exclude host)
//!                 │
//!                 └─ content_unavailable ─► Failed (too large for the relay)
//! ```
//!
//! A page too large — over this visitor's own limit, or over the server's
//! relay limit once WebRTC has failed — fails the fetch at once rather
//! than trying other hosts: every host has the same page, of the same size.
//!
//! The shell (browser or native peer) feeds in what happened — replies,
//! data-channel messages, failures, the current time — and carries out what
//! [`Fetch::poll`] returns: send a `content_request`, close the peer
//! connection, show the page. Time is an input, so tests drive every path
//! without a clock.

use std::collections::VecDeque;
use std::time::Duration;

use crate::hash::PageHash;
use crate::page::Page;
use crate::protocol::{ContentPart, ContentRequest, PeerId};
use crate::relay::{RelayError, RelayLimits, RelayReceiver, Relayed};
use crate::size::{Bytes, compared};
use crate::transfer::{Received, TransferError, TransferReceiver};

/// How a fetch behaves; the shells expose these as settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// How long a host has to get a data channel open, once routed.
    pub rtc_timeout: Duration,
    /// How long a transfer may go without a message, once open.
    pub stall_timeout: Duration,
    /// How long to wait for a relayed page, or for the server's reply.
    pub relay_timeout: Duration,
    /// Give up after this many requests.
    pub max_attempts: u32,
    /// Refuse pages larger than this.
    pub max_page_bytes: usize,
    /// Whether this visitor can do WebRTC at all; if not, relay from the start.
    pub webrtc: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            rtc_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            relay_timeout: Duration::from_secs(5),
            max_attempts: 12,
            max_page_bytes: 1 << 20,
            webrtc: true,
        }
    }
}

/// How a page arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Peer to peer over an RTCDataChannel.
    WebRtc,
    /// Through the server's websocket.
    Relay,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebRtc => "webrtc",
            Transport::Relay => "relay",
        }
    }
}

/// Why a fetch ended without the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchFailure {
    #[error("every host sent bytes that do not match the page's address ({bad_hosts} tried)")]
    WrongBytesFromEveryHost { bad_hosts: u32 },
    #[error("gave up after {0} requests")]
    TooManyAttempts(u32),
    /// The page is larger than this visitor accepts
    /// ([`FetchConfig::max_page_bytes`]).
    #[error("{}", too_large(*size, *max))]
    PageTooLarge { size: u64, max: u64 },
    /// The page had to come through the server, and it is larger than the
    /// server relays. `max_relay` is the server's limit, when it said;
    /// `webrtc_tried`: WebRTC failed (or else this visitor has it off).
    #[error("{}", too_large_for_relay(*size, *max_relay, *webrtc_tried))]
    TooLargeForRelay {
        size: u64,
        max_relay: Option<u64>,
        webrtc_tried: bool,
    },
    /// The server's relay sent the page's parts out of order, or at odds
    /// with its size or limit: the relay is at fault, and no other host
    /// would fare better through it.
    #[error("the server's relay sent the page malformed: {0}")]
    BadRelay(RelayError),
}

impl FetchFailure {
    /// Whether the page's size is the reason: no host could do better.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            FetchFailure::PageTooLarge { .. } | FetchFailure::TooLargeForRelay { .. }
        )
    }
}

fn too_large(size: u64, max: u64) -> String {
    let (size, max) = compared(size, max);
    format!("the page is {size}; this peer accepts pages up to {max}")
}

fn too_large_for_relay(size: u64, max_relay: Option<u64>, webrtc_tried: bool) -> String {
    let why_relay = if webrtc_tried {
        "WebRTC failed"
    } else {
        "this peer does not use WebRTC"
    };
    match max_relay {
        Some(max_relay) => {
            let (size, max_relay) = compared(size, max_relay);
            format!("the page is {size}; {why_relay} and the server relays pages up to {max_relay}")
        }
        None => format!(
            "the page is {}; {why_relay} and the server does not relay pages that large",
            Bytes(size)
        ),
    }
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAction {
    /// Send `content_request` with this payload on `want:<hash>`.
    Request(ContentRequest),
    /// Close the peer connection to this host; it will not be used again.
    CloseRtc(PeerId),
    /// The verified page. The shell now leaves `want:` and joins `have:`.
    Delivered {
        page: Page,
        transport: Transport,
        host: Option<PeerId>,
    },
    /// Nobody hosts the page.
    Gone,
    /// The page could not be had; the reason says why.
    Failed(FetchFailure),
}

/// Where a fetch stands, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the server to name a host.
    Asking,
    /// A host was named; waiting for its data channel to open.
    Connecting(PeerId),
    /// Bytes are arriving over the data channel.
    Receiving(PeerId),
    /// Waiting for the host to send the page through the server.
    Relaying(PeerId),
    Delivered(Transport),
    Gone,
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Delivered(_) | Phase::Gone | Phase::Failed)
    }
}

/// One visitor getting one page.
#[derive(Debug)]
pub struct Fetch {
    hash: PageHash,
    config: FetchConfig,
    phase: Phase,
    /// When the current phase times out.
    deadline: Option<Duration>,
    /// Ask for relay from now on: WebRTC could not connect.
    relay: bool,
    /// Hosts that failed this visitor; the server will not pick them again.
    exclude: Vec<PeerId>,
    /// How many of the excluded hosts sent wrong bytes.
    bad_hosts: u32,
    attempts: u32,
    receiver: Option<TransferReceiver>,
    /// A page arriving in parts through the server's relay.
    relayed: RelayReceiver,
    actions: VecDeque<FetchAction>,
}

impl Fetch {
    /// Starts fetching `hash`; the first action is the request, sent at once.
    pub fn new(hash: PageHash, config: FetchConfig, now: Duration) -> Self {
        let relay = !config.webrtc;
        let mut fetch = Self {
            hash,
            config,
            phase: Phase::Asking,
            deadline: None,
            relay,
            exclude: Vec::new(),
            bad_hosts: 0,
            attempts: 0,
            receiver: None,
            relayed: RelayReceiver::default(),
            actions: VecDeque::new(),
        };
        fetch.ask(now);
        fetch
    }

    pub fn hash(&self) -> PageHash {
        self.hash
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes received and total, while a page arrives over WebRTC or in
    /// parts through the server's relay.
    pub fn progress(&self) -> Option<(usize, usize)> {
        self.relayed
            .progress()
            .or_else(|| self.receiver.as_ref().and_then(TransferReceiver::progress))
    }

    /// The next thing the shell must do, if any.
    pub fn poll(&mut self) -> Option<FetchAction> {
        self.actions.pop_front()
    }

    /// When [`Fetch::on_tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Whether a `signal` from `peer` belongs to this fetch: only the host
    /// the server named may negotiate with us.
    pub fn accepts_signal_from(&self, peer: PeerId) -> bool {
        matches!(self.phase, Phase::Connecting(host) | Phase::Receiving(host) if host == peer)
    }

    /// The server named the host that will serve us.
    pub fn on_routed(&mut self, host: PeerId, now: Duration) {
        if self.phase != Phase::Asking {
            return;
        }
        if self.relay {
            self.enter(Phase::Relaying(host), now + self.config.relay_timeout);
        } else {
            self.receiver = Some(TransferReceiver::new(self.hash, self.config.max_page_bytes));
            self.enter(Phase::Connecting(host), now + self.config.rtc_timeout);
        }
    }

    /// The server says nobody (left) hosts the page.
    pub fn on_no_hosts(&mut self) {
        if self.phase != Phase::Asking {
            return;
        }
        if self.bad_hosts > 0 {
            self.finish(
                Phase::Failed,
                FetchAction::Failed(FetchFailure::WrongBytesFromEveryHost {
                    bad_hosts: self.bad_hosts,
                }),
            );
        } else {
            self.finish(Phase::Gone, FetchAction::Gone);
        }
    }

    /// The websocket came back after a drop: whatever was under way through
    /// the server is lost, so ask again.
    pub fn on_reconnected(&mut self, now: Duration) {
        self.relayed.reset();
        match self.phase {
            Phase::Asking | Phase::Relaying(_) => self.ask(now),
            Phase::Connecting(host) => {
                self.actions.push_back(FetchAction::CloseRtc(host));
                self.ask(now);
            }
            _ => {}
        }
    }

    /// The data channel to the current host opened.
    pub fn on_channel_open(&mut self, now: Duration) {
        if let Phase::Connecting(host) = self.phase {
            self.enter(Phase::Receiving(host), now + self.config.stall_timeout);
        }
    }

    /// A text message on the data channel.
    pub fn on_channel_text(&mut self, text: &str, now: Duration) {
        let outcome = self.receiver.as_mut().map(|r| r.on_text(text));
        self.on_transfer(outcome, now);
    }

    /// A binary message on the data channel.
    pub fn on_channel_binary(&mut self, message: &[u8], now: Duration) {
        let outcome = self.receiver.as_mut().map(|r| r.on_binary(message));
        self.on_transfer(outcome, now);
    }

    /// The peer connection failed or closed before the page was complete.
    pub fn on_rtc_failed(&mut self, now: Duration) {
        match self.phase {
            // Never connected: the network, not the host, is the likely
            // cause, so the same host may still relay.
            Phase::Connecting(host) => {
                self.relay = true;
                self.actions.push_back(FetchAction::CloseRtc(host));
                self.ask(now);
            }
            // Connected, then lost: the host went away.
            Phase::Receiving(host) => self.drop_host(host, false, now),
            _ => {}
        }
    }

    /// A part of a page relayed through the server. The parts of a page
    /// come one after another on the socket, and the page may answer an
    /// earlier request of ours: it is welcome in any phase, once verified.
    /// `max_relay` is the server's limit from our join reply, if it gave
    /// one. Parts that do not follow on from the last end the fetch.
    pub fn on_relay_part(&mut self, part: &ContentPart, max_relay: Option<usize>, now: Duration) {
        if self.phase.is_finished() {
            return;
        }
        let limits = RelayLimits {
            max_page: self.config.max_page_bytes,
            max_relay,
        };
        match self.relayed.on_part(part, limits) {
            Ok(Relayed::Partial { .. }) => {
                if let Phase::Connecting(host) | Phase::Receiving(host) = self.phase {
                    // The host answers through the server: its channel is
                    // of no more use, and the page is now relaying.
                    self.actions.push_back(FetchAction::CloseRtc(host));
                    self.receiver = None;
                    self.phase = Phase::Relaying(host);
                }
                if let Phase::Relaying(_) = self.phase {
                    self.deadline = Some(now + self.config.relay_timeout);
                }
            }
            Ok(Relayed::Complete(page)) => self.on_relayed_page(page, now),
            // The size is the page's, which the server checked: it is the
            // page that is too large, whoever sent it.
            Err(RelayError::Oversize { size, limit }) => {
                self.close_channel();
                self.fail(FetchFailure::PageTooLarge {
                    size: size as u64,
                    max: limit as u64,
                });
            }
            Err(error) => {
                self.close_channel();
                self.fail(FetchFailure::BadRelay(error));
            }
        }
    }

    /// Every part of a relayed page is in.
    fn on_relayed_page(&mut self, page: Page, now: Duration) {
        if page.hash() == self.hash {
            let host = match self.phase {
                Phase::Connecting(host) | Phase::Receiving(host) => {
                    self.actions.push_back(FetchAction::CloseRtc(host));
                    Some(host)
                }
                Phase::Relaying(host) => Some(host),
                _ => None,
            };
            self.deliver(page, Transport::Relay, host);
        } else if let Phase::Relaying(host) = self.phase {
            self.drop_host(host, true, now);
        }
    }

    /// Closes the peer connection of the current phase, if it has one.
    fn close_channel(&mut self) {
        if let Phase::Connecting(host) | Phase::Receiving(host) = self.phase {
            self.actions.push_back(FetchAction::CloseRtc(host));
        }
    }

    /// `content_unavailable`: the host we asked for relay says the page, of
    /// `size` bytes, is larger than the server relays. `max_relay` is the
    /// server's limit from our join reply, if it gave one.
    pub fn on_content_unavailable(
        &mut self,
        from: PeerId,
        size: u64,
        max_relay: Option<usize>,
        now: Duration,
    ) {
        if self.phase != Phase::Relaying(from) {
            // Not the host we are waiting on (a late answer to an earlier
            // request): it changes nothing.
            return;
        }
        let max_relay = max_relay.map(|max| max as u64);
        if max_relay.is_some_and(|max| size <= max) {
            // A size the server would relay: the host is wrong about
            // something, so ask another as if it had gone silent.
            self.drop_host(from, false, now);
            return;
        }
        let max = self.config.max_page_bytes as u64;
        let failure = if size > max {
            // Even WebRTC would not help: say the limit that can be changed.
            FetchFailure::PageTooLarge { size, max }
        } else {
            FetchFailure::TooLargeForRelay {
                size,
                max_relay,
                webrtc_tried: self.config.webrtc,
            }
        };
        self.fail(failure);
    }

    /// Time passed; act on whatever timed out.
    pub fn on_tick(&mut self, now: Duration) {
        if self.deadline.is_none_or(|deadline| now < deadline) {
            return;
        }
        match self.phase {
            Phase::Asking => self.ask(now),
            Phase::Connecting(_) => self.on_rtc_failed(now),
            Phase::Receiving(host) | Phase::Relaying(host) => self.drop_host(host, false, now),
            _ => {}
        }
    }

    fn on_transfer(&mut self, outcome: Option<Result<Received, TransferError>>, now: Duration) {
        let Phase::Receiving(host) = self.phase else {
            return;
        };
        match outcome {
            Some(Ok(Received::Partial { .. })) => {
                self.deadline = Some(now + self.config.stall_timeout);
            }
            Some(Ok(Received::Complete(page))) => {
                self.actions.push_back(FetchAction::CloseRtc(host));
                self.deliver(page, Transport::WebRtc, Some(host));
            }
            // The header names our page and a size over our limit: every
            // host has that page, so asking another would only repeat it.
            Some(Err(TransferError::Oversize { size, limit })) => {
                self.actions.push_back(FetchAction::CloseRtc(host));
                self.fail(FetchFailure::PageTooLarge {
                    size: size as u64,
                    max: limit as u64,
                });
            }
            Some(Err(_)) => self.drop_host(host, true, now),
            None => {}
        }
    }

    /// Stops using `host` for good and asks for another.
    fn drop_host(&mut self, host: PeerId, sent_wrong_bytes: bool, now: Duration) {
        if matches!(self.phase, Phase::Connecting(_) | Phase::Receiving(_)) {
            self.actions.push_back(FetchAction::CloseRtc(host));
        }
        if !self.exclude.contains(&host) {
            self.exclude.push(host);
        }
        if sent_wrong_bytes {
            self.bad_hosts += 1;
        }
        self.ask(now);
    }

    fn ask(&mut self, now: Duration) {
        self.receiver = None;
        if self.attempts >= self.config.max_attempts {
            let failure = FetchFailure::TooManyAttempts(self.attempts);
            self.finish(Phase::Failed, FetchAction::Failed(failure));
            return;
        }
        self.attempts += 1;
        self.actions.push_back(FetchAction::Request(ContentRequest {
            relay: self.relay,
            exclude: self.exclude.clone(),
        }));
        self.enter(Phase::Asking, now + self.config.relay_timeout);
    }

    fn deliver(&mut self, page: Page, transport: Transport, host: Option<PeerId>) {
        self.receiver = None;
        self.finish(
            Phase::Delivered(transport),
            FetchAction::Delivered {
                page,
                transport,
                host,
            },
        );
    }

    fn fail(&mut self, failure: FetchFailure) {
        self.receiver = None;
        self.finish(Phase::Failed, FetchAction::Failed(failure));
    }

    fn enter(&mut self, phase: Phase, deadline: Duration) {
        self.phase = phase;
        self.deadline = Some(deadline);
    }

    fn finish(&mut self, phase: Phase, action: FetchAction) {
        self.phase = phase;
        self.deadline = None;
        self.actions.push_back(action);
    }
}

#[cfg(test)]
mod tests;
