//! Who is on which topic: the hosts and waiting visitors of every page, by
//! peer id, and the send queue of each connection. Also which host serves
//! which visitor (upload slots, and the requests waiting for one), and the
//! coalesced `visitors_count` broadcasts.
//!
//! One mutex guards the whole map; every critical section is a lookup or an
//! insert, and messages are delivered after the lock is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{HostRequest, NO_HOSTS, PeerId, RequestRouted, VisitorsCount};
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
    /// Visitor → the host routed to serve it. The host's upload slot is
    /// taken until the visitor leaves `want:`, goes, or asks again.
    serving: HashMap<PeerId, PeerId>,
    /// Upload slots taken, per host.
    uploads: HashMap<PeerId, usize>,
    /// Requests waiting for a host with a free slot, oldest first.
    queue: VecDeque<Queued>,
    /// When each host was last given requests, within [`RECENT_WINDOW`].
    recent: HashMap<PeerId, VecDeque<Instant>>,
}

/// How far back selection looks to balance hosts.
const RECENT_WINDOW: Duration = Duration::from_secs(10);

enum Choice {
    Host(PeerId),
    /// Hosts it may use exist, but none has a free slot.
    AllBusy,
    Nobody,
}

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

/// A `content_request` as the server needs it to answer later.
#[derive(Debug, Clone)]
pub struct Request {
    /// The visitor, as a member of `want:<hash>`.
    pub visitor: Member,
    /// The ref of the push, for the reply.
    pub msg_ref: Option<String>,
    pub relay: bool,
    pub exclude: Vec<PeerId>,
}

#[derive(Debug)]
struct Queued {
    ticket: u64,
    request: Request,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Sent to a host; the visitor has its reply.
    Routed,
    /// Every host it may use is busy; it waits under this ticket.
    Queued(u64),
    /// No host it may use; the visitor has its `no_hosts` reply.
    NoHosts,
}

/// Messages to send once the lock is released.
type Deliveries = Vec<(Arc<Conn>, Utf8Bytes)>;

impl Page {
    fn side(&mut self, role: Role) -> &mut IndexMap<PeerId, Member> {
        match role {
            Role::Have => &mut self.hosts,
            Role::Want => &mut self.wanters,
        }
    }

