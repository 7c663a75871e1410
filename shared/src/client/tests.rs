//! The client against a scripted server: every frame it sends is read back
//! and answered by hand, time is a number, so reconnects, heartbeats and
//! upload timeouts run in microseconds.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;
use crate::fetch::Phase;
use crate::frame::Frame;
use crate::hash::bytes_hashed;
use crate::protocol::{Reason, SignalFrom};
use crate::relay::RelayError;
use crate::transfer::TransferSender;

const PAGE: &[u8] = b"a page";

fn page() -> Page {
    Page::new(PAGE.to_vec())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn peer(n: u128) -> PeerId {
    PeerId::from_random(n)
}

/// A client and everything it has asked for, sorted by kind.
struct Harness {
    client: Client,
    now: Duration,
    sent: Vec<Frame>,
    socket: Vec<Transmit>,
    rtc: Vec<Output>,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        Self::with(ClientConfig::default())
    }

    fn with(config: ClientConfig) -> Self {
        let client = Client::new(config, 7, Duration::ZERO);
        let mut harness = Self {
            client,
            now: Duration::ZERO,
            sent: Vec::new(),
            socket: Vec::new(),
            rtc: Vec::new(),
            events: Vec::new(),
        };
        harness.drain();
        assert_eq!(harness.socket, [Transmit::Connect]);
        harness.socket.clear();
        harness.client.on_connected(harness.now);
        harness.drain();
        harness
    }

    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Socket(Transmit::Send(frame)) => {
                    let text = frame.encode();
                    let parsed = Frame::parse(&text).expect("the client sends valid frames");
                    self.sent.push(parsed);
                }
                Output::Socket(transmit) => self.socket.push(transmit),
                Output::Event(event) => self.events.push(event),
                other => self.rtc.push(other),
            }
        }
    }

    /// Runs the timer until `until`, as a shell would: at each deadline.
    fn run_until(&mut self, until: Duration) {
        for _ in 0..10_000 {
            let next = self.client.next_deadline();
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
    }

    fn receive(&mut self, frame: Frame) {
        let frame = Frame::parse(&frame.encode()).expect("the server sends valid frames");
        self.client.on_frame(frame, self.now);
        self.drain();
    }

    /// The last frame sent with this event, and forgets what was sent.
    fn take_sent(&mut self, event: &str) -> Frame {
        let frame = self
            .sent
            .iter()
            .rev()
            .find(|f| f.event == event)
            .cloned()
            .unwrap_or_else(|| panic!("no {event} sent; sent: {:?}", self.sent));
        self.sent.clear();
        frame
    }

    fn reply(&mut self, to: &Frame, status: &str, response: Value) {
        let Value::Object(response) = response else {
            panic!("responses are objects");
        };
        let mut payload = Map::new();
        payload.insert("status".into(), status.into());
        payload.insert("response".into(), Value::Object(response));
        self.receive(Frame::new(
            to.join_ref.clone(),
            to.msg_ref.clone(),
            to.topic.clone(),
            event::REPLY,
            payload,
        ));
    }

    fn accept_join(&mut self, join: &Frame) {
        let reply = json!({"peer_id": peer(1), "count": 1, "waiting": 0, "ice_servers": [],
                           "max_relay_bytes": 1000});
        self.reply(join, "ok", reply);
    }

    fn push(&mut self, join: &Frame, event: &str, payload: Value) {
        let Value::Object(payload) = payload else {
            panic!("payloads are objects");
        };
        self.receive(Frame::new(
            join.join_ref.clone(),
            None,
            join.topic.clone(),
            event,
            payload,
        ));
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn take_rtc(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.rtc)
    }

    /// Starts a fetch and has the server accept its join; returns the join
    /// and the first `content_request`.
    fn fetching(&mut self) -> (Frame, Frame) {
        let hash = PageHash::of(PAGE);
        self.client
            .fetch(hash, true, self.now)
            .expect("a new fetch");
        self.drain();
        let join = self.take_sent(event::JOIN);
        assert_eq!(join.topic, Topic::want(hash).to_string());
        self.accept_join(&join);
        let request = self.take_sent(event::CONTENT_REQUEST);
        (join, request)
    }

    /// Shares [`PAGE`] and has the server accept it.
    fn hosting(&mut self) -> Frame {
        self.client.share(page());
        self.drain();
        let join = self.take_sent(event::JOIN);
        self.accept_join(&join);
        join
    }
}

