//! Typed payloads of every event Ephemeral speaks (docs/protocol.md), and
//! server-assigned peer ids.

use std::borrow::Cow;
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

/// What a client may say when it joins. A visitor that just got the page
/// and joins `have:` says which way it came, so the server can count
/// fetches by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<crate::path::Path>,
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
    /// Largest page the server relays over the websocket, in bytes; a
    /// host with a larger page answers relay requests with
    /// `content_unavailable` instead of sending it. Absent from servers
    /// that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relay_bytes: Option<usize>,
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

/// `content` from a host, on `have:<h>`: the whole page, for the server
/// to relay over the websocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub content: String,
}

/// `content` as a visitor receives it, on `want:<h>`: one part of a
/// relayed page, `size` bytes in all, whose bytes start at `offset`. The
/// server sends the parts in order, cut on character boundaries
/// ([`crate::relay`]), so that a visitor can show how far it has got.
/// Borrowed when the server writes it, owned when a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart<'a> {
    pub content: Cow<'a, str>,
    pub offset: usize,
    pub size: usize,
}

/// `content_unavailable` from a host, on `have:<h>`: it cannot send the
/// page to `to` over the relay, because the page is larger than the
/// server relays. The server forwards it only to a visitor that asked
/// this host for relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentUnavailable {
    pub to: PeerId,
    /// The page's size in bytes.
    pub size: u64,
}

/// `content_unavailable` as the visitor receives it, on `want:<h>`;
/// `from` is stamped by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentUnavailableFrom {
    pub from: PeerId,
    pub size: u64,
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

/// Most peers one `content_request` may exclude: a visitor excludes the
/// hosts that failed it, a handful at most, and the server checks the
/// list for every candidate host.
pub const MAX_EXCLUDE: usize = 64;

macro_rules! reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why the server refused something: the `reason` of an error
        /// reply, the label of `ephemeral_rejected_total`, and what a
        /// client matches on. One list for the server and both clients.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }

        impl FromStr for Reason {
            type Err = UnknownReason;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Reason::$variant),)*
                    _ => Err(UnknownReason),
                }
            }
        }
    };
}

reasons! {
    NoHosts => "no_hosts", "No host may serve this `content_request`.";
    MalformedJson => "malformed_json", "The message is not JSON.";
    WrongArity => "wrong_arity", "Not a five-element Phoenix V2 array.";
    MalformedFrame => "malformed_frame", "A field of the array has the wrong type.";
    UnknownTopic => "unknown_topic", "Not `phoenix`, `have:<hash>` or `want:<hash>`.";
    NotJoined => "not_joined", "Sent on a topic the socket has not joined.";
    AlreadyJoined => "already_joined", "Joined a topic twice.";
    TooManyTopics => "too_many_topics", "Past the topics one socket may join.";
    UnknownEvent => "unknown_event", "An event this topic does not take.";
    BadPayload => "bad_payload", "The payload does not fit the event.";
    HashMismatch => "hash_mismatch", "Relayed content does not hash to its topic.";
    PageTooLarge => "page_too_large", "Relayed content past the server's page limit.";
    MessageTooLarge => "message_too_large", "A message past the size cap of its event.";
    UnknownPeer => "unknown_peer", "A signal to a peer not on the other side of the page.";
    NotRequested => "not_requested", "Relay content or refusal nobody asked this host for.";
    RateLimited => "rate_limited", "Past the socket's messages per second.";
    AddressRateLimited => "address_rate_limited", "Past the messages, bytes or joins per second of the client's address.";
    RelayQuota => "relay_quota", "Past the relayed bytes per second of the client's address.";
    Flooding => "flooding", "Kept sending past its limits; the socket was closed.";
    OversizeMessage => "oversize_message", "A websocket message past the server's largest.";
    InvalidUtf8 => "invalid_utf8", "A text frame that is not UTF-8.";
    BinaryFrame => "binary_frame", "Binary frames are not part of the protocol.";
    SlowConsumer => "slow_consumer", "A socket that did not read what it was sent.";
    IdleTimeout => "idle_timeout", "A socket silent past the idle timeout.";
    SlotTimeout => "slot_timeout", "An upload slot held without progress.";
    OriginNotAllowed => "origin_not_allowed", "A websocket from an origin not on the allow-list.";
    BadHandshake => "bad_handshake", "A websocket upgrade with a malformed key.";
    TooManyConnections => "too_many_connections", "Past the server's open websockets.";
    TooManyFromAddress => "too_many_from_address", "Past the connections of one address.";
    HttpTimeout => "http_timeout", "An HTTP request whose headers did not arrive in time.";
    MetricsUnauthorized => "metrics_unauthorized", "`/metrics` without the operator's token.";
    TurnCredentials => "turn_credentials", "A TURN request with credentials the server never minted.";
    TurnExpired => "turn_expired", "A TURN request with expired credentials.";
    TurnAllocations => "turn_allocations", "Past the TURN allocations one session may hold.";
    TurnPeerAddress => "turn_peer_address", "TURN traffic to or from a private, loopback or other closed range.";
    TurnQuota => "turn_quota", "TURN traffic past an allocation's byte quota.";
    TurnDisabled => "turn_disabled", "A TURN allocation on a server run with `--no-turn`.";
}

/// A reason string this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error reason")]
pub struct UnknownReason;

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
    fn a_join_may_say_which_way_the_page_came() {
        let plain: JoinPayload = serde_json::from_value(json!({})).unwrap();
        assert_eq!(plain.path, None);
        let turn: JoinPayload = serde_json::from_value(json!({"path": "turn"})).unwrap();
        assert_eq!(turn.path, Some(crate::path::Path::Turn));
        assert!(serde_json::from_value::<JoinPayload>(json!({"path": "pigeon"})).is_err());
    }

    #[test]
    fn content_request_fields_are_optional() {
        let request: ContentRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(request, ContentRequest::default());
        assert!(serde_json::from_value::<ContentRequest>(json!({"relay": "yes"})).is_err());
    }

    #[test]
    fn content_parts_say_where_they_go_and_refuse_anything_else() {
        let part = ContentPart {
            content: Cow::Borrowed("ab"),
            offset: 3,
            size: 5,
        };
        let value = serde_json::to_value(&part).unwrap();
        assert_eq!(value, json!({"content": "ab", "offset": 3, "size": 5}));
        assert_eq!(serde_json::from_value::<ContentPart>(value).unwrap(), part);
        let extra = json!({"content": "ab", "offset": 3, "size": 5, "from": "x"});
        assert!(serde_json::from_value::<ContentPart>(extra).is_err());
        let whole = json!({"content": "ab"});
        assert!(serde_json::from_value::<ContentPart>(whole).is_err());
        let negative = json!({"content": "ab", "offset": -1, "size": 5});
        assert!(serde_json::from_value::<ContentPart>(negative).is_err());
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(*reason));
        }
        assert_eq!("nope".parse::<Reason>(), Err(UnknownReason));
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
