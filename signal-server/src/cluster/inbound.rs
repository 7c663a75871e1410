//! What a node does with each message it receives: as a page's home, it
//! applies other nodes' joins, leaves, requests and relays to the page's
//! routing state; as the node of a socket, it turns a home's decisions and
//! other nodes' signals into frames for that socket. Every message is
//! checked first ([`wire`](super::wire)), and a node speaks only for its
//! own sockets: a peer id it names must carry its node id.

use std::sync::atomic::Ordering;

use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{
    ContentUnavailableFrom, HostRequest, PeerId, Reason, VisitorsCount,
};
use ephemeral_shared::{PageHash, Role, Topic};
use serde_json::json;

use super::Cluster;
use super::home::Home;
use super::local::Local;
use super::ring::NodeId;
use super::wire::{Counts, Envelope, Message, PageCounts, Side};
use crate::membership::{Member, Target, lock};
use crate::registry::{Request, counts_frame, routed_reply, send_page};

/// Most pages one reply to a snapshot lists counts for.
const COUNTS_PER_MESSAGE: usize = super::wire::MAX_PAGES_PER_MESSAGE;

impl Cluster {
    /// Handles one message from Redis.
    pub fn receive(&self, home: &mut Home, bytes: &[u8]) {
        let metrics = &self.metrics.cluster;
        metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        metrics
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let envelope = match Envelope::decode(bytes, &self.settings.caps) {
            Ok(envelope) => envelope,
            Err(error) => {
                metrics.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "refused a message from Redis");
                return;
            }
        };
        let Envelope { from, msg } = envelope;
        if let Err(why) = self.check_sender(from, &msg) {
            metrics.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, kind = msg.kind(), why, "refused a message from Redis");
            return;
        }
        if from == self.node {
            return;
        }
        if !self.nodes().contains(&from) {
            // A node this one has not seen yet (or has seen go): look at
            // the node set now. What it announces counts once it is in
            // the set, when it is asked for a snapshot; until then only
            // what is for this node's own sockets is delivered.
            self.rescan.notify_one();
            if is_for_home(&msg) {
                return;
            }
        }
        self.dispatch(home, from, msg);
    }

    /// A node speaks for its own sockets only, and is spoken to about its
    /// own.
    fn check_sender(&self, from: NodeId, msg: &Message) -> Result<(), &'static str> {
        let theirs = |peer: &PeerId| NodeId::of_peer(*peer) == from;
        let ours = |peer: &PeerId| NodeId::of_peer(*peer) == self.node;
        let fine = match msg {
            Message::Join { peer, .. } | Message::Leave { peer, .. } => theirs(peer),
            Message::Request { visitor, .. } | Message::Progress { visitor, .. } => theirs(visitor),
            Message::Relay { host, .. } | Message::Unavailable { host, .. } => theirs(host),
            Message::Snapshot { pages, .. } => pages.iter().all(|page| {
                page.hosts.iter().chain(&page.wanters).all(theirs)
                    && page.unanswered.iter().all(|(_, peer)| theirs(peer))
            }),
            Message::Joined { peer, .. } => ours(peer),
            Message::Routed { visitor, .. } | Message::UnavailableFrom { visitor, .. } => {
                ours(visitor)
            }
            Message::HostRequest { host, .. }
            | Message::RelayDone { host, .. }
            | Message::UnavailableDone { host, .. } => ours(host),
            Message::Content { visitors, .. } => visitors.iter().all(ours),
            Message::Signal {
                from: sender, to, ..
            } => theirs(sender) && ours(to),
            Message::SignalRefused { from: sender, .. } => ours(sender),
            Message::Digest { .. }
            | Message::Resync
            | Message::Leaving
            | Message::Counts { .. } => true,
        };
        if fine {
            Ok(())
        } else {
            Err("it names a peer of the wrong node")
        }
    }

    /// Tells `node` its member's join of `page` is in, with the page's
    /// cluster-wide counts for the join reply.
    fn answer_join(&self, node: NodeId, page: PageHash, side: Side, peer: PeerId) {
        let counts = self.counts_of(page);
        let joined = Message::Joined {
            page,
            side,
            peer,
            counts,
        };
        self.outbox.send(node, joined);
    }

    fn dispatch(&self, home: &mut Home, from: NodeId, msg: Message) {
        let registry = &self.registry;
        match msg {
            Message::Join { page, side, peer } => {
                let topic = topic(page, side);
                home.join(registry, from, topic, peer);
                self.answer_join(from, page, side, peer);
            }
            Message::Leave { page, side, peer } => {
                home.leave(registry, from, topic(page, side), peer)
            }
            Message::Request {
                page,
                visitor,
                msg_ref,
                relay,
                exclude,
            } => {
                let request = Request {
                    visitor,
                    target: Target::Remote(from),
                    msg_ref,
                    relay,
                    exclude: exclude.into_iter().collect(),
                };
                registry.request(page, request);
            }
            Message::Progress {
                page,
                visitor,
                host,
            } => registry.progress(page, visitor, host),
            Message::Relay {
                page,
                host,
                msg_ref,
                content,
            } => {
                let bytes = content.len() as u64;
                let delivered = (registry.relay_visitors(page, host) > 0)
                    .then(|| registry.relay(page, host, content));
                let done = Message::RelayDone {
                    page,
                    host,
                    msg_ref,
                    delivered,
                    bytes,
                };
                self.outbox.send(from, done);
            }
            Message::Unavailable {
                page,
                host,
                visitor,
                size,
                msg_ref,
            } => {
                let asked = registry.relay_unavailable(page, host, visitor, size);
                let done = Message::UnavailableDone {
                    page,
                    host,
                    visitor,
                    msg_ref,
                    asked,
                };
                self.outbox.send(from, done);
            }
            Message::Snapshot { id, pages, last } => {
                if let Some((named, unanswered)) = home.snapshot(registry, from, id, pages, last) {
                    self.answer_snapshot(from, named, unanswered);
                }
            }
            Message::Digest { digest } => {
                if !home.matches(from, digest) {
                    tracing::debug!(%from, "holding other members than the node announced: resync");
                    self.outbox.send(from, Message::Resync);
                }
            }
            Message::Resync => self.send_snapshot(from),
            Message::Leaving => self.rescan.notify_one(),
            other => self.deliver(from, other),
        }
    }

    /// After a snapshot from `node`: the counts of every page it named (its
    /// sockets may have missed broadcasts), and the replies to joins still
    /// unanswered.
    fn answer_snapshot(
        &self,
        node: NodeId,
        named: Vec<PageHash>,
        unanswered: Vec<(PageHash, Side, PeerId)>,
    ) {
        for (page, side, peer) in unanswered {
            self.answer_join(node, page, side, peer);
        }
        for chunk in named.chunks(COUNTS_PER_MESSAGE) {
            let pages = chunk
                .iter()
                .map(|page| PageCounts {
                    page: *page,
                    counts: self.counts_of(*page),
                })
                .collect();
            self.outbox.send(node, Message::Counts { pages });
        }
    }

    /// The page's counts as homed here; none if it is not.
    fn counts_of(&self, page: PageHash) -> Counts {
        let none = Counts {
            count: 0,
            waiting: 0,
        };
        self.registry.counts(page).map_or(none, Counts::from)
    }

    /// A message for this node's sockets.
    fn deliver(&self, from: NodeId, msg: Message) {
        let metrics = &self.metrics;
        let mut local = lock(&self.local);
        match msg {
            Message::Joined {
                page,
                side,
                peer,
                counts,
            } => {
                let Some(member) = local.member_mut(topic(page, side), peer) else {
                    return;
                };
                if let Some(pending) = member.unanswered.take() {
                    let text = pending.answer(counts.into()).encode();
                    member.member.conn.deliver(text.into(), metrics);
                }
            }
            Message::Routed {
                page,
                visitor,
                msg_ref,
                host,
            } => {
                let Some(member) = member(&local, Topic::want(page), visitor) else {
                    return;
                };
                let reply = routed_reply(page, member, msg_ref, host);
                member.conn.deliver(reply, metrics);
            }
            Message::HostRequest {
                page,
                host,
                from: visitor,
                relay,
            } => {
                let Some(member) = member(&local, Topic::have(page), host) else {
                    return;
                };
                let ask = HostRequest {
                    from: visitor,
                    relay,
                };
                push(
                    member,
                    Topic::have(page),
                    event::CONTENT_REQUEST,
                    &ask,
                    metrics,
                );
            }
            Message::Counts { pages } => {
                for PageCounts { page, counts } in pages {
                    let Some(members) = local.pages.get(&page) else {
                        continue;
                    };
                    let counts = VisitorsCount::from(counts);
                    for role in [Role::Have, Role::Want] {
                        let topic = Topic { role, hash: page };
                        let text = counts_frame(topic, &counts);
                        for member in members.side(role).values() {
                            member.member.conn.deliver(text.clone(), metrics);
                        }
                    }
                    metrics.count_broadcasts.fetch_add(2, Ordering::Relaxed);
                }
            }
            // One message per page crosses Redis; its parts are made here,
            // by the node that writes to the visitors' sockets.
            Message::Content {
                page,
                visitors,
                content,
            } => {
                for visitor in visitors {
                    if let Some(member) = member(&local, Topic::want(page), visitor) {
                        send_page(member, page, &content, metrics);
                    }
                }
            }
            Message::UnavailableFrom {
                page,
                visitor,
                from: host,
                size,
            } => {
                let Some(member) = member(&local, Topic::want(page), visitor) else {
                    return;
                };
                let payload = ContentUnavailableFrom { from: host, size };
                push(
                    member,
                    Topic::want(page),
                    event::CONTENT_UNAVAILABLE,
                    &payload,
                    metrics,
                );
            }
            Message::RelayDone {
                page,
                host,
                msg_ref,
                delivered,
                bytes,
            } => {
                let Some(member) = member(&local, Topic::have(page), host) else {
                    return;
                };
                let frame = reply_base(member, Topic::have(page), event::CONTENT, msg_ref);
                let reply = match delivered {
                    Some(n) => {
                        // The host's address paid for one copy before the
                        // page left; the others are spent from what is left
                        // of its allowance (docs/cluster.md).
                        let copies = n.saturating_sub(1) as u64;
                        if copies > 0 {
                            member
                                .conn
                                .address
                                .admit_relay(copies.saturating_mul(bytes));
                        }
                        frame.reply_ok(&json!({ "delivered": n }))
                    }
                    None => not_requested(
                        &frame,
                        "no visitor's request for the page went to this host",
                    ),
                };
                member.conn.deliver(reply.encode().into(), metrics);
            }
            Message::UnavailableDone {
                page,
                host,
                visitor,
                msg_ref,
                asked,
            } => {
                let Some(member) = member(&local, Topic::have(page), host) else {
                    return;
                };
                let frame = reply_base(
                    member,
                    Topic::have(page),
                    event::CONTENT_UNAVAILABLE,
                    msg_ref,
                );
                let reply = if asked {
                    frame.reply_ok(&json!({}))
                } else {
                    not_requested(
                        &frame,
                        &format!("peer {visitor} did not ask this host for the page"),
                    )
                };
                member.conn.deliver(reply.encode().into(), metrics);
            }
            Message::Signal {
                page,
                side,
                from: sender,
                to,
                msg_ref,
                body,
            } => {
                let other_side = topic(page, side).opposite();
                match member(&local, other_side, to) {
                    Some(target) => target.deliver_signal(other_side, sender, body, metrics),
                    None => {
                        drop(local);
                        let refused = Message::SignalRefused {
                            page,
                            side,
                            from: sender,
                            to,
                            msg_ref,
                        };
                        self.outbox.send(from, refused);
                    }
                }
            }
            Message::SignalRefused {
                page,
                side,
                from: sender,
                to,
                msg_ref,
            } => {
                let topic = topic(page, side);
                let Some(member) = member(&local, topic, sender) else {
                    return;
                };
                let frame = reply_base(member, topic, event::SIGNAL, msg_ref);
                let detail = format!("peer {to} is not on {}", topic.opposite());
                let reply = frame.reply_error_detail(Reason::UnknownPeer.as_str(), &detail);
                metrics.reject(Reason::UnknownPeer);
                member.conn.deliver(reply.encode().into(), metrics);
            }
            // For a page's home: handled by `dispatch`.
            Message::Join { .. }
            | Message::Leave { .. }
            | Message::Request { .. }
            | Message::Progress { .. }
            | Message::Relay { .. }
            | Message::Unavailable { .. }
            | Message::Snapshot { .. }
            | Message::Digest { .. }
            | Message::Resync
            | Message::Leaving => {}
        }
    }
}

