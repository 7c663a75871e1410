//! What this node holds as the home of pages for other nodes' sockets:
//! which members each node announced on which page, with a digest per
//! node to compare with what that node says it announced, and the parts
//! of snapshots still arriving. Every change here is mirrored in the
//! registry, where the routing state of the page lives; only the Redis
//! link task touches this, one message at a time.

use std::collections::HashMap;

use ephemeral_shared::{PageHash, PeerId, Role, Topic};

use super::ring::{Digest, NodeId};
use super::wire::{Side, SnapshotPage};
use crate::membership::Target;
use crate::registry::Registry;
use ephemeral_shared::small_map::SmallSet;

/// One node's members of one page.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Members {
    hosts: SmallSet<PeerId>,
    wanters: SmallSet<PeerId>,
}

impl Members {
    fn side_mut(&mut self, role: Role) -> &mut SmallSet<PeerId> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.wanters.is_empty()
    }
}

/// Everything held from one node.
#[derive(Debug, Default)]
struct Held {
    pages: HashMap<PageHash, Members>,
    digest: Digest,
}

/// A snapshot being received.
#[derive(Debug, Default)]
struct Incoming {
    id: u64,
    pages: HashMap<PageHash, Members>,
    unanswered: Vec<(PageHash, Side, PeerId)>,
}

#[derive(Debug, Default)]
pub struct Home {
    held: HashMap<NodeId, Held>,
    incoming: HashMap<NodeId, Incoming>,
}

/// A member announced by a completed snapshot still waiting for its join
/// reply.
pub type Unanswered = (PageHash, Side, PeerId);

impl Home {
    /// `node`'s socket `peer` joined; whether it is new here.
    pub fn join(&mut self, registry: &Registry, node: NodeId, topic: Topic, peer: PeerId) -> bool {
        let held = self.held.entry(node).or_default();
        let members = held.pages.entry(topic.hash).or_default();
        let new = members.side_mut(topic.role).add(peer);
        if new {
            held.digest.add(topic.hash, topic.role, peer);
        }
        // Joined again or not, the page's home must know the member: the
        // registry ignores a repeated join of the same member.
        registry.join(topic, peer, Target::Remote(node));
        new
    }

    pub fn leave(&mut self, registry: &Registry, node: NodeId, topic: Topic, peer: PeerId) {
        let Some(held) = self.held.get_mut(&node) else {
            return;
        };
        let Some(members) = held.pages.get_mut(&topic.hash) else {
            return;
        };
        if !members.side_mut(topic.role).take(&peer) {
            return;
        }
        if members.is_empty() {
            held.pages.remove(&topic.hash);
        }
        held.digest.remove(topic.hash, topic.role, peer);
        registry.leave(topic, peer);
    }

    /// Whether what is held from `node` is what it says it announced.
    pub fn matches(&self, node: NodeId, digest: Digest) -> bool {
        let held = self.held.get(&node).map(|held| held.digest);
        held.unwrap_or_default() == digest
    }

    /// `node` is gone: its sockets leave every page homed here.
    pub fn forget_node(&mut self, registry: &Registry, node: NodeId) {
        self.incoming.remove(&node);
        let Some(held) = self.held.remove(&node) else {
            return;
        };
        for (hash, members) in held.pages {
            leave_all(registry, hash, &members);
        }
    }

    /// The page's routing state was dropped here (it is homed elsewhere
    /// now): forget who was on it, without telling the registry.
    pub fn forget_page(&mut self, hash: PageHash) {
        for held in self.held.values_mut() {
            if let Some(members) = held.pages.remove(&hash) {
                for peer in members.hosts.keys() {
                    held.digest.remove(hash, Role::Have, *peer);
                }
                for peer in members.wanters.keys() {
                    held.digest.remove(hash, Role::Want, *peer);
                }
            }
        }
    }

