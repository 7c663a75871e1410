//! The cluster's arithmetic, pure: node ids and the peer ids that carry
//! them, which node is a page's home (rendezvous hashing over the live
//! nodes), the order-free digest of a node's members, and what a change of
//! the node set means for one node (which pages it stops or starts
//! homing, whose members it forgets).
//!
//! Kept apart from the Redis link and the sockets so that every node
//! computes the same answers from the same inputs, and the tests can say
//! so without a network. It lives in the server rather than in `shared`:
//! no client needs it, and `shared` is built for the browser too.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ephemeral_shared::{PageHash, PeerId, Role};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node of the cluster: 32 random bits, chosen when the process starts.
/// The top 32 bits of every peer id a node hands out are its id, so any
/// node knows where a peer's socket is without asking anyone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 8 lowercase hex digits")]
pub struct NodeIdError;

impl NodeId {
    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The node whose socket `peer` is.
    pub fn of_peer(peer: PeerId) -> Self {
        // `PeerId` shows its bits only as 32 hex digits; the first 8 are
        // the top 32 bits.
        let text = peer.to_string();
        let top = text
            .get(..8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok());
        Self(top.unwrap_or(0))
    }

    /// A peer id of this node: its id, then 96 of `random`'s bits.
    pub fn peer_id(self, random: u128) -> PeerId {
        let low = random & ((1u128 << 96) - 1);
        PeerId::from_random((u128::from(self.0) << 96) | low)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lowercase_hex = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if s.len() != 8 || !lowercase_hex {
            return Err(NodeIdError);
        }
        u32::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| NodeIdError)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// SplitMix64's finalizer: every input bit moves about half the output
/// bits. The same on every node and every build, unlike `std`'s hasher.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn page_bits(page: PageHash) -> u64 {
    let bytes = page.as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    // A page hash is SHA-256: its first 64 bits are already uniform.
    u64::from_be_bytes(first)
}

/// How much `node` wants `page`: the highest weight among the live nodes
/// is the page's home.
fn weight(node: NodeId, page: PageHash) -> u64 {
    mix(page_bits(page) ^ mix(u64::from(node.0) | (1 << 40)))
}

/// The home of `page` among `nodes` (rendezvous hashing): each node moves
/// only its own share of pages when it comes or goes, and any two nodes
/// with the same set agree. `None` only for an empty set.
pub fn home(page: PageHash, nodes: &BTreeSet<NodeId>) -> Option<NodeId> {
    nodes
        .iter()
        .copied()
        .max_by_key(|node| (weight(*node, page), *node))
}

/// One member's share of a [`Digest`].
pub fn member_bits(page: PageHash, role: Role, peer: PeerId) -> u64 {
    let text = peer.to_string();
    let (high, low) = text.split_at(16);
    let high = u64::from_str_radix(high, 16).unwrap_or(0);
    let low = u64::from_str_radix(low, 16).unwrap_or(0);
    let side = match role {
        Role::Have => 0x68,
        Role::Want => 0x77,
    };
    mix(page_bits(page) ^ mix(high ^ mix(low ^ side)))
}

/// An order-free summary of a set of members: their number and the XOR of
/// their [`member_bits`]. Adding and removing a member are the same
/// operation, so both ends keep it up to date as members come and go, and
/// comparing two digests costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub members: u64,
    pub xor: u64,
}

impl Digest {
    pub fn add(&mut self, page: PageHash, role: Role, peer: PeerId) {
        self.members = self.members.wrapping_add(1);
        self.xor ^= member_bits(page, role, peer);
    }

    pub fn remove(&mut self, page: PageHash, role: Role, peer: PeerId) {
        self.members = self.members.wrapping_sub(1);
        self.xor ^= member_bits(page, role, peer);
    }
}

/// What a change of the node set means for one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// Nodes gone: forget every member they announced.
    pub gone: Vec<NodeId>,
    /// Pages this node homed and no longer does: drop their state (their
    /// new home rebuilds it from what the nodes announce).
    pub drop: Vec<PageHash>,
    /// Pages with members here that are now homed here: put those members
    /// in the page's routing state.
    pub adopt: Vec<PageHash>,
}

