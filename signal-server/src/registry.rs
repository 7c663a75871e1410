//! Who is on which topic: the hosts and waiting visitors of every page, by
//! peer id, and the send queue of each connection. Also the coalesced
//! `visitors_count` broadcasts.
//!
//! One mutex guards the whole map; every critical section is a lookup or an
//! insert, and messages are delivered after the lock is released.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{PeerId, VisitorsCount};
use ephemeral_shared::selection::Selection;
use ephemeral_shared::{PageHash, Role, Topic};
use indexmap::IndexMap;
use tokio::sync::{Notify, mpsc, watch};

use crate::metrics::{Metrics, Rejection};

/// What a connection's writer sends for others.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
}

/// The handle others use to reach one connection.
#[derive(Debug)]
pub struct Conn {
    pub peer: PeerId,
    /// Bounded, so a reader that stops reading cannot grow server memory;
    /// when it is full the connection is closed (see [`Conn::deliver`]).
    tx: mpsc::Sender<Outbound>,
    /// Woken when the connection must close because it is too slow.
    pub kill: Notify,
}

impl Conn {
    pub fn new(peer: PeerId, queue: usize) -> (Arc<Self>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (
            Arc::new(Self {
                peer,
                tx,
                kill: Notify::new(),
            }),
            rx,
        )
    }

    /// Queues a message; a full queue means the peer is not reading, and it
    /// is disconnected rather than buffered without bound.
    pub fn deliver(&self, text: Utf8Bytes, metrics: &Metrics) -> bool {
        match self.tx.try_send(Outbound::Text(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.reject(Rejection::SlowConsumer);
                self.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A member of a topic: its connection and the join ref its pushes carry.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: Arc<Conn>,
    pub join_ref: Option<String>,
}

#[derive(Debug, Default)]
struct Page {
    /// Insertion-ordered so selection can index uniformly at random.
    hosts: IndexMap<PeerId, Member>,
    wanters: IndexMap<PeerId, Member>,
}

impl Page {
    fn side(&mut self, role: Role) -> &mut IndexMap<PeerId, Member> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    fn counts(&self) -> VisitorsCount {
        VisitorsCount {
            count: self.hosts.len(),
            waiting: self.wanters.len(),
        }
    }
}

#[derive(Debug)]
pub struct Registry {
    pages: Mutex<HashMap<PageHash, Page>>,
    /// Pages whose counts changed since the last broadcast.
    dirty: Mutex<HashSet<PageHash>>,
    dirty_notify: Notify,
    pub metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            pages: Mutex::default(),
            dirty: Mutex::default(),
            dirty_notify: Notify::new(),
            metrics,
        }
    }

    fn pages(&self) -> MutexGuard<'_, HashMap<PageHash, Page>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert or remove), so keep serving.
        self.pages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `member` to `topic` and returns the page's counts.
    pub fn join(&self, topic: Topic, member: Member) -> VisitorsCount {
        let counts = {
            let mut pages = self.pages();
            let page = pages.entry(topic.hash).or_default();
            page.side(topic.role).insert(member.conn.peer, member);
            page.counts()
        };
        self.metrics.topics.fetch_add(1, Ordering::Relaxed);
        self.mark_dirty(topic.hash);
        counts
    }

    /// Removes `peer` from `topic`; whether it was there.
    pub fn leave(&self, topic: Topic, peer: PeerId) -> bool {
        let removed = {
            let mut pages = self.pages();
            let Some(page) = pages.get_mut(&topic.hash) else {
                return false;
            };
            // swap_remove is O(1); host order carries no meaning.
            let removed = page.side(topic.role).swap_remove(&peer).is_some();
            if page.hosts.is_empty() && page.wanters.is_empty() {
                pages.remove(&topic.hash);
            }
            removed
        };
        if removed {
            self.metrics.topics.fetch_sub(1, Ordering::Relaxed);
            self.mark_dirty(topic.hash);
        }
        removed
    }

    pub fn counts(&self, hash: PageHash) -> VisitorsCount {
        self.pages()
            .get(&hash)
            .map(Page::counts)
            .unwrap_or(VisitorsCount {
                count: 0,
                waiting: 0,
            })
    }

    /// The member `peer` of `topic`, if it is one.
    pub fn member(&self, topic: Topic, peer: PeerId) -> Option<Member> {
        self.pages()
            .get_mut(&topic.hash)?
            .side(topic.role)
            .get(&peer)
            .cloned()
    }

    /// Every member of `topic`.
    pub fn members(&self, topic: Topic) -> Vec<Member> {
        self.pages()
            .get_mut(&topic.hash)
            .map(|page| page.side(topic.role).values().cloned().collect())
            .unwrap_or_default()
    }

    /// The hosts of `hash` that get a request, chosen by `selection` among
    /// those that are not `requester` and not in `exclude`. Empty when no
    /// host is eligible (or, in coin-flip mode, when every coin said no).
    pub fn pick_hosts(
        &self,
        hash: PageHash,
        requester: PeerId,
        exclude: &[PeerId],
        selection: Selection,
    ) -> (Vec<Member>, usize) {
        let mut pages = self.pages();
        let Some(page) = pages.get_mut(&hash) else {
            return (Vec::new(), 0);
        };
        let hosts: Vec<(&PeerId, &Member)> = page.hosts.iter().collect();
        let eligible =
            |(peer, _): &(&PeerId, &Member)| **peer != requester && !exclude.contains(peer);
        let eligible_count = hosts.iter().filter(|h| eligible(h)).count();
        let mut rng = rand::rng();
        let picked = selection.pick(&hosts, eligible, || rand::Rng::random(&mut rng));
        (
            picked.into_iter().map(|i| hosts[i].1.clone()).collect(),
            eligible_count,
        )
    }

    fn mark_dirty(&self, hash: PageHash) {
        let newly = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash);
        if newly {
            self.dirty_notify.notify_one();
        }
    }

    /// Broadcasts `visitors_count` for changed pages, at most once per
    /// `interval` per page, until `shutdown` fires.
    pub async fn broadcast_counts(&self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.dirty_notify.notified() => {}
                _ = shutdown.changed() => return,
            }
            // Let more changes gather: under churn this is what keeps the
            // cost at one message per member per interval.
            tokio::time::sleep(interval).await;
            let dirty: Vec<PageHash> = self
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for hash in dirty {
                self.broadcast_count(hash);
            }
        }
    }

    fn broadcast_count(&self, hash: PageHash) {
        let (counts, members) = {
            let mut pages = self.pages();
            let Some(page) = pages.get_mut(&hash) else {
                return;
            };
            let members: Vec<(Role, Arc<Conn>)> = page
                .hosts
                .values()
                .map(|m| (Role::Have, m.conn.clone()))
                .chain(page.wanters.values().map(|m| (Role::Want, m.conn.clone())))
                .collect();
            (page.counts(), members)
        };
        let encode = |topic: Topic| -> Utf8Bytes {
            Frame::with_payload(
                None,
                None,
                topic.to_string(),
                event::VISITORS_COUNT,
                &counts,
            )
            .encode()
            .into()
        };
        let have = encode(Topic::have(hash));
        let want = encode(Topic::want(hash));
        self.metrics
            .count_broadcasts
            .fetch_add(2, Ordering::Relaxed);
        for (role, conn) in members {
            let text = if role == Role::Have {
                have.clone()
            } else {
                want.clone()
            };
            conn.deliver(text, &self.metrics);
        }
    }
}
