//! What nodes say to each other over Redis, typed, and checked like client
//! input: nodes trust Redis to carry messages, not what the messages say.
//! Every message is one JSON [`Envelope`]; unknown fields, wrong types,
//! peer ids and page hashes that do not parse, and anything over its size
//! cap are refused before the message is acted on.

use ephemeral_shared::protocol::{MAX_EXCLUDE, SignalBody, VisitorsCount};
use ephemeral_shared::{PageHash, PeerId, Role};
use serde::{Deserialize, Serialize};

use super::ring::{Digest, NodeId};

/// Most pages one snapshot or counts message lists; larger sets are split.
pub const MAX_PAGES_PER_MESSAGE: usize = 1024;
/// Most members one snapshot message lists; larger sets are split.
pub const MAX_MEMBERS_PER_MESSAGE: usize = 16_384;
/// Longest message ref carried for a reply: a client's ref fits in its
/// control message (8 KiB by default).
pub const MAX_REF_BYTES: usize = 8 * 1024;

/// Which side of a page, as the wire spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Have,
    Want,
}

impl SnapshotPage {
    pub fn new(page: PageHash) -> Self {
        Self {
            page,
            hosts: Vec::new(),
            wanters: Vec::new(),
            unanswered: Vec::new(),
        }
    }
}

impl From<Role> for Side {
    fn from(role: Role) -> Self {
        match role {
            Role::Have => Side::Have,
            Role::Want => Side::Want,
        }
    }
}

impl From<Side> for Role {
    fn from(side: Side) -> Self {
        match side {
            Side::Have => Role::Have,
            Side::Want => Role::Want,
        }
    }
}

/// A page's counts, as `visitors_count` carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub count: usize,
    pub waiting: usize,
}

impl From<VisitorsCount> for Counts {
    fn from(counts: VisitorsCount) -> Self {
        Self {
            count: counts.count,
            waiting: counts.waiting,
        }
    }
}

