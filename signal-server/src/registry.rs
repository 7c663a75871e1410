//! Who is on which page, and which host serves which visitor: the hosts and
//! waiting visitors of every page, upload slots and the requests waiting
//! for one, which hosts each request went to (who may relay to whom), and the coalesced
//! `visitors_count` broadcasts. One timer task expires slots held without
//! progress and routes requests that waited too long.
//!
//! Locking: the map of pages is locked only to find, add or drop a page;
//! each page has a lock of its own for its routing. Work that grows with a
//! page's size (its hosts, its queue) holds only that page's lock, so a
//! crowd on one page never slows another. Messages are delivered after the
//! lock is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{
    ContentUnavailableFrom, HostRequest, NO_HOSTS, PeerId, Reason, RequestRouted, VisitorsCount,
};
use ephemeral_shared::selection::Selection;
use ephemeral_shared::{PageHash, Role, Topic};
use indexmap::IndexMap;
use tokio::sync::{Notify, watch};

use crate::conn::Conn;
use crate::metrics::Metrics;

/// A member of a topic: its connection and the join ref its pushes carry.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: Arc<Conn>,
    pub join_ref: Option<String>,
}

/// A `content_request` as the server needs it to answer later.
#[derive(Debug, Clone)]
pub struct Request {
    /// The visitor, as a member of `want:<hash>`.
    pub visitor: Member,
    /// The ref of the push, for the reply.
    pub msg_ref: Option<String>,
    pub relay: bool,
    /// At most [`ephemeral_shared::protocol::MAX_EXCLUDE`] peers, checked
    /// once per candidate host.
    pub exclude: HashSet<PeerId>,
}

/// An upload slot: the host serving a visitor, and when the visitor last
/// showed it is being served.
#[derive(Debug, Clone, Copy)]
struct Slot {
    host: PeerId,
    progress_at: Instant,
}

#[derive(Debug)]
struct Queued {
    request: Request,
    since: Instant,
}

#[derive(Debug, Default)]
struct Page {
    /// Insertion-ordered so selection can index uniformly at random.
    hosts: IndexMap<PeerId, Member>,
    wanters: IndexMap<PeerId, Member>,
    /// Visitor → its slot. A visitor holds at most one slot per page: a
    /// new request ends the previous one.
    slots: HashMap<PeerId, Slot>,
    /// Upload slots taken, per host.
    uploads: HashMap<PeerId, usize>,
    /// Requests waiting for a host with a free slot, oldest first; at most
    /// one per visitor.
    queue: VecDeque<Queued>,
    /// When each host was last given requests, within [`RECENT_WINDOW`].
    recent: HashMap<PeerId, VecDeque<Instant>>,
    /// Visitor → the hosts its request went to. Relayed content goes only
    /// to these visitors, once per request. Any request counts, not only
    /// those that asked for the relay: a host may answer a WebRTC request
    /// by relay (it cannot do WebRTC, or has too many channels open).
    awaiting: HashMap<PeerId, Vec<PeerId>>,
    /// The counts last broadcast, and when the next broadcast may go.
    last_broadcast: Option<VisitorsCount>,
    next_broadcast: Option<Instant>,
    /// Set when the page leaves the map; a task that found it just before
    /// looks it up again.
    removed: bool,
}

/// How far back selection looks to balance hosts.
const RECENT_WINDOW: Duration = Duration::from_secs(10);

/// A page's count broadcasts are spaced by at least this much per member,
/// so joining and leaving in a loop cannot multiply messages by the size
/// of a crowd: a page of 1,000 members gets at most one broadcast a second.
const BROADCAST_SPACING_PER_MEMBER: Duration = Duration::from_millis(1);

enum Choice {
    Host(PeerId),
    /// Hosts it may use exist, but none has a free slot.
    AllBusy,
    Nobody,
}

/// Messages to send once the lock is released.
type Deliveries = Vec<(Arc<Conn>, Utf8Bytes)>;

/// Uniformly at random among the hosts with the fewest recent requests.
fn least_loaded(candidates: &[(PeerId, usize)]) -> Option<PeerId> {
    let least = candidates.iter().map(|(_, n)| *n).min()?;
    let mut rng = rand::rng();
    let picked = Selection::Uniform.pick(
        candidates,
        |(_, n)| *n == least,
        || rand::Rng::random(&mut rng),
    );
    picked.first().map(|&i| candidates[i].0)
}

