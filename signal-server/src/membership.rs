//! Who is on which page: the map of pages, each behind a lock of its own,
//! holding its hosts and waiting visitors as the server reaches them (their
//! connection and join ref) next to the page's routing state.
//!
//! Locking: the map is locked only to find, add or drop a page. Work that
//! grows with a page's size (its hosts, its queue) holds only that page's
//! lock, so a crowd on one page never slows another.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{PeerId, SignalBody, SignalFrom};
use ephemeral_shared::routing::{self, Limits};
use ephemeral_shared::{PageHash, Role, Topic};

use crate::cluster::NodeId;
use crate::conn::Conn;
use crate::metrics::Metrics;
use ephemeral_shared::small_map::SmallMap;

/// A member of a topic: its connection and the join ref its pushes carry.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: Arc<Conn>,
    pub join_ref: Option<String>,
}

impl Member {
    /// Queues a `signal` from `from` for this member of `topic`: `from` is
    /// stamped by the server, whatever the sender wrote.
    pub fn deliver_signal(&self, topic: Topic, from: PeerId, body: SignalBody, metrics: &Metrics) {
        let forwarded = SignalFrom { from, body };
        let text = Frame::with_payload(
            self.join_ref.clone(),
            None,
            topic.to_string(),
            event::SIGNAL,
            &forwarded,
        )
        .encode();
        self.conn.deliver(text.into(), metrics);
        metrics.signals_relayed.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the node holding a page's routing state reaches a member: through
/// its own socket, or — in a cluster — through the node the socket is on.
#[derive(Debug, Clone)]
pub enum Target {
    Local(Member),
    Remote(NodeId),
}

impl Target {
    pub fn local(&self) -> Option<&Member> {
        match self {
            Target::Local(member) => Some(member),
            Target::Remote(_) => None,
        }
    }
}

/// One page: its members on each side, and its routing state, which knows
/// the same members by id. `T` is what a waiting request carries.
#[derive(Debug)]
pub struct Page<T> {
    pub hosts: SmallMap<PeerId, Target>,
    pub wanters: SmallMap<PeerId, Target>,
    pub routing: routing::Page<T>,
    /// Set when the page leaves the map; a task that found it just before
    /// looks it up again.
    removed: bool,
}

impl<T> Page<T> {
    pub fn side(&self, role: Role) -> &SmallMap<PeerId, Target> {
        match role {
            Role::Have => &self.hosts,
            Role::Want => &self.wanters,
        }
    }

    pub fn side_mut(&mut self, role: Role) -> &mut SmallMap<PeerId, Target> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    /// Every local member's connection, with the side it is on; and the
    /// nodes other members are on, each once.
    pub fn connections(&self) -> (Vec<(Role, Arc<Conn>)>, Vec<NodeId>) {
        let mut local = Vec::with_capacity(self.hosts.len() + self.wanters.len());
        let mut nodes = Vec::new();
        let sides = [(Role::Have, &self.hosts), (Role::Want, &self.wanters)];
        for (role, side) in sides {
            for target in side.values() {
                match target {
                    Target::Local(member) => local.push((role, member.conn.clone())),
                    Target::Remote(node) if !nodes.contains(node) => nodes.push(*node),
                    Target::Remote(_) => {}
                }
            }
        }
        (local, nodes)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.wanters.is_empty()
    }
}

/// Every page with at least one member.
#[derive(Debug)]
pub struct Pages<T> {
    map: Mutex<HashMap<PageHash, Arc<Mutex<Page<T>>>>>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert, remove or counter
    // step, so a panicking holder cannot leave them half-done: keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Pages<T> {
    /// New pages route with `limits`; `metrics` counts the pages.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            map: Mutex::default(),
            limits,
            metrics,
        }
    }

    /// Every page now in the map.
    pub fn hashes(&self) -> Vec<PageHash> {
        lock(&self.map).keys().copied().collect()
    }

    /// Takes the page of `hash` out of the map, whatever it holds: its
    /// state is rebuilt elsewhere (a cluster moved the page's home).
    pub fn remove(&self, hash: PageHash) -> Option<Page<T>> {
        let entry = lock(&self.map).remove(&hash)?;
        self.metrics.pages.fetch_sub(1, Ordering::Relaxed);
        let mut page = lock(&entry);
        page.removed = true;
        let routing = std::mem::replace(&mut page.routing, routing::Page::new(self.limits));
        Some(Page {
            hosts: std::mem::take(&mut page.hosts),
            wanters: std::mem::take(&mut page.wanters),
            routing,
            removed: true,
        })
    }

    /// Runs `f` on the page of `hash` under its own lock (creating the page
    /// when `create`), then drops the page if it is left empty. `None` when
    /// there is no such page.
    pub fn with_page<R>(
        &self,
        hash: PageHash,
        create: bool,
        f: impl FnOnce(&mut Page<T>) -> R,
    ) -> Option<R> {
        loop {
            let entry = {
                let mut map = lock(&self.map);
                match map.get(&hash) {
                    Some(page) => page.clone(),
                    None if create => {
                        self.metrics.pages.fetch_add(1, Ordering::Relaxed);
                        let page = Page {
                            hosts: SmallMap::new(),
                            wanters: SmallMap::new(),
                            routing: routing::Page::new(self.limits),
                            removed: false,
                        };
                        map.entry(hash)
                            .or_insert_with(|| Arc::new(Mutex::new(page)))
                            .clone()
                    }
                    None => return None,
                }
            };
            let mut page = lock(&entry);
            if page.removed {
                // Dropped between the lookup and the lock: look again.
                drop(page);
                std::thread::yield_now();
                continue;
            }
            let result = f(&mut page);
            if page.is_empty() {
                page.removed = true;
                drop(page);
                let mut map = lock(&self.map);
                if map.get(&hash).is_some_and(|p| Arc::ptr_eq(p, &entry)) {
                    map.remove(&hash);
                    self.metrics.pages.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return Some(result);
        }
    }
}
