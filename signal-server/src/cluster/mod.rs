//! Many server nodes as one, through Redis (`--redis`; docs/cluster.md).
//!
//! Each page has a home: the live node that rendezvous hashing picks for
//! it ([`ring`]). The page's routing state — the same policy as in one
//! process, `shared::routing` in the [`Registry`] — lives on its home
//! only. A node's sockets stay its own ([`local`]): it forwards their
//! joins, leaves and requests to each page's home, which answers with
//! typed messages ([`wire`]) the node turns into frames; a signal goes
//! straight to the node of the peer it is for, which the peer id names.
//! When the set of live nodes changes, pages move, and every node tells
//! every other what it should hold from it ([`home`], snapshots); digests
//! compared every heartbeat repair whatever was lost on the way.
//!
//! - [`Cluster`]: the node's side of all this, called by the sockets; the
//!   view of live nodes and its changes.
//! - [`inbound`]: what the node does with each message it receives.
//! - [`link`]: the Redis connection: heartbeats, the node set, pub/sub,
//!   reconnects.
//! - [`outbox`]: the ordered, bounded queue of messages for other nodes.

pub mod home;
pub mod inbound;
pub mod link;
pub mod local;
pub mod outbox;
pub mod ring;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ephemeral_shared::protocol::{PeerId, SignalBody, VisitorsCount};
use ephemeral_shared::{PageHash, Role, Topic};
use tokio::sync::Notify;

pub use outbox::{Outbox, Outgoing};
pub use ring::NodeId;

use crate::membership::{Member, Target, lock};
use crate::metrics::Metrics;
use crate::registry::{Registry, Request};
use home::Home;
use local::{Local, LocalMember, PendingJoin};
use wire::{Caps, Message, Side};

/// How a cluster node behaves, from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis_url: String,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    /// How often at most the home hears that a visitor's slot is in use:
    /// a fraction of the slot timeout, so a slot in use never expires, and
    /// a negotiation's dozen signals cost one message, not twelve.
    pub progress_every: Duration,
    pub caps: Caps,
}