fn offer() -> SignalBody {
    SignalBody::Offer { sdp: "v=0".into() }
}

fn candidate() -> SignalBody {
    SignalBody::Candidate {
        candidate: "candidate:1".into(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
    }
}

fn signal(from: PeerId, body: SignalBody) -> Value {
    serde_json::to_value(SignalFrom { from, body }).expect("signals serialize")
}

fn opened(rtc: &[Output]) -> Vec<ConnId> {
    rtc.iter()
        .filter_map(|o| match o {
            Output::OpenRtc { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn closed(rtc: &[Output]) -> Vec<ConnId> {
    rtc.iter()
        .filter_map(|o| match o {
            Output::CloseRtc { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

// ---- the session: link, heartbeat, reconnect, rejoin ----

#[test]
fn a_lost_link_reconnects_with_growing_jittered_delays_and_rejoins() {
    let mut h = Harness::new();
    let join = h.hosting();
    assert!(
        h.take_events()
            .contains(&Event::Hosting(PageHash::of(PAGE)))
    );
    let mut delays = Vec::new();
    for _ in 0..8 {
        h.client.on_disconnected(h.now);
        h.drain();
        let delay = h.client.next_deadline() - h.now;
        delays.push(delay);
        h.run_until(h.now + delay);
        assert_eq!(h.socket.pop(), Some(Transmit::Connect));
        h.client.on_connected(h.now);
        h.drain();
    }
    // A success resets the backoff: every drop waits half to all of 100 ms.
    for delay in &delays {
        assert!(*delay >= ms(50) && *delay <= ms(100), "{delays:?}");
    }
    // After a reconnect the page is joined again, without the first join's
    // payload, on a fresh join ref.
    let rejoin = h.take_sent(event::JOIN);
    assert_eq!(rejoin.topic, join.topic);
    assert_ne!(rejoin.join_ref, join.join_ref);
    assert!(rejoin.payload.is_empty());
    assert!(
        h.take_events()
            .iter()
            .any(|e| matches!(e, Event::Offline(LinkLoss::Closed)))
    );
}

#[test]
fn failed_connects_back_off_exponentially_up_to_the_cap() {
    let mut h = Harness::new();
    h.client.on_disconnected(h.now);
    h.drain();
    let mut delays = Vec::new();
    for _ in 0..10 {
        let delay = h.client.next_deadline() - h.now;
        delays.push(delay);
        h.run_until(h.now + delay);
        assert_eq!(h.socket.pop(), Some(Transmit::Connect));
        h.client.on_connect_failed(h.now);
        h.drain();
    }
    let cap = SessionConfig::default().reconnect_max;
    assert!(delays[3] >= ms(400), "{delays:?}");
    assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
    assert!(delays[9] >= cap / 2, "{delays:?}");
}

#[test]
fn a_connect_that_hangs_is_abandoned_and_retried() {
    let mut h = Harness::new();
    h.client.on_disconnected(h.now);
    h.drain();
    h.run_until(h.now + ms(100));
    assert_eq!(h.socket.pop(), Some(Transmit::Connect));
    h.run_until(h.now + SessionConfig::default().connect_timeout);
    assert_eq!(h.socket.pop(), Some(Transmit::Close));
}

#[test]
fn an_unanswered_heartbeat_drops_the_link_an_answered_one_keeps_it() {
    let mut h = Harness::new();
    let interval = SessionConfig::default().heartbeat_interval;
    h.run_until(interval);
    let beat = h.take_sent(event::HEARTBEAT);
    h.reply(&beat, "ok", json!({}));
    h.run_until(interval * 2);
    let beat = h.take_sent(event::HEARTBEAT);
    assert!(h.socket.is_empty(), "answered heartbeats keep the link");
    assert!(h.client.status().online);
    let _ = beat;
    h.run_until(interval * 3);
    assert_eq!(h.socket, [Transmit::Close]);
    assert!(!h.client.status().online);
    assert!(
        h.take_events()
            .contains(&Event::Offline(LinkLoss::HeartbeatUnanswered))
    );
}

#[test]
fn phx_error_rejoins_and_pushes_of_the_old_join_are_dropped() {
    let mut h = Harness::new();
    let join = h.hosting();
    h.push(&join, event::ERROR, json!({}));
    let rejoin = h.take_sent(event::JOIN);
    assert_eq!(rejoin.topic, join.topic);
    assert!(!h.client.is_hosting(PageHash::of(PAGE)));
    h.accept_join(&rejoin);
    assert!(h.client.is_hosting(PageHash::of(PAGE)));
    // A visitor routed on the old membership: the server has ended it.
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(9), "relay": false}),
    );
    assert!(h.take_rtc().is_empty());
    h.push(
        &rejoin,
        event::CONTENT_REQUEST,
        json!({"from": peer(9), "relay": false}),
    );
    assert_eq!(opened(&h.take_rtc()).len(), 1);
}

#[test]
fn pushes_carry_the_join_ref_of_their_topic() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    assert_eq!(request.join_ref, join.join_ref);
}

// ---- fetching ----

#[test]
fn replies_to_an_older_content_request_are_ignored() {
    let mut h = Harness::new();
    let (_, first) = h.fetching();
    // No reply: the fetch asks again after its relay timeout.
    h.run_until(h.now + FetchConfig::default().relay_timeout);
    let second = h.take_sent(event::CONTENT_REQUEST);
    assert_ne!(first.msg_ref, second.msg_ref);
    let hash = PageHash::of(PAGE);
    h.reply(&first, "ok", json!({"host": peer(2)}));
    assert_eq!(
        h.client.fetch_progress(hash).map(|p| p.0),
        Some(Phase::Asking)
    );
    h.reply(&second, "ok", json!({"host": peer(3)}));
    assert_eq!(
        h.client.fetch_progress(hash).map(|p| p.0),
        Some(Phase::Connecting(peer(3)))
    );
}

#[test]
fn a_hosts_signals_before_the_reply_naming_it_are_kept_and_replayed() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    let host = peer(2);
    h.push(&join, event::SIGNAL, signal(host, offer()));
    h.push(&join, event::SIGNAL, signal(host, candidate()));
    assert!(h.take_rtc().is_empty(), "no host named yet");
    h.reply(&request, "ok", json!({"host": host}));
    let rtc = h.take_rtc();
    let conn = opened(&rtc)[0];
    assert_eq!(
        rtc[1..],
        [
            Output::SignalRtc {
                conn,
                body: offer()
            },
            Output::SignalRtc {
                conn,
                body: candidate()
            },
        ]
    );
}

#[test]
fn early_signals_are_bounded() {
    let mut h = Harness::with(ClientConfig {
        max_early_signals: 3,
        ..ClientConfig::default()
    });
    let (join, request) = h.fetching();
    let host = peer(2);
    h.push(&join, event::SIGNAL, signal(host, offer()));
    for _ in 0..10 {
        h.push(&join, event::SIGNAL, signal(host, candidate()));
    }
    h.reply(&request, "ok", json!({"host": host}));
    // The connection, the offer and two candidates.
    assert_eq!(h.take_rtc().len(), 4);
}

#[test]
fn only_the_named_host_may_signal_and_a_new_offer_replaces_the_connection() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    let host = peer(2);
    h.reply(&request, "ok", json!({"host": host}));
    h.push(&join, event::SIGNAL, signal(peer(66), offer()));
    assert!(h.take_rtc().is_empty());
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let first = opened(&h.take_rtc())[0];
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let rtc = h.take_rtc();
    assert_eq!(closed(&rtc), [first]);
    let second = opened(&rtc)[0];
    assert_ne!(first, second);
    // Events of the replaced connection change nothing.
    h.client.on_rtc(first, RtcEvent::Open, h.now);
    h.drain();
    assert_eq!(
        h.client.fetch_progress(PageHash::of(PAGE)).map(|p| p.0),
        Some(Phase::Connecting(host))
    );
}

#[test]
fn a_page_over_webrtc_is_verified_hosted_and_then_want_is_left() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    let host = peer(2);
    h.reply(&request, "ok", json!({"host": host}));
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let conn = opened(&h.take_rtc())[0];
    h.client.on_rtc(conn, RtcEvent::Signal(candidate()), h.now);
    h.drain();
    let sent = h.take_sent(event::SIGNAL);
    assert_eq!(sent.payload["to"], json!(host));
    h.now += ms(20);
    h.client.on_rtc(conn, RtcEvent::Open, h.now);
    h.client
        .on_rtc(conn, RtcEvent::Path(Some(Path::Direct)), h.now);
    let page = page();
    let sender = TransferSender::new(&page, 4);
    h.client
        .on_rtc(conn, RtcEvent::Text(sender.header()), h.now);
    for chunk in sender.chunks() {
        h.client.on_rtc(conn, RtcEvent::Binary(chunk), h.now);
    }
    h.drain();
    assert_eq!(closed(&h.take_rtc()), [conn]);
    // Host before leaving want, and the first join of have says the path.
    let order: Vec<(String, String)> = h
        .sent
        .iter()
        .map(|f| (f.event.clone(), f.topic.clone()))
        .collect();
    let hash = PageHash::of(PAGE);
    assert_eq!(
        order,
        [
            (event::JOIN.to_string(), Topic::have(hash).to_string()),
            (event::LEAVE.to_string(), Topic::want(hash).to_string()),
        ]
    );
    assert_eq!(h.sent[0].payload["path"], json!("direct"));
    let delivered = h.take_events().into_iter().find_map(|e| match e {
        Event::Delivered(d) => Some(d),
        _ => None,
    });
    let delivered = delivered.expect("delivered");
    assert_eq!(delivered.page.bytes(), PAGE);
    assert_eq!(delivered.path, Some(Path::Direct));
    assert_eq!(delivered.channel_open, Some(ms(20)));
    assert_eq!(delivered.requests, 1);
}

/// Verified as it arrives, then hosted and served to the next visitor:
/// each byte is hashed once on the way, never again to host or serve it.
#[test]
fn a_fetched_page_is_hashed_once_from_arrival_to_serving_it() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    let host = peer(2);
    h.reply(&request, "ok", json!({"host": host}));
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let conn = opened(&h.take_rtc())[0];
    h.client.on_rtc(conn, RtcEvent::Open, h.now);
    let sent = page();
    let sender = TransferSender::new(&sent, 4);
    let before = bytes_hashed();
    h.client
        .on_rtc(conn, RtcEvent::Text(sender.header()), h.now);
    for chunk in sender.chunks() {
        h.client.on_rtc(conn, RtcEvent::Binary(chunk), h.now);
    }
    h.drain();
    assert!(
        h.take_events()
            .iter()
            .any(|e| matches!(e, Event::Delivered(d) if d.page.bytes() == PAGE))
    );
    let have = h.take_sent(event::JOIN);
    h.accept_join(&have);
    assert!(h.client.is_hosting(sent.hash()));

    let visitor = peer(5);
    h.push(
        &have,
        event::CONTENT_REQUEST,
        json!({"from": visitor, "relay": false}),
    );
    let upload = opened(&h.take_rtc())[0];
    h.client.on_rtc(upload, RtcEvent::Open, h.now);
    h.drain();
    let served = h.take_rtc().into_iter().find_map(|output| match output {
        Output::SendPage { page, .. } => Some(page),
        _ => None,
    });
    let served = served.expect("the page is sent to the visitor");
    let header: crate::transfer::TransferHeader =
        serde_json::from_str(&TransferSender::new(&served, 4).header()).expect("a header");
    assert_eq!(header.hash, sent.hash());
    assert_eq!(bytes_hashed() - before, PAGE.len());
}

#[test]
fn a_path_known_only_after_delivery_is_still_reported() {
    let mut h = Harness::new();
    let (join, request) = h.fetching();
    let host = peer(2);
    h.reply(&request, "ok", json!({"host": host}));
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let conn = opened(&h.take_rtc())[0];
    h.client.on_rtc(conn, RtcEvent::Open, h.now);
    let page = page();
    let sender = TransferSender::new(&page, 1024);
    h.client
        .on_rtc(conn, RtcEvent::Text(sender.header()), h.now);
    for chunk in sender.chunks() {
        h.client.on_rtc(conn, RtcEvent::Binary(chunk), h.now);
    }
    h.client
        .on_rtc(conn, RtcEvent::Path(Some(Path::Turn)), h.now);
    h.drain();
    assert!(h.take_events().contains(&Event::PathKnown {
        hash: PageHash::of(PAGE),
        path: Path::Turn
    }));
}

#[test]
fn no_hosts_ends_the_fetch_as_gone_and_leaves_want() {
    let mut h = Harness::new();
    let (_, request) = h.fetching();
    h.reply(&request, "error", json!({"reason": "no_hosts"}));
    let hash = PageHash::of(PAGE);
    assert!(h.take_events().contains(&Event::FetchEnded {
        hash,
        error: FetchError::Gone
    }));
    assert_eq!(
        h.take_sent(event::LEAVE).topic,
        Topic::want(hash).to_string()
    );
    assert_eq!(h.client.fetch_progress(hash), None);
}

#[test]
fn a_reconnect_mid_fetch_asks_again_on_the_new_link() {
    let mut h = Harness::new();
    let (_, request) = h.fetching();
    h.client.on_disconnected(h.now);
    h.drain();
    // The reply to the old link's request never comes; a late one is stale.
    h.run_until(h.now + ms(100));
    h.client.on_connected(h.now);
    h.drain();
    let rejoin = h.take_sent(event::JOIN);
    h.reply(&request, "ok", json!({"host": peer(2)}));
    h.accept_join(&rejoin);
    let again = h.take_sent(event::CONTENT_REQUEST);
    assert_eq!(again.join_ref, rejoin.join_ref);
    assert_eq!(
        h.client.fetch_progress(PageHash::of(PAGE)).map(|p| p.0),
        Some(Phase::Asking)
    );
}

#[test]
fn a_refused_want_join_ends_the_fetch_with_the_servers_reason() {
    let mut h = Harness::new();
    let hash = PageHash::of(PAGE);
    h.client.fetch(hash, true, h.now).expect("a new fetch");
    h.drain();
    let join = h.take_sent(event::JOIN);
    h.reply(&join, "error", json!({"reason": "too_many_topics"}));
    let ended = h.take_events().into_iter().find_map(|e| match e {
        Event::FetchEnded { error, .. } => Some(error),
        _ => None,
    });
    match ended {
        Some(FetchError::Refused(refusal)) => {
            assert_eq!(refusal.reason(), Some(Reason::TooManyTopics));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fetching_twice_or_a_hosted_page_is_refused() {
    let mut h = Harness::new();
    let hash = PageHash::of(PAGE);
    h.hosting();
    assert_eq!(
        h.client.fetch(hash, true, h.now),
        Err(StartError::AlreadyHosted)
    );
    let other = PageHash::of(b"other");
    assert_eq!(h.client.fetch(other, true, h.now), Ok(()));
    assert_eq!(
        h.client.fetch(other, true, h.now),
        Err(StartError::AlreadyFetching)
    );
}

// ---- hosting ----

#[test]
fn an_upload_is_offered_sent_once_open_and_delivered_when_the_visitor_closes() {
    let mut h = Harness::new();
    let join = h.hosting();
    let visitor = peer(5);
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": visitor, "relay": false}),
    );
    let conn = opened(&h.take_rtc())[0];
    h.client.on_rtc(conn, RtcEvent::Signal(offer()), h.now);
    h.drain();
    assert_eq!(h.take_sent(event::SIGNAL).payload["to"], json!(visitor));
    h.push(&join, event::SIGNAL, signal(peer(6), candidate()));
    assert!(
        h.take_rtc().is_empty(),
        "only the visitor served may signal"
    );
    h.client.on_rtc(conn, RtcEvent::Open, h.now);
    h.drain();
    assert_eq!(h.take_rtc(), [Output::SendPage { conn, page: page() }]);
    h.client.on_rtc(conn, RtcEvent::Sent, h.now);
    h.client
        .on_rtc(conn, RtcEvent::Closed("done".into()), h.now);
    h.drain();
    assert!(h.take_events().contains(&Event::UploadEnded {
        hash: PageHash::of(PAGE),
        visitor,
        transport: Transport::WebRtc,
        delivered: true,
    }));
}

#[test]
fn uploads_that_never_open_or_never_end_are_abandoned() {
    let mut h = Harness::new();
    let join = h.hosting();
    let config = ClientConfig::default();
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": false}),
    );
    let never_opens = opened(&h.take_rtc())[0];
    h.run_until(h.now + config.upload_open_timeout - ms(1));
    assert!(closed(&h.rtc).is_empty());
    h.run_until(h.now + ms(1));
    assert_eq!(closed(&h.take_rtc()), [never_opens]);
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(6), "relay": false}),
    );
    let started = h.now;
    let stays_open = opened(&h.take_rtc())[0];
    h.client.on_rtc(stays_open, RtcEvent::Open, h.now);
    h.drain();
    h.run_until(started + config.upload_max - ms(1));
    assert!(closed(&h.rtc).is_empty());
    h.run_until(started + config.upload_max);
    assert_eq!(closed(&h.take_rtc()), [stays_open]);
    let ended = h
        .take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::UploadEnded {
                    delivered: false,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ended, 2);
}

