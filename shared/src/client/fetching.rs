//! The visitor's side of the client: one [`FetchRun`] per page being
//! fetched, around `shared`'s [`Fetch`] machine. What this adds to it: the
//! `want:` membership, `content_request`s sent only once joined and
//! replies to older ones ignored, signals from a host kept until the
//! server's reply names it, one peer connection per fetch (a new offer
//! replaces it), timings, and the end — host before leaving `want:`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Client, ConnId, Delivered, Event, FetchError, RtcEvent, Side, StartError, Tag};
use crate::fetch::{Fetch, FetchAction, Phase, Transport};
use crate::frame::event;
use crate::hash::PageHash;
use crate::page::Page;
use crate::path::Path;
use crate::protocol::{
    ContentPart, ContentRequest, ContentUnavailableFrom, PeerId, Reason, RequestRouted, SignalBody,
    SignalFrom,
};
use crate::session::Refusal;
use crate::topic::Topic;

/// One page being fetched.
#[derive(Debug)]
pub(super) struct FetchRun {
    pub(super) fetch: Fetch,
    started: Duration,
    /// Host the page once it arrives.
    host_after: bool,
    /// The number of the latest `content_request`; replies to earlier ones
    /// are stale.
    request_seq: u64,
    /// A request made while not joined, sent on join.
    unsent: Option<ContentRequest>,
    /// The connection to the current host, and the host.
    conn: Option<(PeerId, ConnId)>,
    /// Which way the current connection's channel goes, once known.
    path: Option<Path>,
    /// The connection whose channel opened last: the one a page over
    /// WebRTC came by.
    opened: Option<ConnId>,
    /// Signals that came before the server named their host.
    early: Vec<SignalFrom>,
    requests: u32,
    routed: Option<Duration>,
    channel_open: Option<Duration>,
    /// What the last [`Event::Progress`] reported.
    reported: (Phase, Option<(usize, usize)>),
}

impl FetchRun {
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        self.fetch.next_deadline()
    }
}

impl Client {
    /// Starts fetching `hash`; with `host_after`, the page is hosted once
    /// it arrives. The outcome comes as [`Event::Delivered`] or
    /// [`Event::FetchEnded`].
    pub fn fetch(
        &mut self,
        hash: PageHash,
        host_after: bool,
        now: Duration,
    ) -> Result<(), StartError> {
        if self.fetches.contains_key(&hash) {
            return Err(StartError::AlreadyFetching);
        }
        if self.hosted.contains_key(&hash) {
            return Err(StartError::AlreadyHosted);
        }
        let fetch = Fetch::new(hash, self.config.fetch.clone(), now);
        let reported = (fetch.phase(), None);
        self.fetches.insert(
            hash,
            FetchRun {
                fetch,
                started: now,
                host_after,
                request_seq: 0,
                unsent: None,
                conn: None,
                path: None,
                opened: None,
                early: Vec::new(),
                requests: 0,
                routed: None,
                channel_open: None,
                reported,
            },
        );
        self.session.join(Topic::want(hash), &Map::new());
        self.flush();
        self.drive(hash, now);
        Ok(())
    }

    /// Where a fetch stands: its phase, and bytes received of the announced
    /// size while a page arrives, over WebRTC or through the relay.
    pub fn fetch_progress(&self, hash: PageHash) -> Option<(Phase, Option<(usize, usize)>)> {
        let run = self.fetches.get(&hash)?;
        Some((run.fetch.phase(), run.fetch.progress()))
    }

