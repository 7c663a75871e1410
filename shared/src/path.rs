//! Which way a page travelled: peer to peer directly (host, server-
//! reflexive or peer-reflexive candidates on both sides), peer to peer
//! through a TURN relay, or through the signaling server's websocket
//! relay. Both clients report it to their user and to the server, which
//! counts fetches by path: how much traffic really went peer to peer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Direct,
    Turn,
    Relay,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Direct, Path::Turn, Path::Relay];

    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Turn => "turn",
            Path::Relay => "relay",
        }
    }

    /// The path of a data channel over the selected ICE candidate pair,
    /// from its candidates' types (`host`, `srflx`, `prflx`, `relay`): a
    /// relay candidate on either side means the bytes go through TURN.
    pub fn of_candidate_pair(local_type: &str, remote_type: &str) -> Path {
        let relayed = |kind: &str| kind.eq_ignore_ascii_case("relay");
        if relayed(local_type) || relayed(remote_type) {
            Path::Turn
        } else {
            Path::Direct
        }
    }

    /// How a person reads it: `webrtc (direct)`, `webrtc (turn)`, `relay`.
    pub fn describe(self) -> &'static str {
        match self {
            Path::Direct => "webrtc (direct)",
            Path::Turn => "webrtc (turn)",
            Path::Relay => "relay",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a path is direct, turn or relay")]
pub struct PathError;

impl FromStr for Path {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::ALL
            .into_iter()
            .find(|path| path.as_str() == s)
            .ok_or(PathError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_candidate_on_either_side_is_turn() {
        assert_eq!(Path::of_candidate_pair("host", "host"), Path::Direct);
        assert_eq!(Path::of_candidate_pair("srflx", "prflx"), Path::Direct);
        assert_eq!(Path::of_candidate_pair("relay", "host"), Path::Turn);
        assert_eq!(Path::of_candidate_pair("srflx", "relay"), Path::Turn);
        assert_eq!(Path::of_candidate_pair("Relay", "srflx"), Path::Turn);
    }

    #[test]
    fn paths_read_and_print_the_same() {
        for path in Path::ALL {
            assert_eq!(path.as_str().parse::<Path>(), Ok(path));
            assert_eq!(
                serde_json::to_value(path).unwrap(),
                serde_json::json!(path.as_str())
            );
        }
        assert_eq!("webrtc".parse::<Path>(), Err(PathError));
        assert_eq!(Path::Turn.describe(), "webrtc (turn)");
    }
}
