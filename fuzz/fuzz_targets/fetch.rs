//! Fuzz target `fetch`: the visitor's state machine `Fetch` driven by an
//! arbitrary sequence of what its shells feed it — server replies, routes
//! to hosts from a small set, data-channel events with honest, forged and
//! garbage messages, relayed pages in honest and arbitrary parts — while
//! time moves forward by arbitrary steps. Every action is polled and
//! checked after each event.
//!
//! Checks: nothing panics; a finished fetch stays finished, its terminal
//! action (`Delivered`, `Gone`, `Failed`) is the last action ever and
//! matches its phase; a delivered page hashes to the address, fits the
//! limit and came from an event that carried it; a "too large" failure
//! names a size really over the limit it names; requests never exceed
//! `max_attempts`, never forget an excluded host and never go back from
//! relay to WebRTC; only routed hosts are closed or excluded; a broken
//! relay is blamed only on relayed parts; deadlines, progress and signal
//! acceptance agree with the phase.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use ephemeral_shared::protocol::ContentPart;
use ephemeral_shared::relay::{RelayError, parts};
use ephemeral_shared::transfer::TransferSender;
use ephemeral_shared::{
    Fetch, FetchAction, FetchConfig, FetchFailure, Page, PageHash, PeerId, Phase, Transport,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    /// The page being fetched; its hash is the address.
    page: String,
    steps: Vec<Step>,
}

/// Timeouts in milliseconds: the shells' settings are seconds, bounded by
/// what a person types, so a `u16` of milliseconds covers the interesting
/// range (zero included) without the `Duration` overflow that only a
/// timeout of ~584 billion years could reach.
#[derive(Debug, Arbitrary)]
struct Config {
    rtc_timeout_ms: u16,
    stall_timeout_ms: u16,
    relay_timeout_ms: u16,
    max_attempts: u8,
    max_page_bytes: u16,
    webrtc: bool,
}

#[derive(Debug, Arbitrary)]
struct Step {
    /// Time never goes backwards: shells read a monotonic clock.
    advance_ms: u16,
    event: Event,
}

/// A small set, so the fuzzer routes to the same host twice, to an
/// excluded one, and to one it never heard of.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Host {
    A,
    B,
    C,
    D,
}

impl Host {
    const ALL: [Host; 4] = [Host::A, Host::B, Host::C, Host::D];

    fn id(self) -> PeerId {
        PeerId::from_random(self as u128 + 1)
    }
}

#[derive(Debug, Arbitrary)]
enum Event {
    Routed(Host),
    NoHosts,
    Reconnected,
    ChannelOpen,
    /// The header an honest host sends for the page.
    HonestHeader,
    ChannelText(String),
    /// One chunk of the page as an honest host splits it.
    HonestChunk {
        index: u16,
        message_size: u16,
    },
    /// Header and every chunk, back to back.
    HonestTransfer {
        message_size: u16,
    },
    ChannelBinary(Vec<u8>),
    RtcFailed,
    /// The page itself, relayed through the server in its parts.
    RelayPage,
    /// Another text, relayed in its parts.
    RelayText(String),
    /// Any part at all, with the relay limit the join reply gave (if any).
    RelayPart {
        text: String,
        offset: u32,
        size: u32,
        max_relay: Option<u32>,
    },
    /// `content_unavailable` from a host, with the relay limit the join
    /// reply gave (if any).
    ContentUnavailable {
        host: Host,
        size: u32,
        max_relay: Option<u32>,
    },
    Tick,
}

impl Event {
    fn carries_webrtc_data(&self) -> bool {
        matches!(
            self,
            Event::HonestHeader
                | Event::ChannelText(_)
                | Event::HonestChunk { .. }
                | Event::HonestTransfer { .. }
                | Event::ChannelBinary(_)
        )
    }

    fn carries_relay_data(&self) -> bool {
        matches!(
            self,
            Event::RelayPage | Event::RelayText(_) | Event::RelayPart { .. }
        )
    }

    /// Events that can tell the page's size: a transfer header, the
    /// relayed page itself, or a host's `content_unavailable`.
    fn tells_size(&self) -> bool {
        matches!(
            self,
            Event::HonestHeader
                | Event::ChannelText(_)
                | Event::HonestTransfer { .. }
                | Event::ContentUnavailable { .. }
        ) || self.carries_relay_data()
    }
}