/// The visitor's original push, rebuilt to reply to it.
fn reply_frame(hash: PageHash, request: &Request) -> Frame {
    Frame::new(
        request.visitor.join_ref.clone(),
        request.msg_ref.clone(),
        Topic::want(hash).to_string(),
        event::CONTENT_REQUEST,
        Default::default(),
    )
}

impl Page {
    fn side(&mut self, role: Role) -> &mut IndexMap<PeerId, Member> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.wanters.is_empty()
    }

    fn members(&self) -> usize {
        self.hosts.len() + self.wanters.len()
    }

    fn free_slot(&mut self, visitor: PeerId) -> bool {
        let Some(slot) = self.slots.remove(&visitor) else {
            return false;
        };
        if let Some(taken) = self.uploads.get_mut(&slot.host) {
            *taken = taken.saturating_sub(1);
        }
        true
    }

    /// Frees the slot `visitor` held, and drops what it had asked for.
    fn end_request_of(&mut self, visitor: PeerId) {
        self.free_slot(visitor);
        self.awaiting.remove(&visitor);
        self.queue
            .retain(|q| q.request.visitor.conn.peer != visitor);
    }

    /// A host for `request`, uniformly at random among the usable hosts
    /// given the fewest requests in the last [`RECENT_WINDOW`].
    ///
    /// With `max_uploads`, a host is given at most that many visitors at
    /// once, and — while uploads are under way on the page, which will
    /// bring new hosts — at most that many per window: a crowd then grows
    /// as a tree, each host serving a few visitors who serve the next,
    /// instead of the first host serving everyone. When nothing is under
    /// way, hosts past that budget serve again, so nobody waits for a host
    /// that will never come. Without `max_uploads` (a request overdue in
    /// the queue), any usable host will do. A host that is not reading
    /// what it is sent counts as busy either way.
    fn choose(&mut self, request: &Request, max_uploads: Option<usize>, now: Instant) -> Choice {
        let visitor = request.visitor.conn.peer;
        let uploading = self.uploads.values().any(|&n| n > 0);
        let mut usable = 0usize;
        let mut within_budget: Vec<(PeerId, usize)> = Vec::new();
        let mut over_budget: Vec<(PeerId, usize)> = Vec::new();
        for (host, member) in &self.hosts {
            if *host == visitor || request.exclude.contains(host) {
                continue;
            }
            usable += 1;
            if member.conn.congested() {
                continue;
            }
            let taken = self.uploads.get(host).copied().unwrap_or(0);
            if max_uploads.is_some_and(|max| taken >= max) {
                continue;
            }
            let recent = self.recent.entry(*host).or_default();
            while recent
                .front()
                .is_some_and(|at| now.duration_since(*at) > RECENT_WINDOW)
            {
                recent.pop_front();
            }
            match max_uploads {
                Some(max) if recent.len() >= max => over_budget.push((*host, recent.len())),
                _ => within_budget.push((*host, recent.len())),
            }
        }
        let candidates = if !within_budget.is_empty() {
            within_budget
        } else if uploading {
            // Uploads under way will bring new hosts soon: wait for them.
            Vec::new()
        } else {
            over_budget
        };
        match least_loaded(&candidates) {
            Some(host) => Choice::Host(host),
            None if usable > 0 => Choice::AllBusy,
            None => Choice::Nobody,
        }
    }

    fn counts(&self) -> VisitorsCount {
        VisitorsCount {
            count: self.hosts.len(),
            waiting: self.wanters.len(),
        }
    }
}

/// What the registry needs from the config.
#[derive(Debug, Clone)]
pub struct RoutingLimits {
    /// Uploads one host is given at once before requests wait for a slot.
    pub max_uploads_per_host: usize,
    /// How long a request waits for a free slot before any host will do.
    pub queue_wait: Duration,
    /// How long a slot is held without progress before it is freed.
    pub slot_timeout: Duration,
}

