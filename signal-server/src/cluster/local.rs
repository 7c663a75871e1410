//! This node's own sockets in a cluster: which pages each is a member of,
//! on which side, with what join ref — the truth the node announces to
//! pages' homes, checks signals for its sockets against, and delivers the
//! homes' decisions through. Also what each other node should hold from
//! this one ([`Digest`]s), and the snapshots that tell it.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use ephemeral_shared::frame::Frame;
use ephemeral_shared::protocol::{JoinReply, VisitorsCount};
use ephemeral_shared::{PageHash, PeerId, Role, Topic};

use super::ring::{self, Digest, NodeId};
use super::wire::{MAX_MEMBERS_PER_MESSAGE, MAX_PAGES_PER_MESSAGE, Message, Side, SnapshotPage};
use crate::membership::Member;
use ephemeral_shared::small_map::SmallMap;

/// A join whose reply waits for the page's home to give the counts.
#[derive(Debug)]
pub struct PendingJoin {
    /// The join, without its payload: the reply answers its refs.
    pub frame: Frame,
    /// The reply, but for the counts.
    pub reply: JoinReply,
}

impl PendingJoin {
    /// The reply frame, with `counts`.
    pub fn answer(self, counts: VisitorsCount) -> Frame {
        let mut reply = self.reply;
        reply.count = counts.count;
        reply.waiting = counts.waiting;
        self.frame.reply_ok(&reply)
    }
}

#[derive(Debug)]
pub struct LocalMember {
    pub member: Member,
    /// Set until the page's home answers the join.
    pub unanswered: Option<Box<PendingJoin>>,
    /// When the home was last told this visitor's slot is in use.
    pub progress_sent: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct LocalPage {
    pub hosts: SmallMap<PeerId, LocalMember>,
    pub wanters: SmallMap<PeerId, LocalMember>,
}

impl LocalPage {
    pub fn side(&self, role: Role) -> &SmallMap<PeerId, LocalMember> {
        match role {
            Role::Have => &self.hosts,
            Role::Want => &self.wanters,
        }
    }

    pub fn side_mut(&mut self, role: Role) -> &mut SmallMap<PeerId, LocalMember> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    /// Hosts and visitors on this node alone.
    pub fn counts(&self) -> VisitorsCount {
        VisitorsCount {
            count: self.hosts.len(),
            waiting: self.wanters.len(),
        }
    }
}

/// This node's sockets' memberships, and what each other node should
/// hold from them.
#[derive(Debug, Default)]
pub struct Local {
    pub pages: HashMap<PageHash, LocalPage>,
    /// For each other node, a digest of the members of pages it homes (as
    /// this node sees the node set).
    digests: HashMap<NodeId, Digest>,
}

impl Local {
    pub fn member(&self, topic: Topic, peer: PeerId) -> Option<&LocalMember> {
        self.pages.get(&topic.hash)?.side(topic.role).get(&peer)
    }

    pub fn member_mut(&mut self, topic: Topic, peer: PeerId) -> Option<&mut LocalMember> {
        self.pages
            .get_mut(&topic.hash)?
            .side_mut(topic.role)
            .get_mut(&peer)
    }

    /// Adds a member; `home` is the page's home when it is another node.
    pub fn insert(&mut self, topic: Topic, member: LocalMember, home: Option<NodeId>) {
        let peer = member.member.conn.peer;
        let page = self.pages.entry(topic.hash).or_default();
        page.side_mut(topic.role).insert(peer, member);
        if let Some(home) = home {
            self.digests
                .entry(home)
                .or_default()
                .add(topic.hash, topic.role, peer);
        }
    }

    /// Removes a member; `home` as for [`Local::insert`].
    pub fn remove(
        &mut self,
        topic: Topic,
        peer: PeerId,
        home: Option<NodeId>,
    ) -> Option<LocalMember> {
        let page = self.pages.get_mut(&topic.hash)?;
        let removed = page.side_mut(topic.role).remove(&peer)?;
        if page.hosts.is_empty() && page.wanters.is_empty() {
            self.pages.remove(&topic.hash);
        }
        if let Some(home) = home
            && let Some(digest) = self.digests.get_mut(&home)
        {
            digest.remove(topic.hash, topic.role, peer);
        }
        Some(removed)
    }

    /// Recomputes every digest for the node set `nodes`.
    pub fn rehash(&mut self, me: NodeId, nodes: &BTreeSet<NodeId>) {
        self.digests.clear();
        for (hash, page) in &self.pages {
            let Some(home) = ring::home(*hash, nodes).filter(|home| *home != me) else {
                continue;
            };
            let digest = self.digests.entry(home).or_default();
            for role in [Role::Have, Role::Want] {
                for peer in page.side(role).keys() {
                    digest.add(*hash, role, *peer);
                }
            }
        }
    }

    /// What `node` should hold from this one.
    pub fn digest(&self, node: NodeId) -> Digest {
        self.digests.get(&node).copied().unwrap_or_default()
    }

    /// Everything `node` should hold from this one — the members of the
    /// pages it homes in `nodes` — as snapshot messages of bounded size,
    /// the last one marked. Always at least one message: an empty
    /// snapshot tells `node` to forget whatever it holds from this one.
    pub fn snapshot(&self, node: NodeId, nodes: &BTreeSet<NodeId>, id: u64) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut pages: Vec<SnapshotPage> = Vec::new();
        let mut members = 0usize;
        let flush = |pages: &mut Vec<SnapshotPage>, messages: &mut Vec<Message>| {
            messages.push(Message::Snapshot {
                id,
                pages: std::mem::take(pages),
                last: false,
            });
        };
        for (hash, page) in &self.pages {
            if ring::home(*hash, nodes) != Some(node) {
                continue;
            }
            let mut entry = SnapshotPage::new(*hash);
            for role in [Role::Have, Role::Want] {
                for (peer, member) in page.side(role) {
                    if members >= MAX_MEMBERS_PER_MESSAGE || pages.len() >= MAX_PAGES_PER_MESSAGE {
                        // A page split over several parts: the receiver
                        // adds the parts up.
                        let rest = SnapshotPage::new(*hash);
                        pages.push(std::mem::replace(&mut entry, rest));
                        flush(&mut pages, &mut messages);
                        members = 0;
                    }
                    match role {
                        Role::Have => entry.hosts.push(*peer),
                        Role::Want => entry.wanters.push(*peer),
                    }
                    if member.unanswered.is_some() {
                        entry.unanswered.push((Side::from(role), *peer));
                    }
                    members += 1;
                }
            }
            pages.push(entry);
        }
        messages.push(Message::Snapshot {
            id,
            pages,
            last: true,
        });
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_split_and_always_end_with_a_last_part() {
        let local = Local::default();
        let nodes: BTreeSet<NodeId> = [NodeId::from_bits(1)].into_iter().collect();
        let parts = local.snapshot(NodeId::from_bits(1), &nodes, 9);
        assert_eq!(
            parts,
            vec![Message::Snapshot {
                id: 9,
                pages: vec![],
                last: true
            }]
        );
    }
}