fuzz_target!(|input: Input| {
    let config = FetchConfig {
        rtc_timeout: Duration::from_millis(input.config.rtc_timeout_ms.into()),
        stall_timeout: Duration::from_millis(input.config.stall_timeout_ms.into()),
        relay_timeout: Duration::from_millis(input.config.relay_timeout_ms.into()),
        max_attempts: input.config.max_attempts.into(),
        max_page_bytes: input.config.max_page_bytes.into(),
        webrtc: input.config.webrtc,
    };
    let page = Page::new(input.page.as_bytes().to_vec());
    let page = &page;
    let mut now = Duration::ZERO;
    let mut fetch = Fetch::new(page.hash(), config.clone(), now);
    let mut model = Model::new(config);
    model.after(&mut fetch, None, now);

    for step in &input.steps {
        now += Duration::from_millis(step.advance_ms.into());
        match &step.event {
            Event::Routed(host) => fetch.on_routed(host.id(), now),
            Event::NoHosts => fetch.on_no_hosts(),
            Event::Reconnected => fetch.on_reconnected(now),
            Event::ChannelOpen => fetch.on_channel_open(now),
            Event::HonestHeader => {
                let sender = TransferSender::new(page, usize::MAX);
                fetch.on_channel_text(&sender.header(), now);
            }
            Event::ChannelText(text) => fetch.on_channel_text(text, now),
            Event::HonestChunk {
                index,
                message_size,
            } => {
                let sender = TransferSender::new(page, usize::from(*message_size));
                if let Some(chunk) = sender.chunks().nth(usize::from(*index)) {
                    fetch.on_channel_binary(&chunk, now);
                }
            }
            Event::HonestTransfer { message_size } => {
                let sender = TransferSender::new(page, usize::from(*message_size));
                fetch.on_channel_text(&sender.header(), now);
                for chunk in sender.chunks() {
                    fetch.on_channel_binary(&chunk, now);
                }
            }
            Event::ChannelBinary(bytes) => fetch.on_channel_binary(bytes, now),
            Event::RtcFailed => fetch.on_rtc_failed(now),
            Event::RelayPage => relay(&mut fetch, &input.page, now),
            Event::RelayText(text) => relay(&mut fetch, text, now),
            Event::RelayPart {
                text,
                offset,
                size,
                max_relay,
            } => {
                let part = ContentPart {
                    content: text.into(),
                    offset: *offset as usize,
                    size: *size as usize,
                };
                fetch.on_relay_part(&part, max_relay.map(|max| max as usize), now);
            }
            Event::ContentUnavailable {
                host,
                size,
                max_relay,
            } => fetch.on_content_unavailable(
                host.id(),
                (*size).into(),
                max_relay.map(|max| max as usize),
                now,
            ),
            Event::Tick => fetch.on_tick(now),
        }
        model.routed(&step.event);
        model.after(&mut fetch, Some(&step.event), now);
    }
});

/// Every part of `text`, as the server relays it.
fn relay(fetch: &mut Fetch, text: &str, now: Duration) {
    for part in parts(text) {
        fetch.on_relay_part(&part, None, now);
    }
}

/// What the fetch has told the shell so far, to check the next actions
/// against.
struct Model {
    config: FetchConfig,
    /// Hosts the server ever named.
    routed: Vec<PeerId>,
    requests: u32,
    last_request: Option<(bool, Vec<PeerId>)>,
    /// The terminal action, once it came.
    ended: Option<FetchAction>,
}

impl Model {
    fn new(config: FetchConfig) -> Self {
        Self {
            config,
            routed: Vec::new(),
            requests: 0,
            last_request: None,
            ended: None,
        }
    }

    fn routed(&mut self, event: &Event) {
        if let Event::Routed(host) = event
            && !self.routed.contains(&host.id())
        {
            self.routed.push(host.id());
        }
    }

    /// Drains and checks the actions `event` (`None`: creation) caused,
    /// then checks the fetch's state.
    fn after(&mut self, fetch: &mut Fetch, event: Option<&Event>, now: Duration) {
        while let Some(action) = fetch.poll() {
            self.action(fetch.hash(), action, event);
        }

        let phase = fetch.phase();
        match (&self.ended, phase) {
            (None, phase) => assert!(!phase.is_finished(), "{phase:?} without its action"),
            (Some(FetchAction::Delivered { transport, .. }), Phase::Delivered(t)) => {
                assert_eq!(*transport, t);
            }
            (Some(FetchAction::Gone), Phase::Gone) => {}
            (Some(FetchAction::Failed(_)), Phase::Failed) => {}
            (Some(ended), phase) => panic!("ended with {ended:?} but the phase is {phase:?}"),
        }
        // Only a finished fetch has nothing left to time out.
        assert_eq!(fetch.next_deadline().is_none(), phase.is_finished());
        if matches!(event, Some(Event::Tick)) {
            // A tick acts on every deadline it passed, so none is left
            // behind it.
            assert!(fetch.next_deadline().is_none_or(|deadline| deadline >= now));
        }
        for host in Host::ALL.map(Host::id) {
            let talking = matches!(phase, Phase::Connecting(h) | Phase::Receiving(h) if h == host);
            assert_eq!(fetch.accepts_signal_from(host), talking);
        }
        if let Some((received, size)) = fetch.progress() {
            assert!(received <= size && size <= self.config.max_page_bytes);
        }
    }

