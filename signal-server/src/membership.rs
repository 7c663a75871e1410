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

use ephemeral_shared::protocol::PeerId;
use ephemeral_shared::routing::{self, Limits};
use ephemeral_shared::{PageHash, Role};

use crate::conn::Conn;
use crate::metrics::Metrics;

/// A member of a topic: its connection and the join ref its pushes carry.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: Arc<Conn>,
    pub join_ref: Option<String>,
}

/// One page: its members on each side, and its routing state, which knows
/// the same members by id. `T` is what a waiting request carries.
#[derive(Debug)]
pub struct Page<T> {
    pub hosts: HashMap<PeerId, Member>,
    pub wanters: HashMap<PeerId, Member>,
    pub routing: routing::Page<T>,
    /// Set when the page leaves the map; a task that found it just before
    /// looks it up again.
    removed: bool,
}

impl<T> Page<T> {
    pub fn side(&self, role: Role) -> &HashMap<PeerId, Member> {
        match role {
            Role::Have => &self.hosts,
            Role::Want => &self.wanters,
        }
    }

    pub fn side_mut(&mut self, role: Role) -> &mut HashMap<PeerId, Member> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    /// Every member's connection, with the side it is on.
    pub fn connections(&self) -> Vec<(Role, Arc<Conn>)> {
        let hosts = self.hosts.values().map(|m| (Role::Have, m.conn.clone()));
        let wanters = self.wanters.values().map(|m| (Role::Want, m.conn.clone()));
        hosts.chain(wanters).collect()
    }

    fn is_empty(&self) -> bool {
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
                            hosts: HashMap::new(),
                            wanters: HashMap::new(),
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