#[test]
fn a_repeated_request_from_a_visitor_restarts_its_upload() {
    let mut h = Harness::new();
    let join = h.hosting();
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": false}),
    );
    let first = opened(&h.take_rtc())[0];
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": false}),
    );
    let rtc = h.take_rtc();
    assert_eq!(closed(&rtc), [first]);
    assert_eq!(opened(&rtc).len(), 1);
}

#[test]
fn relay_requests_are_answered_with_the_page_or_its_size() {
    let mut h = Harness::new();
    let join = h.hosting();
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": true}),
    );
    let content = h.take_sent(event::CONTENT);
    assert_eq!(content.payload["content"], json!("a page"));
    h.reply(&content, "error", json!({"reason": "not_requested"}));
    assert!(h.take_events().iter().any(|e| matches!(
        e,
        Event::PushRefused { event: "content", refusal, .. } if refusal.reason() == Some(Reason::NotRequested)
    )));

    // A page over the server's relay limit (1000 bytes in these replies).
    let big = vec![b'x'; 2000];
    h.client.share(Page::new(big));
    h.drain();
    let join = h.take_sent(event::JOIN);
    h.accept_join(&join);
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": true}),
    );
    let refusal = h.take_sent(event::CONTENT_UNAVAILABLE);
    assert_eq!(refusal.payload["size"], json!(2000));
}

