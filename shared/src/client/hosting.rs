//! The host's side of the client: the pages this peer holds, the `have:`
//! membership of each, and one upload per visitor being served — offered
//! over a data channel, relayed through the server, or refused as too
//! large to relay, as `shared`'s [`Uploads`] decides — with the deadlines
//! that end abandoned uploads.

use std::collections::HashMap;
use std::time::Duration;

use super::{Client, ClientConfig, ConnId, Event, Output, RtcEvent, Side, Tag};
use crate::fetch::Transport;
use crate::frame::event;
use crate::hash::PageHash;
use crate::host::{HostAction, Uploads, fits_relay};
use crate::page::Page;
use crate::path::Path;
use crate::protocol::{Content, ContentUnavailable, HostRequest, JoinPayload, SignalFrom};
use crate::session::Refusal;
use crate::topic::Topic;

/// A page this peer hosts.
#[derive(Debug)]
pub(super) struct Hosted {
    page: Page,
    uploads: Uploads,
    /// WebRTC uploads under way, by visitor.
    active: HashMap<crate::protocol::PeerId, Upload>,
    /// Whether [`Event::Hosting`] was said.
    announced: bool,
}

#[derive(Debug, Clone, Copy)]
struct Upload {
    conn: ConnId,
    started: Duration,
    opened: bool,
    sent: bool,
}

impl Upload {
    fn deadline(&self, config: &ClientConfig) -> Duration {
        match self.opened {
            true => self.started + config.upload_max,
            false => self.started + config.upload_open_timeout.min(config.upload_max),
        }
    }
}

impl Hosted {
    pub(super) fn next_deadline(&self, config: &ClientConfig) -> Option<Duration> {
        self.active.values().map(|u| u.deadline(config)).min()
    }
}

impl Client {
    /// Hosts a page; returns its address. [`Event::Hosting`] follows once
    /// the server has accepted this peer as a host (at once if it already
    /// had).
    pub fn share(&mut self, page: Page) -> PageHash {
        let hash = page.hash();
        if self.is_hosting(hash) {
            self.emit(Event::Hosting(hash));
        } else {
            self.host(page, None);
        }
        hash
    }

    /// Whether the server has accepted this peer as a host of `hash`.
    pub fn is_hosting(&self, hash: PageHash) -> bool {
        self.hosted.contains_key(&hash) && self.session.is_joined(Topic::have(hash))
    }

    /// The bytes of a page this peer hosts.
    pub fn hosted_page(&self, hash: PageHash) -> Option<Page> {
        self.hosted.get(&hash).map(|h| h.page.clone())
    }

    /// Stops hosting a page: its uploads end and this peer leaves `have:`.
    pub fn unshare(&mut self, hash: PageHash) {
        let Some(hosted) = self.hosted.remove(&hash) else {
            return;
        };
        for upload in hosted.active.values() {
            self.close_rtc(upload.conn);
        }
        self.session.leave(Topic::have(hash));
        self.flush();
        self.count_hosting();
    }

    /// Starts hosting; `path` says which way the page came, told to the
    /// server on the first join so it can count fetches by path.
    pub(super) fn host(&mut self, page: Page, path: Option<Path>) {
        let hash = page.hash();
        if self.hosted.contains_key(&hash) {
            return;
        }
        self.hosted.insert(
            hash,
            Hosted {
                page,
                uploads: Uploads::new(self.config.max_uploads, self.config.fetch.webrtc),
                active: HashMap::new(),
                announced: false,
            },
        );
        self.session.join(Topic::have(hash), &JoinPayload { path });
        self.flush();
    }

    pub(super) fn on_hosting(&mut self, hash: PageHash) {
        let Some(hosted) = self.hosted.get_mut(&hash) else {
            return;
        };
        let first = !hosted.announced;
        hosted.announced = true;
        self.count_hosting();
        if first {
            self.emit(Event::Hosting(hash));
        }
    }

    pub(super) fn on_share_refused(&mut self, hash: PageHash, refusal: Refusal) {
        if let Some(hosted) = self.hosted.remove(&hash) {
            for upload in hosted.active.values() {
                self.close_rtc(upload.conn);
            }
        }
        self.count_hosting();
        self.emit(Event::ShareRefused { hash, refusal });
    }

    fn count_hosting(&mut self) {
        self.status.hosting = self
            .hosted
            .keys()
            .filter(|hash| self.session.is_joined(Topic::have(**hash)))
            .count();
    }

