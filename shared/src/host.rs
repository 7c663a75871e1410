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
    /// Relay is the only way to this visitor, and the page is larger than
    /// the server relays: send `content_unavailable` so that the visitor
    /// hears why at once instead of waiting for a page that cannot come.
    RelayUnavailable,
}

/// Whether a page of `size` bytes fits the server's relay, whose limit the
/// join reply gave (`None`: a server that did not say, so try).
pub fn fits_relay(size: usize, max_relay: Option<usize>) -> bool {
    max_relay.is_none_or(|max| size <= max)
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

    /// Decides how to serve `request`; `relayable`: the page fits the
    /// server's relay (see [`fits_relay`]). A repeated request from a
    /// visitor already being served restarts its upload.
    pub fn on_request(&mut self, request: &HostRequest, relayable: bool) -> HostAction {
        let restart = self.active.remove(&request.from);
        if request.relay || !self.webrtc {
            return match relayable {
                true => HostAction::Relay,
                false => HostAction::RelayUnavailable,
            };
        }
        let busy = self.active.len() >= self.max_concurrent;
        // A page too large to relay goes over WebRTC even past the cap:
        // for that visitor there is no other way.
        if busy && !restart && relayable {
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
        assert_eq!(
            uploads.on_request(&request(1, false), true),
            HostAction::Offer
        );
        assert_eq!(
            uploads.on_request(&request(2, false), true),
            HostAction::Offer
        );
        assert_eq!(
            uploads.on_request(&request(3, false), true),
            HostAction::Relay
        );
        uploads.on_finished(PeerId::from_random(1));
        assert_eq!(
            uploads.on_request(&request(3, false), true),
            HostAction::Offer
        );
        assert_eq!(uploads.active(), 2);
    }

    #[test]
    fn relay_when_asked_or_without_webrtc() {
        let mut uploads = Uploads::new(8, true);
        assert_eq!(
            uploads.on_request(&request(1, true), true),
            HostAction::Relay
        );
        let mut relay_only = Uploads::new(8, false);
        assert_eq!(
            relay_only.on_request(&request(1, false), true),
            HostAction::Relay
        );
        assert_eq!(relay_only.active(), 0);
    }

    #[test]
    fn a_repeated_request_restarts_even_when_busy() {
        let mut uploads = Uploads::new(1, true);
        assert_eq!(
            uploads.on_request(&request(1, false), true),
            HostAction::Offer
        );
        assert_eq!(
            uploads.on_request(&request(1, false), true),
            HostAction::Offer
        );
        assert_eq!(uploads.active(), 1);
    }

    #[test]
    fn a_page_too_large_to_relay_is_refused_for_relay_and_offered_past_the_cap() {
        let mut uploads = Uploads::new(1, true);
        assert_eq!(
            uploads.on_request(&request(1, true), false),
            HostAction::RelayUnavailable
        );
        assert_eq!(uploads.active(), 0);
        assert_eq!(
            uploads.on_request(&request(2, false), false),
            HostAction::Offer
        );
        assert_eq!(
            uploads.on_request(&request(3, false), false),
            HostAction::Offer
        );
        assert_eq!(uploads.active(), 2, "past the cap of 1");
        let mut relay_only = Uploads::new(8, false);
        assert_eq!(
            relay_only.on_request(&request(1, false), false),
            HostAction::RelayUnavailable
        );
    }

    #[test]
    fn pages_fit_the_relay_up_to_its_limit() {
        assert!(fits_relay(10, Some(10)));
        assert!(!fits_relay(11, Some(10)));
        assert!(fits_relay(usize::MAX, None), "no limit given: try");
    }
}