#[test]
fn unsharing_ends_uploads_and_leaves_have() {
    let mut h = Harness::new();
    let join = h.hosting();
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(5), "relay": false}),
    );
    let conn = opened(&h.take_rtc())[0];
    h.client.unshare(PageHash::of(PAGE));
    h.drain();
    assert_eq!(closed(&h.take_rtc()), [conn]);
    assert_eq!(h.take_sent(event::LEAVE).topic, join.topic);
    // A late push on the left topic is dropped.
    h.push(
        &join,
        event::CONTENT_REQUEST,
        json!({"from": peer(6), "relay": false}),
    );
    assert!(h.take_rtc().is_empty());
}

#[test]
fn shutdown_ends_fetches_closes_everything_and_never_reconnects() {
    let mut h = Harness::new();
    h.client.share(Page::new(b"another page".to_vec()));
    let (join, request) = h.fetching();
    let host = peer(2);
    h.reply(&request, "ok", json!({"host": host}));
    h.push(&join, event::SIGNAL, signal(host, offer()));
    let conn = opened(&h.take_rtc())[0];
    h.client.shutdown();
    h.drain();
    assert_eq!(closed(&h.take_rtc()), [conn]);
    assert_eq!(h.socket.last(), Some(&Transmit::Close));
    assert!(h.take_events().contains(&Event::FetchEnded {
        hash: PageHash::of(PAGE),
        error: FetchError::Stopped
    }));
    h.socket.clear();
    h.run_until(h.now + Duration::from_secs(3600));
    assert!(h.socket.is_empty());
}