    fn action(&mut self, hash: PageHash, action: FetchAction, event: Option<&Event>) {
        if let Some(ended) = &self.ended {
            panic!("{action:?} after the fetch ended with {ended:?}");
        }
        match &action {
            FetchAction::Request(request) => {
                self.requests += 1;
                assert!(self.requests <= self.config.max_attempts);
                let mut unique = request.exclude.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), request.exclude.len(), "excluded twice");
                assert!(request.exclude.iter().all(|h| self.routed.contains(h)));
                match &self.last_request {
                    None => assert_eq!(request.relay, !self.config.webrtc),
                    Some((relay, exclude)) => {
                        assert!(request.relay || !relay, "went back from relay to WebRTC");
                        assert!(request.exclude.starts_with(exclude), "forgot a bad host");
                    }
                }
                self.last_request = Some((request.relay, request.exclude.clone()));
                return;
            }
            FetchAction::CloseRtc(host) => {
                assert!(self.routed.contains(host), "closed a host never routed");
                return;
            }
            FetchAction::Delivered {
                page,
                transport,
                host,
            } => {
                assert_eq!(PageHash::of(page.bytes()), hash, "delivered the wrong page");
                assert!(host.is_none_or(|h| self.routed.contains(&h)));
                let event = event.expect("delivered before any event");
                match transport {
                    Transport::WebRtc => {
                        assert!(event.carries_webrtc_data(), "WebRTC delivery on {event:?}");
                        assert!(host.is_some());
                    }
                    Transport::Relay => {
                        assert!(event.carries_relay_data(), "relay delivery on {event:?}");
                    }
                }
                assert!(page.len() <= self.config.max_page_bytes, "over the limit");
            }
            FetchAction::Gone => {
                assert!(matches!(event, Some(Event::NoHosts)), "gone on {event:?}");
            }
            FetchAction::Failed(FetchFailure::WrongBytesFromEveryHost { bad_hosts }) => {
                assert!(matches!(event, Some(Event::NoHosts)), "failed on {event:?}");
                assert!(*bad_hosts > 0);
            }
            FetchAction::Failed(FetchFailure::TooManyAttempts(attempts)) => {
                assert_eq!(*attempts, self.config.max_attempts);
                assert_eq!(self.requests, self.config.max_attempts);
            }
            FetchAction::Failed(FetchFailure::PageTooLarge { size, max }) => {
                let event = event.expect("too large before any event");
                assert!(event.tells_size(), "too large on {event:?}");
                assert_eq!(*max, self.config.max_page_bytes as u64);
                assert!(size > max, "{size} bytes called too large for {max}");
            }
            FetchAction::Failed(FetchFailure::TooLargeForRelay {
                size,
                max_relay,
                webrtc_tried,
            }) => {
                let event = event.expect("too large before any event");
                assert!(
                    matches!(event, Event::ContentUnavailable { .. }),
                    "too large for relay on {event:?}"
                );
                assert!(max_relay.is_none_or(|max| *size > max));
                // Over our own limit it would have been `PageTooLarge`.
                assert!(*size <= self.config.max_page_bytes as u64);
                assert_eq!(*webrtc_tried, self.config.webrtc);
            }
            FetchAction::Failed(FetchFailure::BadRelay(error)) => {
                let event = event.expect("a bad relay before any event");
                assert!(event.carries_relay_data(), "bad relay on {event:?}");
                if let RelayError::OverRelayLimit { size, max } = error {
                    assert!(
                        matches!(event, Event::RelayPart { max_relay: Some(m), .. } if *m as usize == *max)
                    );
                    assert!(size > max);
                }
                assert!(
                    !matches!(error, RelayError::Oversize { .. }),
                    "said as too large"
                );
            }
        }
        self.ended = Some(action);
    }
}
