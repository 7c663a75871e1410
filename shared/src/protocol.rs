//! Typed payloads of every event Ephemeral speaks (DESIGN.md, "Events"), and
//! server-assigned peer ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::write_hex;

/// A peer's id: 128 random bits chosen by the server, never by a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a peer id is 32 lowercase hex digits")]
pub struct PeerIdError;

impl PeerId {
    pub fn from_random(bits: u128) -> Self {
        Self(bits)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0.to_be_bytes())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lowercase_hex = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if s.len() != 32 || !lowercase_hex {
            return Err(PeerIdError);
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| PeerIdError)
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A STUN or TURN server, in the shape `RTCPeerConnection` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl FromStr for IceServer {
    type Err = std::convert::Infallible;

    /// `stun:host:port`, or `turn:user:pass@host:port` with credentials
    /// before the `@`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once(':').unwrap_or((s, ""));
        if let Some((auth, host)) = rest.rsplit_once('@')
            && let Some((user, pass)) = auth.split_once(':')
        {
            return Ok(IceServer {
                urls: vec![format!("{scheme}:{host}")],
                username: Some(user.to_string()),
                credential: Some(pass.to_string()),
            });
        }
        Ok(IceServer {
            urls: vec![s.to_string()],
            username: None,
            credential: None,
        })
    }
}

/// The response of every successful join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// The id the server gave this socket; signals to it use this id.
    pub peer_id: PeerId,
    /// Hosts of the page right now.
    pub count: usize,
    /// Visitors waiting for the page right now.
    pub waiting: usize,
    pub ice_servers: Vec<IceServer>,
}

/// `content_request` from a visitor, on `want:<h>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentRequest {
    /// Ask the host to send the page over the websocket instead of WebRTC.
    #[serde(default)]
    pub relay: bool,
    /// Hosts not to pick (they failed this visitor already).
    #[serde(default)]
    pub exclude: Vec<PeerId>,
}

/// The reply to a `content_request`: which host will serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRouted {
    pub host: PeerId,
}

/// `content_request` as a host receives it, on `have:<h>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRequest {
    /// The visitor to serve.
    pub from: PeerId,
    pub relay: bool,
}

/// `content`: the whole page over the websocket (the relay path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub content: String,
}

/// `visitors_count`: how healthy a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorsCount {
    /// Hosts.
    pub count: usize,
    /// Visitors still waiting.
    pub waiting: usize,
}

/// The WebRTC negotiation a `signal` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SignalBody {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// A trickled ICE candidate; an empty `candidate` ends the trickle.
    Candidate {
        candidate: String,
        #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(
            rename = "sdpMLineIndex",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        sdp_mline_index: Option<u16>,
    },
}

/// A `signal` as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalTo {
    pub to: PeerId,
    #[serde(flatten)]
    pub body: SignalBody,
}

/// A `signal` as a client receives it; `from` is stamped by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalFrom {
    pub from: PeerId,
    #[serde(flatten)]
    pub body: SignalBody,
}

/// The error reason of a `content_request` no host can serve. (The other
/// error reasons the server gives are listed in its metrics module.)
pub const NO_HOSTS: &str = "no_hosts";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_ids_are_32_hex_digits_both_ways() {
        let id = PeerId::from_random(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_string().parse(), Ok(id));
        assert_eq!(
            "+123456789abcdef0011223344556677".parse::<PeerId>(),
            Err(PeerIdError)
        );
        assert_eq!("0123".parse::<PeerId>(), Err(PeerIdError));
    }

    #[test]
    fn signals_use_browser_field_names() {
        let to = PeerId::from_random(1);
        let signal = SignalTo {
            to,
            body: SignalBody::Candidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        };
        let value = serde_json::to_value(&signal).unwrap();
        assert_eq!(
            value,
            json!({
                "to": "00000000000000000000000000000001",
                "type": "candidate",
                "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                "sdpMid": "0",
                "sdpMLineIndex": 0
            })
        );
        assert_eq!(serde_json::from_value::<SignalTo>(value).unwrap(), signal);
        let bad = json!({"to": "00000000000000000000000000000001", "type": "hello"});
        assert!(serde_json::from_value::<SignalTo>(bad).is_err());
    }

    #[test]
    fn content_request_fields_are_optional() {
        let request: ContentRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(request, ContentRequest::default());
        assert!(serde_json::from_value::<ContentRequest>(json!({"relay": "yes"})).is_err());
    }

    #[test]
    fn ice_servers_parse_with_and_without_credentials() {
        let plain: IceServer = "stun:127.0.0.1:3478".parse().unwrap();
        assert_eq!(plain.urls, ["stun:127.0.0.1:3478"]);
        assert_eq!(plain.username, None);
        let turn: IceServer = "turn:alice:s3cret@127.0.0.1:3478".parse().unwrap();
        assert_eq!(turn.urls, ["turn:127.0.0.1:3478"]);
        assert_eq!(turn.username.as_deref(), Some("alice"));
        assert_eq!(turn.credential.as_deref(), Some("s3cret"));
    }
}
