//! What the status line says. Pure: it reads where the tab stands and
//! returns the page state and the words, so every wording is unit-tested
//! natively, without a browser.

use ephemeral_shared::path::Path;
use ephemeral_shared::size::{Bytes, compared};
use ephemeral_shared::{FetchFailure, Phase};

use crate::view::{Delivery, PageState};

/// The server connection, as the visitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Never connected yet.
    Connecting,
    Online,
    /// Was connected, lost it, retrying with backoff.
    Reconnecting,
}

impl Connection {
    /// The value of `#app[data-connection]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Online => "online",
            Connection::Reconnecting => "reconnecting",
        }
    }

    fn offline_words(self) -> Option<&'static str> {
        match self {
            Connection::Online => None,
            Connection::Connecting => Some("Connecting to the server…"),
            Connection::Reconnecting => Some("Reconnecting to the server…"),
        }
    }
}

/// Where the tab stands.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// On `/`, writing a page.
    pub home: bool,
    pub connection: Connection,
    /// Why the page could not be had: a sentence from [`failure_words`]
    /// or [`refusal_words`].
    pub failure: Option<&'a str>,
    /// The tab holds the verified page.
    pub hosting: bool,
    pub delivery: Option<Delivery>,
    /// This tab wrote the page.
    pub authored: bool,
    /// The page is kept in the tab's storage, so it survives a reload.
    pub kept: bool,
    /// Hosts of the page, as the server last said.
    pub count: Option<usize>,
    /// The server accepted the tab's join of its current topic.
    pub joined: bool,
    /// The fetch's phase, while getting the page.
    pub phase: Option<Phase>,
    /// The fetch has asked before: a host failed it, or WebRTC did.
    pub retried: bool,
}

/// The last-host warning, in the status line and said aloud.
pub const LAST_HOST: &str = "You are the last host: the page lives while this tab stays open.";

/// Said on the gone page and in the status line: what we know, and no more
/// (nobody hosts it now; whether anyone ever did, the server cannot know).
pub const NOBODY_HOSTING: &str = "Nobody is hosting this page right now.";

/// The page state and the status line for `situation`.
pub fn describe(situation: &Situation) -> (PageState, String) {
    let offline = situation.connection.offline_words();
    if situation.home {
        let words = match situation.connection {
            Connection::Reconnecting => "Reconnecting to the server…",
            _ => "Write a page and press Share. Its address is the SHA-256 of its bytes.",
        };
        return (PageState::Home, words.to_string());
    }
    if let Some(failure) = situation.failure {
        return (PageState::Failed, failure.to_string());
    }
    if situation.hosting {
        return (PageState::Hosting, hosting_words(situation, offline));
    }
    if situation.phase == Some(Phase::Gone) {
        // Said even while offline: nobody had it when last asked.
        return (PageState::Gone, NOBODY_HOSTING.to_string());
    }
    let doing = match (offline, situation.phase) {
        (Some(offline), _) => offline,
        (None, None) => "Connecting to the server…",
        (None, Some(Phase::Asking)) if situation.retried => {
            "Trying again: asking for another way to get the page…"
        }
        (None, Some(Phase::Asking)) => "Looking for a host…",
        (None, Some(Phase::Connecting(_))) => "Connecting to a host, peer to peer…",
        (None, Some(Phase::Receiving(_))) => "Receiving the page, peer to peer…",
        (None, Some(Phase::Relaying(_))) => "Receiving the page through the server (relay)…",
        (None, Some(Phase::Delivered(_) | Phase::Failed | Phase::Gone)) => "Verifying…",
    };
    (PageState::Fetching, doing.to_string())
}

fn hosting_words(situation: &Situation, offline: Option<&str>) -> String {
    let got = match situation.delivery {
        Some(Delivery::WebRtc(Some(Path::Turn))) => {
            "Verified ✓ Fetched from a peer over WebRTC, through TURN. "
        }
        Some(Delivery::WebRtc(_)) => "Verified ✓ Fetched from a peer over WebRTC. ",
        Some(Delivery::Relay) => "Verified ✓ Fetched via relay. ",
        _ => "",
    };
    let doing = match (offline, situation.joined, situation.count) {
        (Some(offline), _, _) => offline.to_string(),
        (None, false, _) => "Joining as a host…".to_string(),
        (None, true, Some(1)) if situation.authored => {
            "You are the only host: the page lives while this tab stays open. Share the link: \
             every visitor hosts it too."
                .to_string()
        }
        (None, true, Some(1)) => LAST_HOST.to_string(),
        (None, true, _) => "Hosting: this tab serves the page while it stays open.".to_string(),
    };
    let fragile = if situation.kept {
        ""
    } else {
        " This tab could not store it, so reloading the tab would stop hosting it."
    };
    format!("{got}{doing}{fragile}")
}

/// The status line for a fetch that failed. A page too large is said in
/// the visitor's words — what is too large for what, and why relay could
/// not help — rather than the CLI's, which name flags.
pub fn failure_words(failure: &FetchFailure) -> String {
    match *failure {
        FetchFailure::PageTooLarge { size, max } => {
            let (size, max) = compared(size, max);
            format!("This page is {size}: larger than this browser accepts ({max}).")
        }
        FetchFailure::TooLargeForRelay {
            size,
            max_relay,
            webrtc_tried,
        } => {
            let relay = match max_relay {
                Some(max_relay) => {
                    let (size, max_relay) = compared(size, max_relay);
                    format!(
                        "This page is {size}: too large for the server's relay (up to {max_relay})"
                    )
                }
                None => format!(
                    "This page is {}: too large for the server's relay",
                    Bytes(size)
                ),
            };
            let direct = if webrtc_tried {
                "and a direct connection failed"
            } else {
                "and direct connections are off in this tab"
            };
            format!("{relay}, {direct}.")
        }
        ref other => refusal_words(&other.to_string()),
    }
}