    /// Frees the slot `visitor` held, and drops any request it had queued.
    fn end_request_of(&mut self, visitor: PeerId) {
        if let Some(host) = self.serving.remove(&visitor)
            && let Some(taken) = self.uploads.get_mut(&host)
        {
            *taken = taken.saturating_sub(1);
        }
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
    /// the queue), any usable host will do.
    fn choose(&mut self, request: &Request, max_uploads: Option<usize>) -> Choice {
        let visitor = request.visitor.conn.peer;
        let now = Instant::now();
        let uploading = self.uploads.values().any(|&n| n > 0);
        let mut usable = 0usize;
        let mut within_budget: Vec<(PeerId, usize)> = Vec::new();
        let mut over_budget: Vec<(PeerId, usize)> = Vec::new();
        for host in self.hosts.keys() {
            if *host == visitor || request.exclude.contains(host) {
                continue;
            }
            usable += 1;
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

#[derive(Debug)]
pub struct Registry {
    pages: Mutex<HashMap<PageHash, Page>>,
    /// Pages whose counts changed since the last broadcast.
    dirty: Mutex<HashSet<PageHash>>,
    dirty_notify: Notify,
    pub metrics: Arc<Metrics>,
    /// Uploads one host is given at once before requests wait for a slot.
    max_uploads_per_host: usize,
    next_ticket: AtomicU64,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, max_uploads_per_host: usize) -> Self {
        Self {
            pages: Mutex::default(),
            dirty: Mutex::default(),
            dirty_notify: Notify::new(),
            metrics,
            max_uploads_per_host: max_uploads_per_host.max(1),
            next_ticket: AtomicU64::new(0),
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
        let mut out = Deliveries::new();
        let counts = {
            let mut pages = self.pages();
            let page = pages.entry(topic.hash).or_default();
            page.side(topic.role).insert(member.conn.peer, member);
            if topic.role == Role::Have {
                self.dispatch(page, topic.hash, &mut out);
            }
            page.counts()
        };
        self.deliver(out);
        self.metrics.topics.fetch_add(1, Ordering::Relaxed);
        self.mark_dirty(topic.hash);
        counts
    }

    /// Removes `peer` from `topic`; whether it was there.
    pub fn leave(&self, topic: Topic, peer: PeerId) -> bool {
        let mut out = Deliveries::new();
        let removed = {
            let mut pages = self.pages();
            let Some(page) = pages.get_mut(&topic.hash) else {
                return false;
            };
            // swap_remove is O(1); host order carries no meaning.
            let removed = page.side(topic.role).swap_remove(&peer).is_some();
            match topic.role {
                // Served, or given up: either way its host's slot is free.
                Role::Want => {
                    page.end_request_of(peer);
                    self.dispatch(page, topic.hash, &mut out);
                }
                // Requests waiting only for this host now have none.
                Role::Have => {
                    page.uploads.remove(&peer);
                    page.recent.remove(&peer);
                    self.dispatch(page, topic.hash, &mut out);
                }
            }
            if page.hosts.is_empty() && page.wanters.is_empty() {
                pages.remove(&topic.hash);
            }
            removed
        };
        self.deliver(out);
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

    /// The seed's rule (`--selection coin-flip`): each host of `hash`
    /// other than `requester` and those in `exclude` gets the request with
    /// probability 1/n. Returns the hosts picked, and n.
    pub fn coin_flip_hosts(
        &self,
        hash: PageHash,
        requester: PeerId,
        exclude: &[PeerId],
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
        let picked = Selection::CoinFlip.pick(&hosts, eligible, || rand::Rng::random(&mut rng));
        (
            picked.into_iter().map(|i| hosts[i].1.clone()).collect(),
            eligible_count,
        )
    }

    /// Routes a visitor's request (uniform selection) to one host of
    /// `hash` with a free upload slot, or queues it when every host it may
    /// use is busy. A visitor's new request ends its previous one.
    pub fn request(&self, hash: PageHash, request: Request) -> Routing {
        let mut out = Deliveries::new();
        let routing = {
            let mut pages = self.pages();
            match pages.get_mut(&hash) {
                None => {
                    self.no_hosts(hash, &request, &mut out);
                    Routing::NoHosts
                }
                Some(page) => {
                    page.end_request_of(request.visitor.conn.peer);
                    self.dispatch(page, hash, &mut out);
                    match page.choose(&request, Some(self.max_uploads_per_host)) {
                        Choice::Host(host) => {
                            self.route(page, hash, request, host, &mut out);
                            Routing::Routed
                        }
                        Choice::AllBusy => {
                            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                            page.queue.push_back(Queued { ticket, request });
                            self.metrics.requests_queued.fetch_add(1, Ordering::Relaxed);
                            Routing::Queued(ticket)
                        }
                        Choice::Nobody => {
                            self.no_hosts(hash, &request, &mut out);
                            Routing::NoHosts
                        }
                    }
                }
            }
        };
        self.deliver(out);
        routing
    }

    /// A queued request has waited long enough: route it to any host it
    /// may use, busy or not, so that a host whose visitors never leave
    /// cannot stall a page.
    pub fn route_overdue(&self, hash: PageHash, ticket: u64) {
        let mut out = Deliveries::new();
        {
            let mut pages = self.pages();
            let Some(page) = pages.get_mut(&hash) else {
                return;
            };
            let Some(at) = page.queue.iter().position(|q| q.ticket == ticket) else {
                return;
            };
            let Some(Queued { request, .. }) = page.queue.remove(at) else {
                return;
            };
            match page.choose(&request, None) {
                Choice::Host(host) => self.route(page, hash, request, host, &mut out),
                _ => self.no_hosts(hash, &request, &mut out),
            }
        }
        self.deliver(out);
    }

    /// Routes queued requests while hosts have free slots.
    fn dispatch(&self, page: &mut Page, hash: PageHash, out: &mut Deliveries) {
        let mut waiting = std::mem::take(&mut page.queue);
        while let Some(queued) = waiting.pop_front() {
            if !page.wanters.contains_key(&queued.request.visitor.conn.peer) {
                continue;
            }
            match page.choose(&queued.request, Some(self.max_uploads_per_host)) {
                Choice::Host(host) => self.route(page, hash, queued.request, host, out),
                Choice::AllBusy => page.queue.push_back(queued),
                Choice::Nobody => self.no_hosts(hash, &queued.request, out),
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
        page.serving.insert(visitor, host);
        *page.uploads.entry(host).or_default() += 1;
        page.recent
            .entry(host)
            .or_default()
            .push_back(Instant::now());
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