/// Whether a message changes what a page's home holds.
fn is_for_home(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Join { .. }
            | Message::Leave { .. }
            | Message::Request { .. }
            | Message::Progress { .. }
            | Message::Relay { .. }
            | Message::Unavailable { .. }
            | Message::Snapshot { .. }
            | Message::Digest { .. }
    )
}

fn topic(page: PageHash, side: Side) -> Topic {
    Topic {
        role: Role::from(side),
        hash: page,
    }
}

fn member(local: &Local, topic: Topic, peer: PeerId) -> Option<&Member> {
    local.member(topic, peer).map(|m| &m.member)
}

fn push<P: serde::Serialize>(
    member: &Member,
    topic: Topic,
    event: &str,
    payload: &P,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let text = Frame::with_payload(
        member.join_ref.clone(),
        None,
        topic.to_string(),
        event,
        payload,
    )
    .encode();
    member.conn.deliver(text.into(), metrics)
}

/// The frame a reply to a member's push answers.
fn reply_base(member: &Member, topic: Topic, event: &str, msg_ref: Option<String>) -> Frame {
    Frame::new(
        member.join_ref.clone(),
        msg_ref,
        topic.to_string(),
        event,
        Default::default(),
    )
}

fn not_requested(frame: &Frame, detail: &str) -> Frame {
    frame.reply_error_detail(Reason::NotRequested.as_str(), detail)
}