// ---- a relayed page in parts ----

/// 600 bytes, relayed in parts of 200: the server's parts are 64 KiB, but
/// the harness's server relays pages up to 1000 bytes.
fn parted() -> String {
    "relayed ✓ ".repeat(50)
}

fn part(text: &str, offset: usize, len: usize, size: usize) -> Value {
    json!({"content": &text[offset..offset + len], "offset": offset, "size": size})
}

/// Starts fetching `text` with the request routed to `host`; the join.
fn fetching_routed(h: &mut Harness, text: &str, host: PeerId) -> Frame {
    h.client
        .fetch(PageHash::of(text.as_bytes()), true, h.now)
        .expect("a new fetch");
    h.drain();
    let join = h.take_sent(event::JOIN);
    h.accept_join(&join);
    let request = h.take_sent(event::CONTENT_REQUEST);
    h.reply(&request, "ok", json!({"host": host}));
    h.take_events();
    join
}

#[test]
fn relayed_parts_show_bytes_as_they_come_then_the_verified_page() {
    let mut h = Harness::new();
    let text = parted();
    let hash = PageHash::of(text.as_bytes());
    let host = peer(5);
    let join = fetching_routed(&mut h, &text, host);
    // The request asked for WebRTC; the busy host answers by relay.
    assert_eq!(
        h.client.fetch_progress(hash),
        Some((Phase::Connecting(host), None))
    );
    for offset in [0, 200] {
        h.push(&join, event::CONTENT, part(&text, offset, 200, 600));
        assert_eq!(h.take_events(), [Event::Progress(hash)]);
        assert_eq!(
            h.client.fetch_progress(hash),
            Some((Phase::Relaying(host), Some((offset + 200, 600))))
        );
    }
    h.push(&join, event::CONTENT, part(&text, 400, 200, 600));
    let delivered = h.take_events().into_iter().find_map(|e| match e {
        Event::Delivered(d) => Some(d),
        _ => None,
    });
    let delivered = delivered.expect("delivered");
    assert_eq!(delivered.page.bytes(), text.as_bytes());
    assert_eq!(delivered.transport, Transport::Relay);
    assert_eq!(delivered.path, Some(Path::Relay));
    assert_eq!(delivered.host, Some(host));
    assert_eq!(h.sent[0].payload["path"], json!("relay"));
    assert_eq!(h.client.fetch_progress(hash), None);
}