    /// A part of `node`'s snapshot `id`. Once the last part is in, what is
    /// held from `node` becomes exactly what the snapshot says: members it
    /// no longer lists leave, new ones join. Returns, when complete, the
    /// pages the snapshot named and its members still waiting for their
    /// join reply.
    pub fn snapshot(
        &mut self,
        registry: &Registry,
        node: NodeId,
        id: u64,
        pages: Vec<SnapshotPage>,
        last: bool,
    ) -> Option<(Vec<PageHash>, Vec<Unanswered>)> {
        let incoming = self.incoming.entry(node).or_default();
        if incoming.id != id {
            // A new snapshot replaces one cut short.
            *incoming = Incoming {
                id,
                ..Incoming::default()
            };
        }
        for page in pages {
            let members = incoming.pages.entry(page.page).or_default();
            members
                .hosts
                .extend(page.hosts.into_iter().map(|peer| (peer, ())));
            members
                .wanters
                .extend(page.wanters.into_iter().map(|peer| (peer, ())));
            for (side, peer) in page.unanswered {
                incoming.unanswered.push((page.page, side, peer));
            }
        }
        if !last {
            return None;
        }
        let incoming = self.incoming.remove(&node)?;
        let named: Vec<PageHash> = incoming.pages.keys().copied().collect();
        let held = self.held.entry(node).or_default();
        let old = std::mem::take(&mut held.pages);
        // Leaves first, so a page's counts never pass through a state
        // with both the old and the new members.
        for (hash, members) in &old {
            let now = incoming.pages.get(hash);
            for role in [Role::Have, Role::Want] {
                let topic = Topic { role, hash: *hash };
                for peer in side(members, role).keys() {
                    if !now.is_some_and(|now| side(now, role).contains_key(peer)) {
                        registry.leave(topic, *peer);
                    }
                }
            }
        }
        let mut digest = Digest::default();
        for (hash, members) in &incoming.pages {
            let before = old.get(hash);
            for role in [Role::Have, Role::Want] {
                let topic = Topic { role, hash: *hash };
                for peer in side(members, role).keys() {
                    digest.add(*hash, role, *peer);
                    if !before.is_some_and(|before| side(before, role).contains_key(peer)) {
                        registry.join(topic, *peer, Target::Remote(node));
                    }
                }
            }
        }
        held.pages = incoming
            .pages
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .collect();
        held.digest = digest;
        Some((named, incoming.unanswered))
    }
}

fn side(members: &Members, role: Role) -> &SmallSet<PeerId> {
    match role {
        Role::Have => &members.hosts,
        Role::Want => &members.wanters,
    }
}

fn leave_all(registry: &Registry, hash: PageHash, members: &Members) {
    for role in [Role::Have, Role::Want] {
        let topic = Topic { role, hash };
        for peer in side(members, role).keys() {
            registry.leave(topic, *peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ephemeral_shared::routing::Limits;

    use super::*;
    use crate::metrics::Metrics;

    fn registry() -> Registry {
        let limits = Limits {
            max_uploads_per_host: 2,
            queue_wait: Duration::from_secs(2),
            slot_timeout: Duration::from_secs(1),
        };
        Registry::new(Arc::new(Metrics::default()), limits)
    }

    fn hosts(registry: &Registry, page: PageHash) -> Option<usize> {
        registry.counts(page).map(|counts| counts.count)
    }

    #[test]
    fn a_snapshot_replaces_what_a_node_announced_and_digests_follow() {
        let registry = registry();
        let mut home = Home::default();
        let node = NodeId::from_bits(7);
        let (p, q) = (PageHash::of(b"p"), PageHash::of(b"q"));
        let peer = |n: u128| node.peer_id(n);
        assert!(home.join(&registry, node, Topic::have(p), peer(1)));
        assert!(!home.join(&registry, node, Topic::have(p), peer(1)), "once");
        home.join(&registry, node, Topic::want(q), peer(2));
        assert_eq!(hosts(&registry, p), Some(1));

        // The node now says: on p, peer 3 hosts; nothing on q.
        let mut page = SnapshotPage::new(p);
        page.hosts.push(peer(3));
        page.unanswered.push((Side::Have, peer(3)));
        assert_eq!(home.snapshot(&registry, node, 9, vec![], false), None);
        let (named, unanswered) = home
            .snapshot(&registry, node, 9, vec![page], true)
            .expect("complete");
        assert_eq!(named, vec![p]);
        assert_eq!(unanswered, vec![(p, Side::Have, peer(3))]);
        assert_eq!(hosts(&registry, p), Some(1), "peer 1 left, peer 3 joined");
        assert_eq!(registry.counts(q), None, "q's only member left");
        let mut expected = Digest::default();
        expected.add(p, Role::Have, peer(3));
        assert!(home.matches(node, expected));
        assert!(!home.matches(node, Digest::default()));

        // The node is gone: its members leave every page.
        home.forget_node(&registry, node);
        assert_eq!(registry.counts(p), None);
        assert!(home.matches(node, Digest::default()));
    }

    #[test]
    fn a_page_moved_away_is_forgotten_without_leaves() {
        let registry = registry();
        let mut home = Home::default();
        let node = NodeId::from_bits(9);
        let p = PageHash::of(b"moving");
        home.join(&registry, node, Topic::have(p), node.peer_id(1));
        registry.drop_page(p);
        home.forget_page(p);
        assert_eq!(registry.counts(p), None);
        assert!(home.matches(node, Digest::default()));
    }
}