/// The consequences for node `me` of the node set moving from `old` to
/// `new`, given the pages it holds routing state for and the pages its own
/// sockets are members of.
pub fn change(
    me: NodeId,
    old: &BTreeSet<NodeId>,
    new: &BTreeSet<NodeId>,
    homed: impl IntoIterator<Item = PageHash>,
    local: impl IntoIterator<Item = PageHash>,
) -> Change {
    let gone = old.difference(new).copied().collect();
    let drop = homed
        .into_iter()
        .filter(|page| home(*page, new) != Some(me))
        .collect();
    let adopt = local
        .into_iter()
        .filter(|page| home(*page, old) != Some(me) && home(*page, new) == Some(me))
        .collect();
    Change { gone, drop, adopt }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u32) -> PageHash {
        PageHash::of(&n.to_be_bytes())
    }

    fn nodes(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId::from_bits).collect()
    }

    #[test]
    fn peer_ids_carry_their_node() {
        let node = NodeId::from_bits(0xdead_beef);
        for random in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let peer = node.peer_id(random);
            assert_eq!(NodeId::of_peer(peer), node);
            assert!(peer.to_string().starts_with("deadbeef"));
        }
    }

    #[test]
    fn node_ids_parse_only_as_written() {
        let node = NodeId::from_bits(0x0000_00ff);
        assert_eq!(node.to_string(), "000000ff");
        assert_eq!("000000ff".parse(), Ok(node));
        for bad in ["", "ff", "000000FF", "0000000ff", "+00000ff", "0000 0ff"] {
            assert_eq!(bad.parse::<NodeId>(), Err(NodeIdError), "{bad:?}");
        }
    }

    #[test]
    fn every_node_agrees_on_a_home_and_the_order_does_not_matter() {
        let a = nodes(&[3, 1, 2]);
        let b = nodes(&[2, 3, 1]);
        for n in 0..200 {
            assert_eq!(home(page(n), &a), home(page(n), &b));
            assert!(home(page(n), &a).is_some_and(|h| a.contains(&h)));
        }
        assert_eq!(home(page(1), &BTreeSet::new()), None);
    }

    #[test]
    fn pages_spread_evenly_over_nodes() {
        let set = nodes(&[0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444]);
        let mut per_node = std::collections::HashMap::new();
        let pages = 8_000;
        for n in 0..pages {
            *per_node.entry(home(page(n), &set)).or_insert(0u32) += 1;
        }
        for (node, count) in per_node {
            // 2,000 expected; six standard deviations is ±230.
            assert!((1_770..=2_230).contains(&count), "{node:?} homes {count}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_pages() {
        let before = nodes(&[10, 20, 30]);
        let after = nodes(&[10, 30]);
        for n in 0..2_000 {
            let old = home(page(n), &before);
            let new = home(page(n), &after);
            if old != Some(NodeId::from_bits(20)) {
                assert_eq!(old, new, "page {n} moved although its home stayed");
            }
        }
    }

    #[test]
    fn a_change_says_what_to_drop_adopt_and_forget() {
        let me = NodeId::from_bits(1);
        let old = nodes(&[1, 2, 3]);
        let new = nodes(&[1, 3]);
        let pages: Vec<PageHash> = (0..300).map(page).collect();
        let homed: Vec<PageHash> = pages
            .iter()
            .copied()
            .filter(|p| home(*p, &old) == Some(me))
            .collect();
        let change = change(me, &old, &new, homed.clone(), pages.clone());
        assert_eq!(change.gone, vec![NodeId::from_bits(2)]);
        assert!(change.drop.is_empty(), "a node leaving takes no page away");
        assert!(!change.adopt.is_empty());
        for page in &change.adopt {
            assert_eq!(home(*page, &old), Some(NodeId::from_bits(2)));
            assert_eq!(home(*page, &new), Some(me));
        }
        // And back: node 2 returns and takes its pages back.
        let homed_now: Vec<PageHash> = pages
            .iter()
            .copied()
            .filter(|p| home(*p, &new) == Some(me))
            .collect();
        let back = super::change(me, &new, &old, homed_now, pages);
        assert!(back.gone.is_empty());
        assert_eq!(back.drop, change.adopt);
        assert!(back.adopt.is_empty());
    }

    #[test]
    fn digests_do_not_depend_on_order_and_removal_undoes_addition() {
        let peers: Vec<PeerId> = (1..50u128)
            .map(|n| PeerId::from_random(n << 70 | n))
            .collect();
        let mut forward = Digest::default();
        let mut backward = Digest::default();
        for (i, peer) in peers.iter().enumerate() {
            forward.add(page(i as u32 % 3), Role::Have, *peer);
        }
        for (i, peer) in peers.iter().enumerate().rev() {
            backward.add(page(i as u32 % 3), Role::Have, *peer);
        }
        assert_eq!(forward, backward);
        let mut other_side = backward;
        other_side.remove(page(0), Role::Have, peers[0]);
        other_side.add(page(0), Role::Want, peers[0]);
        assert_ne!(forward, other_side, "a side change shows");
        for (i, peer) in peers.iter().enumerate() {
            forward.remove(page(i as u32 % 3), Role::Have, *peer);
        }
        assert_eq!(forward, Digest::default());
    }
}
