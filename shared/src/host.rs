//! The host's side: how to answer each `content_request` this peer receives
//! for a page it holds.

use std::collections::HashSet;

use crate::protocol::{HostRequest, PeerId};

/// How to serve one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// Open a peer connection to the visitor and send the page over a data
    /// channel; the shell sends the offer.
    Offer,
    /// Send the page as `content` over the websocket.
    Relay,
}

/// The uploads one host has under way, across visitors.
#[derive(Debug, Clone)]
pub struct Uploads {
    /// Most WebRTC uploads at once; further visitors are served by relay so
    /// that nobody waits behind a busy host.
    max_concurrent: usize,
    active: HashSet<PeerId>,
    /// Whether this host can do WebRTC at all.
    webrtc: bool,
}

impl Uploads {
    pub fn new(max_concurrent: usize, webrtc: bool) -> Self {
        Self {
            max_concurrent,
            active: HashSet::new(),
            webrtc,
        }
    }

    /// Decides how to serve `request`. A repeated request from a visitor
    /// already being served restarts its upload.
    pub fn on_request(&mut self, request: &HostRequest) -> HostAction {
        let restart = self.active.remove(&request.from);
        let busy = self.active.len() >= self.max_concurrent;
        if request.relay || !self.webrtc || (busy && !restart) {
            return HostAction::Relay;
        }
        self.active.insert(request.from);
        HostAction::Offer
    }

    /// The upload to `visitor` ended, finished or failed.
    pub fn on_finished(&mut self, visitor: PeerId) {
        self.active.remove(&visitor);
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: u128, relay: bool) -> HostRequest {
        HostRequest {
            from: PeerId::from_random(from),
            relay,
        }
    }

    #[test]
    fn offers_until_busy_then_relays() {
        let mut uploads = Uploads::new(2, true);
        assert_eq!(uploads.on_request(&request(1, false)), HostAction::Offer);
        assert_eq!(uploads.on_request(&request(2, false)), HostAction::Offer);
        assert_eq!(uploads.on_request(&request(3, false)), HostAction::Relay);
        uploads.on_finished(PeerId::from_random(1));
        assert_eq!(uploads.on_request(&request(3, false)), HostAction::Offer);
        assert_eq!(uploads.active(), 2);
    }

    #[test]
    fn relay_when_asked_or_without_webrtc() {
        let mut uploads = Uploads::new(8, true);
        assert_eq!(uploads.on_request(&request(1, true)), HostAction::Relay);
        let mut relay_only = Uploads::new(8, false);
        assert_eq!(relay_only.on_request(&request(1, false)), HostAction::Relay);
        assert_eq!(relay_only.active(), 0);
    }

    #[test]
    fn a_repeated_request_restarts_even_when_busy() {
        let mut uploads = Uploads::new(1, true);
        assert_eq!(uploads.on_request(&request(1, false)), HostAction::Offer);
        assert_eq!(uploads.on_request(&request(1, false)), HostAction::Offer);
        assert_eq!(uploads.active(), 1);
    }
}