/// The node's side of the cluster: shared by the sockets and the link.
#[derive(Debug)]
pub struct Cluster {
    pub node: NodeId,
    settings: Settings,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    /// The live nodes as this node sees them, itself always included. Read
    /// by every operation that picks a page's home; written when the set
    /// changes, which also moves pages, so that no operation sees half a
    /// move.
    view: RwLock<BTreeSet<NodeId>>,
    local: Mutex<Local>,
    /// Whether the link to Redis is up.
    up: AtomicBool,
    /// Wakes the link to look at the node set now (a message came from a
    /// node it does not know, or a node said it is leaving).
    pub rescan: Notify,
    snapshot_ids: AtomicU64,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Like `membership::lock`: every write is a whole replacement.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An input refused: the reason and a sentence for the client.
pub type Refusal = (ephemeral_shared::protocol::Reason, String);

impl Cluster {
    pub fn new(
        node: NodeId,
        settings: Settings,
        registry: Arc<Registry>,
        outbox: Outbox,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.cluster.enabled.store(true, Ordering::Relaxed);
        metrics.cluster.nodes_alive.store(1, Ordering::Relaxed);
        Self {
            node,
            settings,
            registry,
            metrics,
            outbox,
            view: RwLock::new([node].into_iter().collect()),
            local: Mutex::default(),
            up: AtomicBool::new(false),
            rescan: Notify::new(),
            snapshot_ids: AtomicU64::new(1),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A fresh peer id for a socket of this node.
    pub fn new_peer_id(&self) -> PeerId {
        self.node.peer_id(rand::random())
    }

    /// Whether the node reaches Redis, so serves as part of the cluster.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn nodes(&self) -> BTreeSet<NodeId> {
        read(&self.view).clone()
    }

    fn home_in(&self, view: &BTreeSet<NodeId>, hash: PageHash) -> NodeId {
        ring::home(hash, view).unwrap_or(self.node)
    }

    /// Whether this node homes the page now.
    pub fn homes(&self, hash: PageHash) -> bool {
        self.home_in(&read(&self.view), hash) == self.node
    }

    /// A socket of this node joins `topic`. The counts when the reply can
    /// go now (the page is homed here); otherwise the home's answer sends
    /// `pending` with the counts.
    pub fn join(
        &self,
        topic: Topic,
        member: Member,
        pending: PendingJoin,
    ) -> Option<VisitorsCount> {
        let view = read(&self.view);
        let home = self.home_in(&view, topic.hash);
        let peer = member.conn.peer;
        self.metrics.topics.fetch_add(1, Ordering::Relaxed);
        let mut local = lock(&self.local);
        if home == self.node {
            let entry = LocalMember {
                member: member.clone(),
                unanswered: None,
                progress_sent: None,
            };
            local.insert(topic, entry, None);
            drop(local);
            return Some(self.registry.join(topic, peer, Target::Local(member)));
        }
        let entry = LocalMember {
            member,
            unanswered: Some(Box::new(pending)),
            progress_sent: None,
        };
        local.insert(topic, entry, Some(home));
        let side = Side::from(topic.role);
        let page = topic.hash;
        // Queued under the lock, so that snapshots and digests, queued
        // under it too, are in step with the joins and leaves before them.
        self.outbox.send(home, Message::Join { page, side, peer });
        None
    }

    /// A socket of this node leaves `topic`.
    pub fn leave(&self, topic: Topic, peer: PeerId) {
        let view = read(&self.view);
        let home = self.home_in(&view, topic.hash);
        let remote = (home != self.node).then_some(home);
        let mut local = lock(&self.local);
        let Some(removed) = local.remove(topic, peer, remote) else {
            return;
        };
        self.metrics.topics.fetch_sub(1, Ordering::Relaxed);
        if let Some(pending) = removed.unanswered {
            // Left before the home answered: the join is answered with
            // what this node knows, so the client is not left waiting.
            let counts = local
                .pages
                .get(&topic.hash)
                .map(local::LocalPage::counts)
                .unwrap_or(VisitorsCount {
                    count: 0,
                    waiting: 0,
                });
            let text = pending.answer(counts).encode();
            removed.member.conn.deliver(text.into(), &self.metrics);
        }
        match remote {
            Some(home) => {
                let side = Side::from(topic.role);
                let page = topic.hash;
                self.outbox.send(home, Message::Leave { page, side, peer });
            }
            None => {
                drop(local);
                self.registry.leave(topic, peer);
            }
        }
    }

    /// A visitor's `content_request`, routed by the page's home; the
    /// reply goes out when the home has decided.
    pub fn request(&self, hash: PageHash, request: Request) {
        let view = read(&self.view);
        let home = self.home_in(&view, hash);
        if home == self.node {
            self.registry.request(hash, request);
            return;
        }
        let message = Message::Request {
            page: hash,
            visitor: request.visitor,
            msg_ref: request.msg_ref,
            relay: request.relay,
            exclude: request.exclude.into_iter().collect(),
        };
        self.outbox.send(home, message);
    }

    /// A signal from `visitor` to `host`: the visitor's slot is in use.
    fn progress(&self, hash: PageHash, visitor: PeerId, host: PeerId) {
        let view = read(&self.view);
        let home = self.home_in(&view, hash);
        if home == self.node {
            self.registry.progress(hash, visitor, host);
            return;
        }
        let mut local = lock(&self.local);
        let Some(member) = local.member_mut(Topic::want(hash), visitor) else {
            return;
        };
        let now = Instant::now();
        let every = self.settings.progress_every;
        if member
            .progress_sent
            .is_some_and(|at| now.duration_since(at) < every)
        {
            return;
        }
        member.progress_sent = Some(now);
        let message = Message::Progress {
            page: hash,
            visitor,
            host,
        };
        self.outbox.send(home, message);
    }

    /// Forwards `from`'s signal on `topic` to `to`, on whichever node
    /// `to`'s socket is. Refused at once when `to` cannot be on the other
    /// side of the page; when its node finds it is not, that node says so
    /// and the refusal comes back as an error reply to `msg_ref`.
    pub fn signal(
        &self,
        topic: Topic,
        from: PeerId,
        msg_ref: Option<String>,
        to: PeerId,
        body: SignalBody,
    ) -> Result<(), Refusal> {
        let other_side = topic.opposite();
        let unknown = || {
            let detail = format!("peer {to} is not on {other_side}");
            (ephemeral_shared::protocol::Reason::UnknownPeer, detail)
        };
        let node = NodeId::of_peer(to);
        if node == self.node {
            let target = lock(&self.local)
                .member(other_side, to)
                .map(|m| m.member.clone())
                .ok_or_else(unknown)?;
            target.deliver_signal(other_side, from, body, &self.metrics);
        } else {
            if !read(&self.view).contains(&node) {
                return Err(unknown());
            }
            let message = Message::Signal {
                page: topic.hash,
                side: Side::from(topic.role),
                from,
                to,
                msg_ref,
                body,
            };
            self.outbox.send(node, message);
        }
        if topic.role == Role::Want {
            // The visitor answers its host: its upload slot is in use.
            self.progress(topic.hash, from, to);
        }
        Ok(())
    }

    /// Forwards a host's relayed page to the page's home, which sends it
    /// to the visitors that asked this host and answers how many.
    pub fn relay(&self, hash: PageHash, host: PeerId, msg_ref: Option<String>, content: String) {
        let home = self.home_in(&read(&self.view), hash);
        let message = Message::Relay {
            page: hash,
            host,
            msg_ref,
            content,
        };
        self.outbox.send(home, message);
    }

    /// Forwards a host's `content_unavailable` to the page's home.
    pub fn relay_unavailable(
        &self,
        hash: PageHash,
        host: PeerId,
        visitor: PeerId,
        size: u64,
        msg_ref: Option<String>,
    ) {
        let home = self.home_in(&read(&self.view), hash);
        let message = Message::Unavailable {
            page: hash,
            host,
            visitor,
            size,
            msg_ref,
        };
        self.outbox.send(home, message);
    }

    /// The link is up or down. Down, the node serves alone: the node set
    /// is itself, every page is homed here.
    pub fn set_up(&self, home: &mut Home, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.outbox.set_open(up);
        self.metrics
            .cluster
            .redis_up
            .store(i64::from(up), Ordering::Relaxed);
        if !up {
            if was {
                tracing::warn!(
                    node = %self.node,
                    "lost Redis: serving alone until it is back; pages hosted on other nodes cannot be reached meanwhile"
                );
            }
            self.set_view(home, [self.node].into_iter().collect());
        }
    }

    /// The node set is now `nodes` (this node included): moves pages and
    /// members as [`ring::change`] says, tells every other node what it
    /// should hold from this one, and asks nodes that just appeared for
    /// what this one should hold from them.
    pub fn set_view(&self, home: &mut Home, mut nodes: BTreeSet<NodeId>) {
        nodes.insert(self.node);
        let mut view = write(&self.view);
        if *view == nodes {
            return;
        }
        let old = std::mem::replace(&mut *view, nodes.clone());
        let added: Vec<NodeId> = nodes.difference(&old).copied().collect();
        let local_pages: Vec<PageHash> = lock(&self.local).pages.keys().copied().collect();
        let change = ring::change(self.node, &old, &nodes, self.registry.pages(), local_pages);
        tracing::info!(
            node = %self.node,
            nodes = nodes.len(),
            gone = change.gone.len(),
            pages_moved_away = change.drop.len(),
            pages_moved_here = change.adopt.len(),
            "the cluster's node set changed"
        );
        self.metrics
            .cluster
            .nodes_alive
            .store(nodes.len() as i64, Ordering::Relaxed);
        for node in &change.gone {
            home.forget_node(&self.registry, *node);
        }
        for page in &change.drop {
            self.registry.drop_page(*page);
            home.forget_page(*page);
        }
        let mut local = lock(&self.local);
        for hash in &change.adopt {
            let Some(page) = local.pages.get_mut(hash) else {
                continue;
            };
            for role in [Role::Have, Role::Want] {
                let topic = Topic { role, hash: *hash };
                for (peer, member) in page.side_mut(role) {
                    let target = Target::Local(member.member.clone());
                    let counts = self.registry.join(topic, *peer, target);
                    if let Some(pending) = member.unanswered.take() {
                        let text = pending.answer(counts).encode();
                        member.member.conn.deliver(text.into(), &self.metrics);
                    }
                }
            }
        }
        local.rehash(self.node, &nodes);
        for node in nodes.iter().filter(|node| **node != self.node) {
            self.send_snapshot_locked(&local, *node, &nodes);
            if added.contains(node) {
                self.outbox.send(*node, Message::Resync);
            }
        }
    }

    /// Sends `node` everything it should hold from this one.
    pub fn send_snapshot(&self, node: NodeId) {
        let view = read(&self.view);
        let local = lock(&self.local);
        self.send_snapshot_locked(&local, node, &view);
    }

    fn send_snapshot_locked(&self, local: &Local, node: NodeId, nodes: &BTreeSet<NodeId>) {
        let id = self.snapshot_ids.fetch_add(1, Ordering::Relaxed);
        for part in local.snapshot(node, nodes, id) {
            self.outbox.send(node, part);
        }
        self.metrics
            .cluster
            .snapshots
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Tells every other node what it should hold from this one; a node
    /// that holds something else asks for a snapshot.
    pub fn send_digests(&self) {
        let view = read(&self.view);
        let local = lock(&self.local);
        let resync_all = self.outbox.take_overflowed();
        for node in view.iter().filter(|node| **node != self.node) {
            if resync_all {
                self.send_snapshot_locked(&local, *node, &view);
            }
            let digest = local.digest(*node);
            self.outbox.send(*node, Message::Digest { digest });
        }
    }
}