impl From<Counts> for VisitorsCount {
    fn from(counts: Counts) -> Self {
        Self {
            count: counts.count,
            waiting: counts.waiting,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageCounts {
    pub page: PageHash,
    pub counts: Counts,
}

/// One page's members on the sending node, in a [`Message::Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPage {
    pub page: PageHash,
    #[serde(default)]
    pub hosts: Vec<PeerId>,
    #[serde(default)]
    pub wanters: Vec<PeerId>,
    /// Members among those still waiting for the reply to their join: the
    /// home answers them with [`Message::Joined`].
    #[serde(default)]
    pub unanswered: Vec<(Side, PeerId)>,
}

/// Every message between nodes. The first group goes to a page's home,
/// the second from the home to the node of the member it concerns, the
/// last between any two nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// A member of the sender joined a side of a page.
    Join {
        page: PageHash,
        side: Side,
        peer: PeerId,
    },
    Leave {
        page: PageHash,
        side: Side,
        peer: PeerId,
    },
    /// A visitor's `content_request`.
    Request {
        page: PageHash,
        visitor: PeerId,
        msg_ref: Option<String>,
        relay: bool,
        exclude: Vec<PeerId>,
    },
    /// The visitor signalled `host`: its upload slot is in use.
    Progress {
        page: PageHash,
        visitor: PeerId,
        host: PeerId,
    },
    /// A host's `content`, checked by its node (size, hash, quota).
    Relay {
        page: PageHash,
        host: PeerId,
        msg_ref: Option<String>,
        content: String,
    },
    /// A host's `content_unavailable`.
    Unavailable {
        page: PageHash,
        host: PeerId,
        visitor: PeerId,
        size: u64,
        msg_ref: Option<String>,
    },
    /// Part of everything the sender's sockets are members of on pages it
    /// believes the receiver homes. Parts with one `id` add up; the one
    /// with `last` completes it, and the receiver then holds exactly that
    /// for the sender.
    Snapshot {
        id: u64,
        pages: Vec<SnapshotPage>,
        last: bool,
    },
    /// What the receiver should hold for the sender; if it does not, it
    /// asks for a snapshot.
    Digest { digest: Digest },
    /// Send me a snapshot: I lost what you told me, or never had it.
    Resync,
    /// The sender is shutting down: take it out of the node set now.
    Leaving,

    /// The home took the join: the reply, with the counts.
    Joined {
        page: PageHash,
        side: Side,
        peer: PeerId,
        counts: Counts,
    },
    /// The answer to a visitor's request: its host, or none (`no_hosts`).
    Routed {
        page: PageHash,
        visitor: PeerId,
        msg_ref: Option<String>,
        host: Option<PeerId>,
    },
    /// Tell `host` to serve `from`.
    HostRequest {
        page: PageHash,
        host: PeerId,
        from: PeerId,
        relay: bool,
    },
    /// `visitors_count` for the receiver's members of these pages.
    Counts { pages: Vec<PageCounts> },
    /// A relayed page for these visitors of the receiver.
    Content {
        page: PageHash,
        visitors: Vec<PeerId>,
        content: String,
    },
    /// `content_unavailable` for a visitor of the receiver.
    UnavailableFrom {
        page: PageHash,
        visitor: PeerId,
        from: PeerId,
        size: u64,
    },
    /// The reply to a host's relay: to how many visitors, or `None` when
    /// none had asked it (`not_requested`); `bytes` is the page's size.
    RelayDone {
        page: PageHash,
        host: PeerId,
        msg_ref: Option<String>,
        delivered: Option<usize>,
        bytes: u64,
    },
    /// The reply to a host's `content_unavailable`: whether `visitor` had
    /// asked it.
    UnavailableDone {
        page: PageHash,
        host: PeerId,
        visitor: PeerId,
        msg_ref: Option<String>,
        asked: bool,
    },

    /// A signal from `from` (stamped by the sender's node) on `side` of the
    /// page, for `to`, a socket of the receiver on the other side.
    Signal {
        page: PageHash,
        side: Side,
        from: PeerId,
        to: PeerId,
        msg_ref: Option<String>,
        body: SignalBody,
    },
    /// `to` is not on the other side of the page: refuse `from`'s signal.
    SignalRefused {
        page: PageHash,
        side: Side,
        from: PeerId,
        to: PeerId,
        msg_ref: Option<String>,
    },
}

impl Message {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Leave { .. } => "leave",
            Message::Request { .. } => "request",
            Message::Progress { .. } => "progress",
            Message::Relay { .. } => "relay",
            Message::Unavailable { .. } => "unavailable",
            Message::Snapshot { .. } => "snapshot",
            Message::Digest { .. } => "digest",
            Message::Resync => "resync",
            Message::Leaving => "leaving",
            Message::Joined { .. } => "joined",
            Message::Routed { .. } => "routed",
            Message::HostRequest { .. } => "host_request",
            Message::Counts { .. } => "counts",
            Message::Content { .. } => "content",
            Message::UnavailableFrom { .. } => "unavailable_from",
            Message::RelayDone { .. } => "relay_done",
            Message::UnavailableDone { .. } => "unavailable_done",
            Message::Signal { .. } => "signal",
            Message::SignalRefused { .. } => "signal_refused",
        }
    }
}

/// One message on the wire, with the node that sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub from: NodeId,
    pub msg: Message,
}

/// The caps a received message is checked against: the node's own limits
/// for what clients may send, since every message started as client input.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_page_bytes: usize,
    pub max_signal_bytes: usize,
}

impl Caps {
    /// The largest envelope worth parsing: a page at the worst JSON
    /// escaping (six bytes per byte), or a full snapshot part (each member
    /// listed once, and once more while its join awaits its reply), plus
    /// room for the rest.
    pub fn max_envelope_bytes(&self) -> usize {
        let page = self.max_page_bytes.saturating_mul(6);
        let snapshot = MAX_MEMBERS_PER_MESSAGE * 90 + MAX_PAGES_PER_MESSAGE * 100;
        page.max(snapshot).saturating_add(64 * 1024)
    }
}

/// Why a received message was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the cap")]
    TooLarge(usize),
    #[error("message does not parse: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{kind} message: {why}")]
    Invalid { kind: &'static str, why: String },
}