    pub(super) fn on_want_joined(&mut self, hash: PageHash, rejoin: bool, now: Duration) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        if rejoin {
            // Back after a drop: what went through the server is lost, and
            // the fetch asks afresh.
            run.unsent = None;
            run.fetch.on_reconnected(now);
        }
        if let Some(request) = run.unsent.take() {
            self.send_request(hash, request);
        }
        self.drive(hash, now);
    }

    pub(super) fn on_request_reply(
        &mut self,
        hash: PageHash,
        seq: u64,
        result: Result<Map<String, Value>, Refusal>,
        now: Duration,
    ) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        if run.request_seq != seq {
            // A reply to a request the fetch has since replaced: acting on
            // it would route us to a host that is not serving us.
            return;
        }
        match result {
            Ok(response) => {
                match serde_json::from_value::<RequestRouted>(Value::Object(response)) {
                    Ok(routed) => {
                        run.routed.get_or_insert(now.saturating_sub(run.started));
                        run.fetch.on_routed(routed.host, now);
                        for signal in std::mem::take(&mut run.early) {
                            self.on_signal_as_visitor(hash, signal);
                        }
                    }
                    Err(error) => self.ignored(hash, format!("a content_request reply: {error}")),
                }
            }
            Err(refusal) if refusal.reason() == Some(Reason::NoHosts) => run.fetch.on_no_hosts(),
            // Rate limited or the like: the fetch's own deadline asks again.
            Err(refusal) => self.ignored(hash, format!("content_request refused: {refusal}")),
        }
        self.drive(hash, now);
    }

    pub(super) fn on_relay_part(&mut self, hash: PageHash, part: ContentPart, now: Duration) {
        let max_relay = self.status.max_relay_bytes;
        if let Some(run) = self.fetches.get_mut(&hash) {
            run.fetch.on_relay_part(&part, max_relay, now);
            self.drive(hash, now);
        }
    }

    pub(super) fn on_content_unavailable(
        &mut self,
        hash: PageHash,
        unavailable: ContentUnavailableFrom,
        now: Duration,
    ) {
        let max_relay = self.status.max_relay_bytes;
        if let Some(run) = self.fetches.get_mut(&hash) {
            run.fetch
                .on_content_unavailable(unavailable.from, unavailable.size, max_relay, now);
            self.drive(hash, now);
        }
    }

    /// A host's signal: only the host the server named may negotiate, and
    /// its offer starts a new connection, replacing any earlier one (the
    /// host restarted its upload).
    pub(super) fn on_signal_as_visitor(&mut self, hash: PageHash, signal: SignalFrom) {
        let max_early = self.config.max_early_signals;
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        if run.fetch.phase() == Phase::Asking {
            // The host may be faster than the server's reply naming it.
            if run.early.len() < max_early {
                run.early.push(signal);
            }
            return;
        }
        if !run.fetch.accepts_signal_from(signal.from) {
            self.ignored(hash, format!("a signal from {}, not our host", signal.from));
            return;
        }
        let current = run.conn.filter(|(host, _)| *host == signal.from);
        match (current, &signal.body) {
            (_, SignalBody::Offer { .. }) => {
                if let Some((_, old)) = run.conn.take() {
                    self.close_rtc(old);
                }
                let conn = self.open_rtc(hash, Side::Answer);
                if let Some(run) = self.fetches.get_mut(&hash) {
                    run.conn = Some((signal.from, conn));
                    run.path = None;
                }
                self.outputs.push_back(super::Output::SignalRtc {
                    conn,
                    body: signal.body,
                });
            }
            (Some((_, conn)), _) => self.outputs.push_back(super::Output::SignalRtc {
                conn,
                body: signal.body,
            }),
            (None, _) => self.ignored(hash, "a candidate before any offer"),
        }
    }

    pub(super) fn on_fetch_event(
        &mut self,
        hash: PageHash,
        conn: ConnId,
        event: RtcEvent,
        now: Duration,
    ) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        let Some((host, _)) = run.conn.filter(|(_, c)| *c == conn) else {
            return;
        };
        match event {
            RtcEvent::Signal(body) => {
                self.send_signal(Topic::want(hash), host, body);
                return;
            }
            RtcEvent::Open => {
                run.opened = Some(conn);
                run.channel_open = Some(now.saturating_sub(run.started));
                run.fetch.on_channel_open(now);
            }
            RtcEvent::Path(path) => run.path = path,
            RtcEvent::Text(text) => run.fetch.on_channel_text(&text, now),
            RtcEvent::Binary(bytes) => run.fetch.on_channel_binary(&bytes, now),
            RtcEvent::Sent => {}
            RtcEvent::Closed(reason) => {
                run.conn = None;
                self.close_rtc(conn);
                self.ignored(
                    hash,
                    format!("the connection to host {host} ended: {reason}"),
                );
                if let Some(run) = self.fetches.get_mut(&hash) {
                    run.fetch.on_rtc_failed(now);
                }
            }
        }
        self.drive(hash, now);
    }

    fn send_request(&mut self, hash: PageHash, request: ContentRequest) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        run.request_seq += 1;
        run.requests += 1;
        let tag = Tag::Request {
            hash,
            seq: run.request_seq,
        };
        self.session
            .push(Topic::want(hash), event::CONTENT_REQUEST, &request, tag);
        self.flush();
    }

    /// Carries out everything the fetch machine asks for.
    pub(super) fn drive(&mut self, hash: PageHash, now: Duration) {
        loop {
            let Some(run) = self.fetches.get_mut(&hash) else {
                return;
            };
            let Some(action) = run.fetch.poll() else {
                break;
            };
            match action {
                FetchAction::Request(request) => {
                    if self.session.is_joined(Topic::want(hash)) {
                        self.send_request(hash, request);
                    } else {
                        run.unsent = Some(request);
                    }
                }
                FetchAction::CloseRtc(host) => {
                    if let Some((_, conn)) = run.conn.filter(|(h, _)| *h == host) {
                        run.conn = None;
                        self.close_rtc(conn);
                    }
                }
                FetchAction::Delivered {
                    page,
                    transport,
                    host,
                } => {
                    self.deliver(hash, page, transport, host, now);
                    return;
                }
                FetchAction::Gone => {
                    self.end_fetch(hash, FetchError::Gone);
                    return;
                }
                FetchAction::Failed(failure) => {
                    self.end_fetch(hash, FetchError::Failed(failure));
                    return;
                }
            }
        }
        self.report_progress(hash);
    }

    fn report_progress(&mut self, hash: PageHash) {
        let Some(run) = self.fetches.get_mut(&hash) else {
            return;
        };
        let now = (run.fetch.phase(), run.fetch.progress());
        if run.reported != now {
            run.reported = now;
            self.emit(Event::Progress(hash));
        }
    }

    fn deliver(
        &mut self,
        hash: PageHash,
        page: Page,
        transport: Transport,
        host: Option<PeerId>,
        now: Duration,
    ) {
        let Some(mut run) = self.fetches.remove(&hash) else {
            return;
        };
        let path = match transport {
            Transport::Relay => Some(Path::Relay),
            Transport::WebRtc => run.path,
        };
        if transport == Transport::WebRtc
            && path.is_none()
            && let Some(conn) = run.opened
        {
            self.awaiting_path.insert(conn, hash);
        }
        self.close_fetch_conn(&mut run);
        let delivered = Delivered {
            hash,
            transport,
            path,
            host,
            requests: run.requests,
            routed: run.routed,
            channel_open: run.channel_open,
            total: now.saturating_sub(run.started),
            page,
        };
        // Host before leaving want: the server frees the serving host's
        // slot on the leave, and the queued visitors it then routes should
        // find this new host already there.
        if run.host_after {
            self.host(delivered.page.clone(), path);
        }
        self.session.leave(Topic::want(hash));
        self.flush();
        self.emit(Event::Delivered(delivered));
    }

    pub(super) fn end_fetch(&mut self, hash: PageHash, error: FetchError) {
        let Some(mut run) = self.fetches.remove(&hash) else {
            return;
        };
        self.close_fetch_conn(&mut run);
        self.session.leave(Topic::want(hash));
        self.flush();
        self.emit(Event::FetchEnded { hash, error });
    }

    pub(super) fn close_fetch_conn(&mut self, run: &mut FetchRun) {
        if let Some((_, conn)) = run.conn.take() {
            self.close_rtc(conn);
        }
    }
}