/// The status line for any other reason the page could not be had.
pub fn refusal_words(why: &str) -> String {
    format!("Could not get this page: {why}.")
}

#[cfg(test)]
mod tests {
    use ephemeral_shared::{PeerId, Transport};

    use super::*;

    fn fetching(phase: Phase) -> Situation<'static> {
        Situation {
            home: false,
            connection: Connection::Online,
            failure: None,
            hosting: false,
            delivery: None,
            authored: false,
            kept: true,
            count: Some(2),
            joined: true,
            phase: Some(phase),
            retried: false,
        }
    }

    fn hosting(delivery: Delivery) -> Situation<'static> {
        Situation {
            hosting: true,
            delivery: Some(delivery),
            authored: delivery == Delivery::Author,
            phase: None,
            ..fetching(Phase::Asking)
        }
    }

    #[test]
    fn says_how_the_page_arrived_and_that_it_is_hosted() {
        let (state, words) = describe(&hosting(Delivery::Relay));
        assert_eq!(state, PageState::Hosting);
        assert!(
            words.contains("via relay") && words.contains("Hosting"),
            "{words}"
        );
        let (_, words) = describe(&hosting(Delivery::WebRtc(Some(Path::Direct))));
        assert!(
            words.contains("WebRTC") && words.contains("Verified"),
            "{words}"
        );
        let (_, words) = describe(&hosting(Delivery::WebRtc(Some(Path::Turn))));
        assert!(words.contains("through TURN"), "{words}");
        let (_, words) = describe(&hosting(Delivery::Author));
        assert!(words.starts_with("Hosting"), "{words}");
    }

    #[test]
    fn the_last_host_is_told_so() {
        let alone = Situation {
            count: Some(1),
            ..hosting(Delivery::WebRtc(None))
        };
        let (_, words) = describe(&alone);
        assert!(words.ends_with(LAST_HOST), "{words}");
        let author = Situation {
            count: Some(1),
            ..hosting(Delivery::Author)
        };
        let (_, words) = describe(&author);
        assert!(words.starts_with("You are the only host"), "{words}");
        let fragile = Situation {
            kept: false,
            ..author
        };
        assert!(
            describe(&fragile)
                .1
                .contains("reloading the tab would stop hosting it")
        );
    }

    #[test]
    fn a_host_that_lost_the_server_says_it_is_reconnecting() {
        let situation = Situation {
            connection: Connection::Reconnecting,
            ..hosting(Delivery::Author)
        };
        let (state, words) = describe(&situation);
        assert_eq!(state, PageState::Hosting);
        assert!(words.contains("Reconnecting"), "{words}");
    }

    #[test]
    fn follows_the_fetch() {
        let host = PeerId::from_random(7);
        let cases = [
            (Phase::Asking, "Looking for a host"),
            (Phase::Connecting(host), "Connecting to a host"),
            (Phase::Receiving(host), "Receiving the page, peer to peer"),
            (Phase::Relaying(host), "through the server (relay)"),
            (Phase::Delivered(Transport::WebRtc), "Verifying"),
        ];
        for (phase, expected) in cases {
            let (state, words) = describe(&fetching(phase));
            assert_eq!(state, PageState::Fetching);
            assert!(words.contains(expected), "{phase:?}: {words}");
        }
        let again = Situation {
            retried: true,
            ..fetching(Phase::Asking)
        };
        assert!(describe(&again).1.starts_with("Trying again"));
    }

    #[test]
    fn gone_is_said_plainly_even_offline() {
        let situation = Situation {
            connection: Connection::Reconnecting,
            ..fetching(Phase::Gone)
        };
        let (state, words) = describe(&situation);
        assert_eq!(state, PageState::Gone);
        assert_eq!(words, NOBODY_HOSTING);
    }

    #[test]
    fn a_page_too_large_is_said_in_words() {
        let words = failure_words(&FetchFailure::TooLargeForRelay {
            size: 3_000_000,
            max_relay: Some(1 << 20),
            webrtc_tried: true,
        });
        assert_eq!(
            words,
            "This page is 2.9 MiB: too large for the server's relay (up to 1.0 MiB), \
             and a direct connection failed."
        );
        let words = failure_words(&FetchFailure::TooLargeForRelay {
            size: 3_000_000,
            max_relay: None,
            webrtc_tried: false,
        });
        assert!(words.contains("direct connections are off"), "{words}");
        let words = failure_words(&FetchFailure::PageTooLarge {
            size: 3_000_000,
            max: 1 << 20,
        });
        assert_eq!(
            words,
            "This page is 2.9 MiB: larger than this browser accepts (1.0 MiB)."
        );
        let words = failure_words(&FetchFailure::TooManyAttempts(12));
        assert_eq!(words, "Could not get this page: gave up after 12 requests.");
    }

    #[test]
    fn failures_win_over_everything_but_home() {
        let words = refusal_words("every host sent wrong bytes");
        let situation = Situation {
            failure: Some(&words),
            ..fetching(Phase::Failed)
        };
        let (state, words) = describe(&situation);
        assert_eq!(state, PageState::Failed);
        assert!(words.contains("every host sent wrong bytes"), "{words}");
        let home = Situation {
            home: true,
            ..situation
        };
        assert_eq!(describe(&home).0, PageState::Home);
    }
}