#[derive(Debug)]
pub struct Registry {
    pages: Mutex<HashMap<PageHash, Arc<Mutex<Page>>>>,
    /// Pages whose counts changed since the last broadcast.
    dirty: Mutex<HashSet<PageHash>>,
    dirty_notify: Notify,
    /// Pages with slots taken or requests queued: what the timer visits.
    timed: Mutex<HashSet<PageHash>>,
    pub metrics: Arc<Metrics>,
    limits: RoutingLimits,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Sent to a host; the visitor has its reply.
    Routed,
    /// Every host it may use is busy; it waits for a slot.
    Queued,
    /// No host it may use; the visitor has its `no_hosts` reply.
    NoHosts,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert, remove or counter
    // step, so a panicking holder cannot leave them half-done: keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, mut limits: RoutingLimits) -> Self {
        limits.max_uploads_per_host = limits.max_uploads_per_host.max(1);
        Self {
            pages: Mutex::default(),
            dirty: Mutex::default(),
            dirty_notify: Notify::new(),
            timed: Mutex::default(),
            metrics,
            limits,
        }
    }

    /// Runs `f` on the page of `hash` under its own lock (creating the page
    /// when `create`), then drops the page if it is left empty. `None` when
    /// there is no such page.
    fn with_page<R>(
        &self,
        hash: PageHash,
        create: bool,
        f: impl FnOnce(&mut Page) -> R,
    ) -> Option<R> {
        loop {
            let entry = {
                let mut pages = lock(&self.pages);
                match pages.get(&hash) {
                    Some(page) => page.clone(),
                    None if create => {
                        self.metrics.pages.fetch_add(1, Ordering::Relaxed);
                        pages.entry(hash).or_default().clone()
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
                let mut pages = lock(&self.pages);
                if pages.get(&hash).is_some_and(|p| Arc::ptr_eq(p, &entry)) {
                    pages.remove(&hash);
                    self.metrics.pages.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return Some(result);
        }
    }

    /// Adds `member` to `topic` and returns the page's counts.
    pub fn join(&self, topic: Topic, member: Member) -> VisitorsCount {
        let mut out = Deliveries::new();
        let now = Instant::now();
        let counts = self
            .with_page(topic.hash, true, |page| {
                page.side(topic.role).insert(member.conn.peer, member);
                if topic.role == Role::Have {
                    self.dispatch(page, topic.hash, now, &mut out);
                }
                page.counts()
            })
            .unwrap_or(VisitorsCount {
                count: 0,
                waiting: 0,
            });
        self.deliver(out);
        self.metrics.topics.fetch_add(1, Ordering::Relaxed);
        self.mark_dirty(topic.hash);
        counts
    }

    /// Removes `peer` from `topic`; whether it was there.
    pub fn leave(&self, topic: Topic, peer: PeerId) -> bool {
        let mut out = Deliveries::new();
        let now = Instant::now();
        let removed = self
            .with_page(topic.hash, false, |page| {
                // swap_remove is O(1); member order carries no meaning.
                let removed = page.side(topic.role).swap_remove(&peer).is_some();
                match topic.role {
                    // Served, or given up: either way its host's slot is free.
                    Role::Want => page.end_request_of(peer),
                    // Requests waiting only for this host now have none.
                    Role::Have => {
                        page.uploads.remove(&peer);
                        page.recent.remove(&peer);
                        let visitors: Vec<PeerId> = page
                            .slots
                            .iter()
                            .filter(|(_, slot)| slot.host == peer)
                            .map(|(visitor, _)| *visitor)
                            .collect();
                        for visitor in visitors {
                            page.slots.remove(&visitor);
                        }
                        for hosts in page.awaiting.values_mut() {
                            hosts.retain(|h| *h != peer);
                        }
                        page.awaiting.retain(|_, hosts| !hosts.is_empty());
                    }
                }
                self.dispatch(page, topic.hash, now, &mut out);
                removed
            })
            .unwrap_or(false);
        self.deliver(out);
        if removed {
            self.metrics.topics.fetch_sub(1, Ordering::Relaxed);
            self.mark_dirty(topic.hash);
        }
        removed
    }

    pub fn counts(&self, hash: PageHash) -> VisitorsCount {
        self.with_page(hash, false, |page| page.counts())
            .unwrap_or(VisitorsCount {
                count: 0,
                waiting: 0,
            })
    }

    /// The member `peer` of `topic`, if it is one.
    pub fn member(&self, topic: Topic, peer: PeerId) -> Option<Member> {
        self.with_page(topic.hash, false, |page| {
            page.side(topic.role).get(&peer).cloned()
        })
        .flatten()
    }

    /// A signal passed from `visitor` to `host`: the visitor is being
    /// served, so its slot is not idle.
    pub fn progress(&self, hash: PageHash, visitor: PeerId, host: PeerId) {
        let now = Instant::now();
        self.with_page(hash, false, |page| {
            if let Some(slot) = page.slots.get_mut(&visitor)
                && slot.host == host
            {
                slot.progress_at = now;
            }
        });
    }

    /// How many visitors `host` may relay the page to.
    pub fn relay_visitors(&self, hash: PageHash, host: PeerId) -> usize {
        self.with_page(hash, false, |page| {
            page.awaiting
                .values()
                .filter(|hosts| hosts.contains(&host))
                .count()
        })
        .unwrap_or(0)
    }

    /// The visitors whose request went to `host`, each
    /// taken off the list: relayed content goes once per request, and only
    /// where it was asked for.
    pub fn take_relay_visitors(&self, hash: PageHash, host: PeerId) -> Vec<Member> {
        self.with_page(hash, false, |page| {
            let asked: Vec<PeerId> = page
                .awaiting
                .iter()
                .filter(|(_, hosts)| hosts.contains(&host))
                .map(|(visitor, _)| *visitor)
                .collect();
            asked
                .into_iter()
                .filter_map(|visitor| {
                    page.awaiting.remove(&visitor);
                    page.wanters.get(&visitor).cloned()
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// `host` cannot relay the page to `visitor`; tells the visitor, if it
    /// asked this host. Whether it had.
    pub fn relay_unavailable(
        &self,
        hash: PageHash,
        host: PeerId,
        visitor: PeerId,
        size: u64,
    ) -> bool {
        let target = self
            .with_page(hash, false, |page| {
                let asked = page
                    .awaiting
                    .get(&visitor)
                    .is_some_and(|hosts| hosts.contains(&host));
                if !asked {
                    return None;
                }
                page.awaiting.remove(&visitor);
                page.wanters.get(&visitor).cloned()
            })
            .flatten();
        let Some(target) = target else {
            return false;
        };
        let text = Frame::with_payload(
            target.join_ref.clone(),
            None,
            Topic::want(hash).to_string(),
            event::CONTENT_UNAVAILABLE,
            &ContentUnavailableFrom { from: host, size },
        )
        .encode();
        target.conn.deliver(text.into(), &self.metrics);
        true
    }

    /// The seed's rule (`--selection coin-flip`): each host of `hash`
    /// other than the requester and those excluded gets the request with
    /// probability 1/n. Returns the hosts picked, and n.
    pub fn coin_flip_hosts(&self, hash: PageHash, request: &Request) -> (Vec<Member>, usize) {
        let requester = request.visitor.conn.peer;
        self.with_page(hash, false, |page| {
            let hosts: Vec<(&PeerId, &Member)> = page.hosts.iter().collect();
            let eligible = |(peer, _): &(&PeerId, &Member)| {
                **peer != requester && !request.exclude.contains(*peer)
            };
            let eligible_count = hosts.iter().filter(|h| eligible(h)).count();
            let mut rng = rand::rng();
            let picked: Vec<Member> = Selection::CoinFlip
                .pick(&hosts, eligible, || rand::Rng::random(&mut rng))
                .into_iter()
                .map(|i| hosts[i].1.clone())
                .collect();
            if !picked.is_empty() {
                page.awaiting.insert(
                    requester,
                    picked.iter().map(|member| member.conn.peer).collect(),
                );
            }
            (picked, eligible_count)
        })
        .unwrap_or((Vec::new(), 0))
    }

    /// Routes a visitor's request (uniform selection) to one host of
    /// `hash` with a free upload slot, or queues it when every host it may
    /// use is busy. A visitor's new request ends its previous one.
    pub fn request(&self, hash: PageHash, request: Request) -> Routing {
        let mut out = Deliveries::new();
        let now = Instant::now();
        let visitor = request.visitor.conn.clone();
        let unanswered = reply_frame(hash, &request);
        let routing = self.with_page(hash, false, |page| {
            page.end_request_of(request.visitor.conn.peer);
            self.dispatch(page, hash, now, &mut out);
            match page.choose(&request, Some(self.limits.max_uploads_per_host), now) {
                Choice::Host(host) => {
                    self.route(page, hash, request, host, now, &mut out);
                    Routing::Routed
                }
                Choice::AllBusy => {
                    page.queue.push_back(Queued {
                        request,
                        since: now,
                    });
                    self.metrics.requests_queued.fetch_add(1, Ordering::Relaxed);
                    Routing::Queued
                }
                Choice::Nobody => {
                    self.no_hosts(hash, &request, &mut out);
                    Routing::NoHosts
                }
            }
        });
        // The visitor joined `want:` first, so a missing page means no host
        // and no visitor is left: it raced its own leave.
        let routing = routing.unwrap_or_else(|| {
            out.push((visitor, unanswered.reply_error(NO_HOSTS).encode().into()));
            self.metrics
                .requests_no_host
                .fetch_add(1, Ordering::Relaxed);
            Routing::NoHosts
        });
        if matches!(routing, Routing::Routed | Routing::Queued) {
            lock(&self.timed).insert(hash);
        }
        self.deliver(out);
        routing
    }

    /// Routes queued requests while hosts have free slots.
    fn dispatch(&self, page: &mut Page, hash: PageHash, now: Instant, out: &mut Deliveries) {
        let mut waiting = std::mem::take(&mut page.queue);
        while let Some(queued) = waiting.pop_front() {
            if !page.wanters.contains_key(&queued.request.visitor.conn.peer) {
                continue;
            }
            match page.choose(&queued.request, Some(self.limits.max_uploads_per_host), now) {
                Choice::Host(host) => self.route(page, hash, queued.request, host, now, out),
                Choice::AllBusy => page.queue.push_back(queued),
                Choice::Nobody => self.no_hosts(hash, &queued.request, out),
            }
        }
    }

    /// Frees slots held without progress past the slot timeout, then routes
    /// queued requests: to hosts with a free slot, or — once they have
    /// waited past the queue wait — to any host they may use, so that a
    /// host whose visitors never leave cannot stall a page. Whether the
    /// page still has anything to time.
    fn expire(&self, page: &mut Page, hash: PageHash, now: Instant, out: &mut Deliveries) -> bool {
        let stale: Vec<PeerId> = page
            .slots
            .iter()
            .filter(|(_, slot)| now.duration_since(slot.progress_at) >= self.limits.slot_timeout)
            .map(|(visitor, _)| *visitor)
            .collect();
        for visitor in stale {
            page.free_slot(visitor);
            self.metrics.reject(Reason::SlotTimeout);
        }
        self.dispatch(page, hash, now, out);
        while page
            .queue
            .front()
            .is_some_and(|q| now.duration_since(q.since) >= self.limits.queue_wait)
        {
            let Some(Queued { request, .. }) = page.queue.pop_front() else {
                break;
            };
            match page.choose(&request, None, now) {
                Choice::Host(host) => self.route(page, hash, request, host, now, out),
                Choice::AllBusy => page.queue.push_back(Queued {
                    request,
                    since: now,
                }),
                Choice::Nobody => self.no_hosts(hash, &request, out),
            }
        }
        !page.slots.is_empty() || !page.queue.is_empty()
    }

    /// The one timer: visits pages with slots or queued requests, a few
    /// times per slot timeout, until `shutdown` fires.
    pub async fn run_timers(&self, mut shutdown: watch::Receiver<bool>) {
        let shortest = self.limits.slot_timeout.min(self.limits.queue_wait);
        let tick = (shortest / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => return,
            }
            let pages: Vec<PageHash> = lock(&self.timed).iter().copied().collect();
            let now = Instant::now();
            for hash in pages {
                let mut out = Deliveries::new();
                let still = self
                    .with_page(hash, false, |page| self.expire(page, hash, now, &mut out))
                    .unwrap_or(false);
                if !still {
                    lock(&self.timed).remove(&hash);
                }
                self.deliver(out);
            }
        }
    }

    /// Takes a slot of `host` for the visitor, tells the host who asks and
    /// the visitor who serves. The reply is queued first, so it reaches the
    /// visitor before anything the host sends.
    fn route(
        &self,
        page: &mut Page,
        hash: PageHash,
        request: Request,
        host: PeerId,
        now: Instant,
        out: &mut Deliveries,
    ) {
        let Some(host_member) = page.hosts.get(&host) else {
            return;
        };
        let visitor = request.visitor.conn.peer;
        let reply = reply_frame(hash, &request).reply_ok(&RequestRouted { host });
        out.push((request.visitor.conn.clone(), reply.encode().into()));
        let push = Frame::with_payload(
            host_member.join_ref.clone(),
            None,
            Topic::have(hash).to_string(),
            event::CONTENT_REQUEST,
            &HostRequest {
                from: visitor,
                relay: request.relay,
            },
        );
        out.push((host_member.conn.clone(), push.encode().into()));
        page.slots.insert(
            visitor,
            Slot {
                host,
                progress_at: now,
            },
        );
        page.awaiting.insert(visitor, vec![host]);
        *page.uploads.entry(host).or_default() += 1;
        page.recent.entry(host).or_default().push_back(now);
        self.metrics.requests_routed.fetch_add(1, Ordering::Relaxed);
    }

    fn no_hosts(&self, hash: PageHash, request: &Request, out: &mut Deliveries) {
        let reply = reply_frame(hash, request).reply_error(NO_HOSTS);
        out.push((request.visitor.conn.clone(), reply.encode().into()));
        self.metrics
            .requests_no_host
            .fetch_add(1, Ordering::Relaxed);
    }

    fn deliver(&self, out: Deliveries) {
        for (conn, text) in out {
            conn.deliver(text, &self.metrics);
        }
    }

    fn mark_dirty(&self, hash: PageHash) {
        let newly = lock(&self.dirty).insert(hash);
        if newly {
            self.dirty_notify.notify_one();
        }
    }

    /// Broadcasts `visitors_count` for changed pages until `shutdown`
    /// fires: at most once per `interval` per page, and less often for big
    /// pages (see [`BROADCAST_SPACING_PER_MEMBER`]); counts that came back
    /// to what was last sent are not sent again.
    pub async fn broadcast_counts(&self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.dirty_notify.notified() => {}
                _ = shutdown.changed() => return,
            }
            // Let more changes gather: under churn this is what keeps the
            // cost at one message per member per interval.
            tokio::time::sleep(interval).await;
            let dirty: Vec<PageHash> = lock(&self.dirty).drain().collect();
            let now = Instant::now();
            let mut not_yet = Vec::new();
            for hash in dirty {
                if !self.broadcast_count(hash, interval, now) {
                    not_yet.push(hash);
                }
            }
            if !not_yet.is_empty() {
                lock(&self.dirty).extend(not_yet);
                self.dirty_notify.notify_one();
            }
        }
    }

    /// Sends the page's counts if they changed and its spacing allows;
    /// `false` when it must wait.
    fn broadcast_count(&self, hash: PageHash, interval: Duration, now: Instant) -> bool {
        let due = self.with_page(hash, false, |page| {
            let counts = page.counts();
            if page.last_broadcast == Some(counts) {
                return Broadcast::Unchanged;
            }
            if page.next_broadcast.is_some_and(|at| now < at) {
                return Broadcast::NotYet;
            }
            let members = u32::try_from(page.members()).unwrap_or(u32::MAX);
            page.last_broadcast = Some(counts);
            page.next_broadcast = Some(now + interval.max(BROADCAST_SPACING_PER_MEMBER * members));
            let conns = page
                .hosts
                .values()
                .map(|m| (Role::Have, m.conn.clone()))
                .chain(page.wanters.values().map(|m| (Role::Want, m.conn.clone())))
                .collect();
            Broadcast::Send(counts, conns)
        });
        let (counts, members) = match due {
            None | Some(Broadcast::Unchanged) => return true,
            Some(Broadcast::NotYet) => return false,
            Some(Broadcast::Send(counts, members)) => (counts, members),
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
        true
    }
}

/// Whether a page's counts go out now.
enum Broadcast {
    Unchanged,
    /// Changed, but the page's spacing has not passed.
    NotYet,
    Send(VisitorsCount, Vec<(Role, Arc<Conn>)>),
}