    /// The server routed a visitor to us.
    pub(super) fn on_host_request(&mut self, hash: PageHash, request: HostRequest, now: Duration) {
        let max_relay = self.status.max_relay_bytes;
        let Some(hosted) = self.hosted.get_mut(&hash) else {
            return;
        };
        let visitor = request.from;
        // Whatever was under way for this visitor is superseded.
        let superseded = hosted.active.remove(&visitor);
        let relayable = fits_relay(hosted.page.len(), max_relay);
        let action = hosted.uploads.on_request(&request, relayable);
        let page = hosted.page.clone();
        if let Some(old) = superseded {
            self.close_rtc(old.conn);
        }
        let topic = Topic::have(hash);
        match action {
            HostAction::RelayUnavailable => {
                let refusal = ContentUnavailable {
                    to: visitor,
                    size: page.len() as u64,
                };
                self.push_relay(topic, event::CONTENT_UNAVAILABLE, &refusal);
            }
            HostAction::Relay => match std::str::from_utf8(&page) {
                Ok(text) => {
                    let content = Content {
                        content: text.to_string(),
                    };
                    let sent = self.push_relay(topic, event::CONTENT, &content);
                    self.emit(Event::UploadEnded {
                        hash,
                        visitor,
                        transport: Transport::Relay,
                        delivered: sent,
                    });
                }
                // `content` is a JSON string: bytes that are not UTF-8 can
                // only go over a data channel.
                Err(_) => self.ignored(hash, "a relay request for a page that is not UTF-8"),
            },
            HostAction::Offer => {
                let conn = self.open_rtc(hash, Side::Offer);
                if let Some(hosted) = self.hosted.get_mut(&hash) {
                    hosted.active.insert(
                        visitor,
                        Upload {
                            conn,
                            started: now,
                            opened: false,
                            sent: false,
                        },
                    );
                }
            }
        }
    }

    /// Pushes `content` or `content_unavailable` on `have:`; returns whether
    /// it was sent.
    fn push_relay<P: serde::Serialize>(
        &mut self,
        topic: Topic,
        event: &'static str,
        payload: &P,
    ) -> bool {
        let tag = Tag::Push {
            hash: topic.hash,
            event,
        };
        let sent = self.session.push(topic, event, payload, tag);
        self.flush();
        sent
    }

    /// A visitor's signal: only the visitor this host is serving may
    /// negotiate.
    pub(super) fn on_signal_as_host(&mut self, hash: PageHash, signal: SignalFrom) {
        let upload = self
            .hosted
            .get(&hash)
            .and_then(|hosted| hosted.active.get(&signal.from));
        match upload {
            Some(upload) => self.outputs.push_back(Output::SignalRtc {
                conn: upload.conn,
                body: signal.body,
            }),
            None => self.ignored(hash, format!("a signal from {}, not served", signal.from)),
        }
    }

    pub(super) fn on_upload_event(
        &mut self,
        hash: PageHash,
        conn: ConnId,
        event: RtcEvent,
        _now: Duration,
    ) {
        let Some(hosted) = self.hosted.get_mut(&hash) else {
            return;
        };
        let Some((&visitor, upload)) = hosted.active.iter_mut().find(|(_, u)| u.conn == conn)
        else {
            return;
        };
        match event {
            RtcEvent::Signal(body) => self.send_signal(Topic::have(hash), visitor, body),
            RtcEvent::Open if !upload.opened => {
                upload.opened = true;
                let page = hosted.page.clone();
                self.outputs.push_back(Output::SendPage { conn, page });
            }
            RtcEvent::Sent => upload.sent = true,
            // The visitor closes the connection once it has verified the
            // page: until then the upload counts as under way.
            RtcEvent::Closed(_) => self.end_upload(hash, visitor),
            RtcEvent::Open | RtcEvent::Path(_) | RtcEvent::Text(_) | RtcEvent::Binary(_) => {}
        }
    }

    fn end_upload(&mut self, hash: PageHash, visitor: crate::protocol::PeerId) {
        let Some(hosted) = self.hosted.get_mut(&hash) else {
            return;
        };
        let Some(upload) = hosted.active.remove(&visitor) else {
            return;
        };
        hosted.uploads.on_finished(visitor);
        self.close_rtc(upload.conn);
        self.emit(Event::UploadEnded {
            hash,
            visitor,
            transport: Transport::WebRtc,
            delivered: upload.sent,
        });
    }

    /// Ends uploads past their deadline: the visitor has long since asked
    /// someone else.
    pub(super) fn expire_uploads(&mut self, now: Duration) {
        let config = &self.config;
        let expired: Vec<_> = self
            .hosted
            .iter()
            .flat_map(|(hash, hosted)| {
                hosted
                    .active
                    .iter()
                    .filter(|(_, u)| u.deadline(config) <= now)
                    .map(|(visitor, _)| (*hash, *visitor))
            })
            .collect();
        for (hash, visitor) in expired {
            self.end_upload(hash, visitor);
        }
    }
}