#[test]
fn relayed_parts_that_do_not_follow_on_end_the_fetch_with_why() {
    let text = parted();
    let first = part(&text, 0, 200, 600);
    let cases = [
        (
            vec![part(&text, 200, 200, 600)],
            RelayError::Gap {
                expected: 0,
                got: 200,
            },
        ),
        (
            vec![first.clone(), part(&text, 400, 200, 600)],
            RelayError::Gap {
                expected: 200,
                got: 400,
            },
        ),
        (
            vec![first.clone(), part(&text, 100, 200, 600)],
            RelayError::Overlap {
                expected: 200,
                got: 100,
            },
        ),
        (
            vec![first.clone(), part(&text, 200, 200, 700)],
            RelayError::SizeChanged {
                announced: 600,
                now: 700,
            },
        ),
        (
            vec![first.clone(), part(&text, 200, 400, 500)],
            RelayError::SizeChanged {
                announced: 600,
                now: 500,
            },
        ),
        (
            vec![part(&text, 0, 200, 300), part(&text, 200, 200, 300)],
            RelayError::PastSize {
                end: 400,
                size: 300,
            },
        ),
        (
            // Over the 1000 bytes the join reply said the server relays.
            vec![part(&text, 0, 200, 2000)],
            RelayError::OverRelayLimit {
                size: 2000,
                max: 1000,
            },
        ),
    ];
    for (parts, expected) in cases {
        let mut h = Harness::new();
        let hash = PageHash::of(text.as_bytes());
        let join = fetching_routed(&mut h, &text, peer(5));
        for part in parts {
            h.push(&join, event::CONTENT, part);
        }
        let ended = h.take_events().into_iter().find_map(|e| match e {
            Event::FetchEnded { hash: ended, error } if ended == hash => Some(error),
            _ => None,
        });
        assert_eq!(
            ended,
            Some(FetchError::Failed(FetchFailure::BadRelay(expected)))
        );
        assert_eq!(h.take_sent(event::LEAVE).topic, join.topic);
        assert_eq!(h.client.fetch_progress(hash), None);
    }
}