fn invalid(kind: &'static str, why: impl Into<String>) -> WireError {
    WireError::Invalid {
        kind,
        why: why.into(),
    }
}

fn check_ref(kind: &'static str, msg_ref: &Option<String>) -> Result<(), WireError> {
    match msg_ref {
        Some(r) if r.len() > MAX_REF_BYTES => Err(invalid(kind, "message ref too long")),
        _ => Ok(()),
    }
}

impl Envelope {
    pub fn encode(&self) -> String {
        // Serializing our own types to a string cannot fail: no maps with
        // non-string keys, no custom serializers that error.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a received message.
    pub fn decode(bytes: &[u8], caps: &Caps) -> Result<Self, WireError> {
        if bytes.len() > caps.max_envelope_bytes() {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        envelope.msg.check(caps)?;
        Ok(envelope)
    }
}

impl Message {
    /// The checks serde's types cannot say: lengths, and that a page's
    /// content is that page.
    fn check(&self, caps: &Caps) -> Result<(), WireError> {
        let kind = self.kind();
        match self {
            Message::Request {
                exclude, msg_ref, ..
            } => {
                if exclude.len() > MAX_EXCLUDE {
                    return Err(invalid(kind, "too many exclusions"));
                }
                check_ref(kind, msg_ref)
            }
            Message::Relay {
                page,
                content,
                msg_ref,
                ..
            } => {
                check_content(kind, *page, content, caps)?;
                check_ref(kind, msg_ref)
            }
            Message::Content { page, content, .. } => check_content(kind, *page, content, caps),
            Message::Unavailable { msg_ref, .. }
            | Message::Routed { msg_ref, .. }
            | Message::RelayDone { msg_ref, .. }
            | Message::UnavailableDone { msg_ref, .. }
            | Message::SignalRefused { msg_ref, .. } => check_ref(kind, msg_ref),
            Message::Signal { msg_ref, body, .. } => {
                let len = match body {
                    SignalBody::Offer { sdp } | SignalBody::Answer { sdp } => sdp.len(),
                    SignalBody::Candidate {
                        candidate, sdp_mid, ..
                    } => candidate.len() + sdp_mid.as_ref().map_or(0, String::len),
                };
                if len > caps.max_signal_bytes {
                    return Err(invalid(kind, "signal over the signal cap"));
                }
                check_ref(kind, msg_ref)
            }
            Message::Snapshot { pages, .. } => {
                if pages.len() > MAX_PAGES_PER_MESSAGE {
                    return Err(invalid(kind, "too many pages"));
                }
                let members: usize = pages
                    .iter()
                    .map(|p| p.hosts.len() + p.wanters.len() + p.unanswered.len())
                    .sum();
                if members > MAX_MEMBERS_PER_MESSAGE * 2 {
                    return Err(invalid(kind, "too many members"));
                }
                Ok(())
            }
            Message::Counts { pages } => {
                if pages.len() > MAX_PAGES_PER_MESSAGE {
                    return Err(invalid(kind, "too many pages"));
                }
                Ok(())
            }
            Message::Join { .. }
            | Message::Leave { .. }
            | Message::Progress { .. }
            | Message::Digest { .. }
            | Message::Resync
            | Message::Leaving
            | Message::Joined { .. }
            | Message::HostRequest { .. }
            | Message::UnavailableFrom { .. } => Ok(()),
        }
    }
}

fn check_content(
    kind: &'static str,
    page: PageHash,
    content: &str,
    caps: &Caps,
) -> Result<(), WireError> {
    if content.len() > caps.max_page_bytes {
        return Err(invalid(kind, "page over the page cap"));
    }
    if !page.matches(content.as_bytes()) {
        return Err(invalid(kind, "content does not hash to the page"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_page_bytes: 1024,
        max_signal_bytes: 256,
    };

    fn peer(n: u128) -> PeerId {
        PeerId::from_random(n)
    }

    fn envelope(msg: Message) -> Envelope {
        Envelope {
            from: NodeId::from_bits(7),
            msg,
        }
    }

    #[test]
    fn every_kind_of_message_survives_the_wire() {
        let page = PageHash::of(b"hello");
        let messages = vec![
            Message::Join {
                page,
                side: Side::Have,
                peer: peer(1),
            },
            Message::Request {
                page,
                visitor: peer(2),
                msg_ref: Some("7".into()),
                relay: true,
                exclude: vec![peer(3)],
            },
            Message::Relay {
                page,
                host: peer(1),
                msg_ref: None,
                content: "hello".into(),
            },
            Message::Snapshot {
                id: 3,
                pages: vec![SnapshotPage {
                    page,
                    hosts: vec![peer(1)],
                    wanters: vec![],
                    unanswered: vec![(Side::Have, peer(1))],
                }],
                last: true,
            },
            Message::Digest {
                digest: Digest { members: 2, xor: 9 },
            },
            Message::Resync,
            Message::Counts {
                pages: vec![PageCounts {
                    page,
                    counts: Counts {
                        count: 1,
                        waiting: 2,
                    },
                }],
            },
            Message::Signal {
                page,
                side: Side::Want,
                from: peer(2),
                to: peer(1),
                msg_ref: None,
                body: SignalBody::Answer { sdp: "v=0".into() },
            },
        ];
        for msg in messages {
            let sent = envelope(msg);
            let text = sent.encode();
            let received = Envelope::decode(text.as_bytes(), &CAPS).expect(&text);
            assert_eq!(received, sent);
        }
    }

    fn refused(text: &str) -> WireError {
        Envelope::decode(text.as_bytes(), &CAPS).expect_err(text)
    }

    #[test]
    fn unknown_fields_and_bad_ids_are_refused() {
        let page = PageHash::of(b"hello");
        let good = format!(
            r#"{{"from":"00000007","msg":{{"type":"leave","page":"{page}","side":"want","peer":"{}"}}}}"#,
            peer(1)
        );
        assert!(Envelope::decode(good.as_bytes(), &CAPS).is_ok(), "{good}");
        for bad in [
            good.replace(r#""side":"want""#, r#""side":"want","extra":1"#),
            good.replace(r#""from":"00000007""#, r#""from":"7""#),
            good.replace(r#""type":"leave""#, r#""type":"explode""#),
            good.replace(&peer(1).to_string(), "not-a-peer"),
            good.replace(&page.to_string(), "abc"),
            good.replace(r#"}}"#, r#"},"more":true}"#),
        ] {
            assert!(matches!(refused(&bad), WireError::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn sizes_and_contents_are_checked() {
        let page = PageHash::of(b"hello");
        let wrong_page = envelope(Message::Content {
            page,
            visitors: vec![peer(1)],
            content: "hellO".into(),
        });
        assert!(matches!(
            refused(&wrong_page.encode()),
            WireError::Invalid { .. }
        ));
        let big = "x".repeat(CAPS.max_page_bytes + 1);
        let too_big = envelope(Message::Relay {
            page: PageHash::of(big.as_bytes()),
            host: peer(1),
            msg_ref: None,
            content: big,
        });
        assert!(matches!(
            refused(&too_big.encode()),
            WireError::Invalid { .. }
        ));
        let excluding = envelope(Message::Request {
            page,
            visitor: peer(1),
            msg_ref: None,
            relay: false,
            exclude: (0..=MAX_EXCLUDE as u128).map(peer).collect(),
        });
        assert!(matches!(
            refused(&excluding.encode()),
            WireError::Invalid { .. }
        ));
        let long_signal = envelope(Message::Signal {
            page,
            side: Side::Have,
            from: peer(1),
            to: peer(2),
            msg_ref: None,
            body: SignalBody::Offer {
                sdp: "v".repeat(CAPS.max_signal_bytes + 1),
            },
        });
        assert!(matches!(
            refused(&long_signal.encode()),
            WireError::Invalid { .. }
        ));
        let huge = " ".repeat(CAPS.max_envelope_bytes() + 1);
        assert!(matches!(refused(&huge), WireError::TooLarge(_)));
    }
}