#[test]
fn a_relayed_part_with_unknown_fields_is_refused_and_what_follows_is_a_gap() {
    let mut h = Harness::new();
    let text = parted();
    let join = fetching_routed(&mut h, &text, peer(5));
    let mut extra = part(&text, 0, 200, 600);
    extra["from"] = json!(peer(5));
    h.push(&join, event::CONTENT, extra);
    assert!(matches!(&h.take_events()[..], [Event::Ignored { what, .. }] if what.contains("from")));
    h.push(&join, event::CONTENT, part(&text, 200, 200, 600));
    let ended = h.take_events().into_iter().find_map(|e| match e {
        Event::FetchEnded { error, .. } => Some(error.to_string()),
        _ => None,
    });
    assert_eq!(
        ended.as_deref(),
        Some(
            "the server's relay sent the page malformed: a part starts at byte 200, but 0 bytes had arrived"
        )
    );
}

#[test]
fn a_relayed_page_over_this_peers_limit_fails_on_its_first_part() {
    let mut config = ClientConfig::default();
    config.fetch.max_page_bytes = 500;
    let mut h = Harness::with(config);
    let text = parted();
    let join = fetching_routed(&mut h, &text, peer(5));
    h.push(&join, event::CONTENT, part(&text, 0, 200, 600));
    assert!(h.take_events().contains(&Event::FetchEnded {
        hash: PageHash::of(text.as_bytes()),
        error: FetchError::Failed(FetchFailure::PageTooLarge {
            size: 600,
            max: 500
        }),
    }));
}

#[test]
fn a_relayed_page_under_way_is_dropped_with_the_link() {
    let mut h = Harness::new();
    let text = parted();
    let hash = PageHash::of(text.as_bytes());
    let join = fetching_routed(&mut h, &text, peer(5));
    h.push(&join, event::CONTENT, part(&text, 0, 200, 600));
    h.client.on_disconnected(h.now);
    h.drain();
    h.run_until(h.now + ms(100));
    h.client.on_connected(h.now);
    h.drain();
    let rejoin = h.take_sent(event::JOIN);
    h.accept_join(&rejoin);
    let again = h.take_sent(event::CONTENT_REQUEST);
    h.reply(&again, "ok", json!({"host": peer(6)}));
    assert_eq!(
        h.client.fetch_progress(hash),
        Some((Phase::Connecting(peer(6)), None))
    );
    // The new host's page starts from the start, on the new link.
    for offset in [0, 200, 400] {
        h.push(&rejoin, event::CONTENT, part(&text, offset, 200, 600));
    }
    assert!(
        h.take_events()
            .iter()
            .any(|e| matches!(e, Event::Delivered(d) if d.page.bytes() == text.as_bytes()))
    );
}
