//! Which host serves which visitor on one page: its hosts and waiting
//! visitors by id, upload slots and the requests waiting for one, how many
//! requests each host was given lately, which hosts each request went to
//! (who may relay to whom), and when its counts may be broadcast.
//!
//! Sans-IO: the caller owns the clock, the random numbers and the
//! connections. Time is a [`Duration`] since an epoch the caller picks;
//! each call says what it decided ([`Event`]), and [`Page::next_deadline`]
//! says when [`Page::on_timeout`] has work, so one timer serves every page.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crate::protocol::{PeerId, VisitorsCount};
use crate::selection::Selection;
use crate::small_map::{SmallMap, SmallSet};
use crate::topic::Role;

/// How far back selection looks to balance hosts.
pub const RECENT_WINDOW: Duration = Duration::from_secs(10);

/// A page's count broadcasts are spaced by at least this much per member,
/// so joining and leaving in a loop cannot multiply messages by the size
/// of a crowd: a page of 1,000 members gets at most one broadcast a second.
pub const BROADCAST_SPACING_PER_MEMBER: Duration = Duration::from_millis(1);

/// The server's routing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uploads one host is given at once before requests wait for a slot.
    pub max_uploads_per_host: usize,
    /// How long a request waits for a free slot before any host will do.
    pub queue_wait: Duration,
    /// How long a slot is held without progress before it is freed.
    pub slot_timeout: Duration,
}

impl Limits {
    /// How soon requests kept waiting only by congested hosts look again:
    /// congestion clears without any event this type sees.
    fn recheck(&self) -> Duration {
        let shortest = self.slot_timeout.min(self.queue_wait);
        (shortest / 8).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }
}

/// What a decision depends on besides the page.
pub struct Inputs<'a> {
    /// Time since the caller's epoch; never goes back between calls.
    pub now: Duration,
    /// Uniformly distributed random numbers.
    pub random: &'a mut dyn FnMut() -> u64,
    /// Whether a host is too far behind on what it is sent to be given
    /// more work.
    pub congested: &'a dyn Fn(PeerId) -> bool,
}

/// A visitor's `content_request`. `token` is whatever the caller needs to
/// answer it later; this type only carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<T> {
    pub visitor: PeerId,
    /// Hosts not to pick, at most
    /// [`MAX_EXCLUDE`](crate::protocol::MAX_EXCLUDE) of them: checked once
    /// per candidate host.
    pub exclude: HashSet<PeerId>,
    pub token: T,
}

/// What became of requests and slots, in the order the caller must act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// `host` serves `visitor`: answer the visitor before telling the host,
    /// so the answer arrives before anything the host sends.
    Routed {
        visitor: PeerId,
        host: PeerId,
        token: T,
    },
    /// Every host the visitor may use is busy: its request waits for a
    /// slot. Only for a request as it arrives, not when it waits again.
    Queued { visitor: PeerId },
    /// No host the visitor may use.
    NoHosts { visitor: PeerId, token: T },
    /// A slot held without progress past the slot timeout was freed.
    SlotExpired { visitor: PeerId, host: PeerId },
}

/// Whether a page's counts go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// Back to what was last sent, or never changed.
    Unchanged,
    /// Changed, but the page's spacing has not passed: ask again later.
    NotYet,
    /// Send these counts to every member.
    Send(VisitorsCount),
}

/// The seed's rule: the hosts that get a request, and how many could have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoinFlip {
    pub hosts: Vec<PeerId>,
    pub eligible: usize,
}

#[derive(Debug)]
struct Host {
    peer: PeerId,
    /// Upload slots taken.
    uploads: usize,
    /// When it was given requests, within [`RECENT_WINDOW`]; pruned
    /// lazily.
    recent: VecDeque<Duration>,
}

/// An upload slot: the host serving a visitor, and when the visitor last
/// showed it is being served.
#[derive(Debug, Clone, Copy)]
struct Slot {
    host: PeerId,
    progress_at: Duration,
}

#[derive(Debug)]
struct Queued<T> {
    request: Request<T>,
    since: Duration,
}

enum Choice {
    Host(PeerId),
    /// Hosts it may use exist, but none has a free slot; `congested` when
    /// one was passed over only for being behind.
    AllBusy {
        congested: bool,
    },
    Nobody,
}

/// One page's routing state.
#[derive(Debug)]
pub struct Page<T> {
    limits: Limits,
    /// Ordered so selection indexes uniformly at random; removal swaps the
    /// last host into the gap, as member order carries no meaning.
    hosts: Vec<Host>,
    /// Host → its place in `hosts`, only while there are more than
    /// [`INDEXED_FROM`] hosts: most pages have one or two, and a map for
    /// them costs more memory than a scan costs time.
    host_index: SmallMap<PeerId, usize>,
    wanters: SmallSet<PeerId>,
    /// Visitor → its slot. A visitor holds at most one slot per page: a
    /// new request ends the previous one. Each slot is one of its host's
    /// `uploads`.
    slots: SmallMap<PeerId, Slot>,
    /// Requests waiting for a host with a free slot, oldest first; at most
    /// one per visitor.
    queue: VecDeque<Queued<T>>,
    /// Visitor → the hosts its request went to. Relayed content goes only
    /// to these visitors, once per request. Any request counts, not only
    /// those that asked for the relay: a host may answer a WebRTC request
    /// by relay (it cannot do WebRTC, or has too many channels open).
    awaiting: SmallMap<PeerId, Vec<PeerId>>,
    /// When queued requests look again at hosts that were congested.
    recheck_at: Option<Duration>,
    /// The counts last broadcast, and when the next broadcast may go.
    last_broadcast: Option<VisitorsCount>,
    next_broadcast: Option<Duration>,
}

/// Pages with more hosts than this find a host through `host_index`.
const INDEXED_FROM: usize = 8;

/// Uniformly at random among the hosts with the fewest recent requests.
fn least_loaded(candidates: &[(PeerId, usize)], random: &mut dyn FnMut() -> u64) -> Option<PeerId> {
    let least = candidates.iter().map(|(_, n)| *n).min()?;
    let picked = Selection::Uniform.pick(candidates, |(_, n)| *n == least, random);
    picked.first().map(|&i| candidates[i].0)
}

fn prune(recent: &mut VecDeque<Duration>, now: Duration) {
    while recent
        .front()
        .is_some_and(|at| now.saturating_sub(*at) > RECENT_WINDOW)
    {
        recent.pop_front();
    }
}

impl<T> Page<T> {
    pub fn new(mut limits: Limits) -> Self {
        limits.max_uploads_per_host = limits.max_uploads_per_host.max(1);
        Self {
            limits,
            hosts: Vec::new(),
            host_index: SmallMap::new(),
            wanters: SmallSet::new(),
            slots: SmallMap::new(),
            queue: VecDeque::new(),
            awaiting: SmallMap::new(),
            recheck_at: None,
            last_broadcast: None,
            next_broadcast: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.wanters.is_empty()
    }

    /// Where `peer` is in `hosts`.
    fn host_position(&self, peer: PeerId) -> Option<usize> {
        if self.hosts.len() > INDEXED_FROM {
            self.host_index.get(&peer).copied()
        } else {
            self.hosts.iter().position(|host| host.peer == peer)
        }
    }

    pub fn counts(&self) -> VisitorsCount {
        VisitorsCount {
            count: self.hosts.len(),
            waiting: self.wanters.len(),
        }
    }

    /// `peer` joins a side of the page. A new host takes waiting requests.
    pub fn join(&mut self, role: Role, peer: PeerId, inputs: &mut Inputs) -> Vec<Event<T>> {
        let mut events = Vec::new();
        match role {
            Role::Want => {
                self.wanters.add(peer);
            }
            Role::Have => {
                if self.host_position(peer).is_none() {
                    if self.hosts.capacity() == 0 {
                        // Room for one, not the four `push` would make:
                        // most pages keep a single host.
                        self.hosts.reserve_exact(1);
                    }
                    let i = self.hosts.len();
                    self.hosts.push(Host {
                        peer,
                        uploads: 0,
                        recent: VecDeque::new(),
                    });
                    if self.hosts.len() > INDEXED_FROM {
                        if self.host_index.is_empty() {
                            self.host_index = self
                                .hosts
                                .iter()
                                .enumerate()
                                .map(|(i, host)| (host.peer, i))
                                .collect();
                        } else {
                            self.host_index.insert(peer, i);
                        }
                    }
                }
                self.dispatch(inputs, &mut events);
            }
        }
        events
    }

    /// `peer` leaves a side of the page. A visitor's slot and request end
    /// with it (served, or given up); a host's slots and relay permissions
    /// go with it, and requests only it could serve hear there is no host.
    pub fn leave(&mut self, role: Role, peer: PeerId, inputs: &mut Inputs) -> Vec<Event<T>> {
        match role {
            Role::Want => {
                self.wanters.remove(&peer);
                self.end_request_of(peer);
            }
            Role::Have => {
                if let Some(i) = self.host_position(peer) {
                    self.hosts.swap_remove(i);
                    if self.hosts.len() > INDEXED_FROM {
                        self.host_index.remove(&peer);
                        if let Some(moved) = self.hosts.get(i) {
                            self.host_index.insert(moved.peer, i);
                        }
                    } else if !self.host_index.is_empty() {
                        self.host_index = SmallMap::new();
                    }
                    if self.hosts.is_empty() {
                        self.hosts = Vec::new();
                    }
                }
                self.slots.retain(|_, slot| slot.host != peer);
                for hosts in self.awaiting.values_mut() {
                    hosts.retain(|h| *h != peer);
                }
                self.awaiting.retain(|_, hosts| !hosts.is_empty());
            }
        }
        let mut events = Vec::new();
        self.dispatch(inputs, &mut events);
        events
    }

    /// Routes a request (uniform selection) to one host with a free upload
    /// slot, or queues it when every host it may use is busy. A visitor's
    /// new request ends its previous one. The last event is this
    /// request's; those before are waiting requests routed on the way.
    pub fn request(&mut self, request: Request<T>, inputs: &mut Inputs) -> Vec<Event<T>> {
        let mut events = Vec::new();
        self.end_request_of(request.visitor);
        self.dispatch(inputs, &mut events);
        let max = self.limits.max_uploads_per_host;
        match self.choose(&request, Some(max), inputs) {
            Choice::Host(host) => events.push(self.route(request, host, inputs.now)),
            Choice::AllBusy { congested } => {
                events.push(Event::Queued {
                    visitor: request.visitor,
                });
                let since = inputs.now;
                self.wait(Queued { request, since }, congested, inputs.now);
            }
            Choice::Nobody => events.push(Event::NoHosts {
                visitor: request.visitor,
                token: request.token,
            }),
        }
        events
    }

    /// The visitor signalled `host`: it is being served, so its slot is not
    /// idle.
    pub fn progress(&mut self, visitor: PeerId, host: PeerId, now: Duration) {
        if let Some(slot) = self.slots.get_mut(&visitor)
            && slot.host == host
        {
            slot.progress_at = now;
        }
    }

    /// When [`Page::on_timeout`] next has work: a slot idle past the slot
    /// timeout, a request waiting past the queue wait, or — while requests
    /// wait — a host's recent requests leaving the window, or congestion
    /// to look at again.
    pub fn next_deadline(&self) -> Option<Duration> {
        let slots = self
            .slots
            .values()
            .map(|slot| slot.progress_at.saturating_add(self.limits.slot_timeout));
        let waiting = self.queue.front().map(|oldest| {
            let overdue = oldest.since.saturating_add(self.limits.queue_wait);
            // An entry leaves once strictly older than the window.
            let max = self.limits.max_uploads_per_host;
            let back_in_budget = self
                .hosts
                .iter()
                .filter(|host| host.recent.len() >= max)
                .filter_map(|host| host.recent.front())
                .map(|at| *at + RECENT_WINDOW + Duration::from_nanos(1));
            back_in_budget
                .chain(self.recheck_at)
                .fold(overdue, Duration::min)
        });
        slots.chain(waiting).min()
    }

    /// Frees slots held without progress past the slot timeout, then routes
    /// queued requests: to hosts with a free slot, or — once they have
    /// waited past the queue wait — to any host they may use, so that a
    /// host whose visitors never leave cannot stall a page.
    pub fn on_timeout(&mut self, inputs: &mut Inputs) -> Vec<Event<T>> {
        let now = inputs.now;
        let mut events = Vec::new();
        // Choosing prunes only the hosts it looks at: a host no waiting
        // request may use would keep its deadline due forever.
        for host in &mut self.hosts {
            prune(&mut host.recent, now);
        }
        let timeout = self.limits.slot_timeout;
        let stale: Vec<(PeerId, PeerId)> = self
            .slots
            .iter()
            .filter(|(_, slot)| now.saturating_sub(slot.progress_at) >= timeout)
            .map(|(visitor, slot)| (*visitor, slot.host))
            .collect();
        for (visitor, host) in stale {
            self.free_slot(visitor);
            events.push(Event::SlotExpired { visitor, host });
        }
        self.dispatch(inputs, &mut events);
        // Each request at most once: one that waits again is at the back
        // with a fresh `since`.
        for _ in 0..self.queue.len() {
            let overdue = self
                .queue
                .front()
                .is_some_and(|q| now.saturating_sub(q.since) >= self.limits.queue_wait);
            if !overdue {
                break;
            }
            let Some(Queued { request, .. }) = self.queue.pop_front() else {
                break;
            };
            match self.choose(&request, None, inputs) {
                Choice::Host(host) => events.push(self.route(request, host, now)),
                Choice::AllBusy { congested } => {
                    self.wait(
                        Queued {
                            request,
                            since: now,
                        },
                        congested,
                        now,
                    );
                }
                Choice::Nobody => events.push(Event::NoHosts {
                    visitor: request.visitor,
                    token: request.token,
                }),
            }
        }
        events
    }

    /// How many visitors `host` may relay the page to.
    pub fn relay_visitors(&self, host: PeerId) -> usize {
        self.awaiting
            .values()
            .filter(|hosts| hosts.contains(&host))
            .count()
    }

    /// The visitors still waiting whose request went to `host`, each taken
    /// off the list: relayed content goes once per request, and only where
    /// it was asked for.
    pub fn take_relay_visitors(&mut self, host: PeerId) -> Vec<PeerId> {
        let asked: Vec<PeerId> = self
            .awaiting
            .iter()
            .filter(|(_, hosts)| hosts.contains(&host))
            .map(|(visitor, _)| *visitor)
            .collect();
        for visitor in &asked {
            self.awaiting.remove(visitor);
        }
        asked
            .into_iter()
            .filter(|visitor| self.wanters.contains(visitor))
            .collect()
    }

    /// `host` cannot relay the page to `visitor`: whether the visitor asked
    /// it and is still waiting, so should hear it. Takes the request off
    /// the list either way.
    pub fn relay_unavailable(&mut self, host: PeerId, visitor: PeerId) -> bool {
        let asked = self
            .awaiting
            .get(&visitor)
            .is_some_and(|hosts| hosts.contains(&host));
        if !asked {
            return false;
        }
        self.awaiting.remove(&visitor);
        self.wanters.contains(&visitor)
    }

    /// The seed's rule (`--selection coin-flip`): each host other than the
    /// visitor and those excluded gets the request with probability 1/n.
    /// It takes no slot and ends no earlier request.
    pub fn coin_flip(
        &mut self,
        visitor: PeerId,
        exclude: &HashSet<PeerId>,
        random: &mut dyn FnMut() -> u64,
    ) -> CoinFlip {
        let eligible = |host: &Host| host.peer != visitor && !exclude.contains(&host.peer);
        let picked: Vec<PeerId> = Selection::CoinFlip
            .pick(&self.hosts, eligible, random)
            .into_iter()
            .map(|i| self.hosts[i].peer)
            .collect();
        let eligible = self.hosts.iter().filter(|host| eligible(host)).count();
        if !picked.is_empty() {
            self.awaiting.insert(visitor, picked.clone());
        }
        CoinFlip {
            hosts: picked,
            eligible,
        }
    }

    /// Whether the counts go out now: not when they are what was last
    /// sent, and not before `interval` — or 1 ms per member on a big page
    /// (see [`BROADCAST_SPACING_PER_MEMBER`]) — has passed since the last.
    pub fn broadcast(&mut self, now: Duration, interval: Duration) -> Broadcast {
        let counts = self.counts();
        if self.last_broadcast == Some(counts) {
            return Broadcast::Unchanged;
        }
        if self.next_broadcast.is_some_and(|at| now < at) {
            return Broadcast::NotYet;
        }
        let members = u32::try_from(counts.count + counts.waiting).unwrap_or(u32::MAX);
        self.last_broadcast = Some(counts);
        let spacing = interval.max(BROADCAST_SPACING_PER_MEMBER * members);
        self.next_broadcast = Some(now.saturating_add(spacing));
        Broadcast::Send(counts)
    }

    fn host_mut(&mut self, peer: PeerId) -> Option<&mut Host> {
        let i = self.host_position(peer)?;
        self.hosts.get_mut(i)
    }

    fn free_slot(&mut self, visitor: PeerId) {
        if let Some(slot) = self.slots.remove(&visitor)
            && let Some(host) = self.host_mut(slot.host)
        {
            host.uploads = host.uploads.saturating_sub(1);
        }
    }

    /// Frees the slot `visitor` held, and drops what it had asked for.
    fn end_request_of(&mut self, visitor: PeerId) {
        self.free_slot(visitor);
        self.awaiting.remove(&visitor);
        self.queue.retain(|q| q.request.visitor != visitor);
    }

    /// Puts a request (back) in the queue.
    fn wait(&mut self, queued: Queued<T>, congested: bool, now: Duration) {
        self.queue.push_back(queued);
        if congested && self.recheck_at.is_none() {
            self.recheck_at = Some(now + self.limits.recheck());
        }
    }

    /// Routes queued requests while hosts have free slots.
    fn dispatch(&mut self, inputs: &mut Inputs, events: &mut Vec<Event<T>>) {
        self.recheck_at = None;
        let max = self.limits.max_uploads_per_host;
        let mut waiting = std::mem::take(&mut self.queue);
        while let Some(queued) = waiting.pop_front() {
            if !self.wanters.contains(&queued.request.visitor) {
                continue;
            }
            match self.choose(&queued.request, Some(max), inputs) {
                Choice::Host(host) => events.push(self.route(queued.request, host, inputs.now)),
                Choice::AllBusy { congested } => self.wait(queued, congested, inputs.now),
                Choice::Nobody => events.push(Event::NoHosts {
                    visitor: queued.request.visitor,
                    token: queued.request.token,
                }),
            }
        }
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
    /// the queue), any usable host will do. A congested host counts as
    /// busy either way.
    fn choose(
        &mut self,
        request: &Request<T>,
        max_uploads: Option<usize>,
        inputs: &mut Inputs,
    ) -> Choice {
        let uploading = !self.slots.is_empty();
        let mut usable = 0usize;
        let mut congested = false;
        let mut within_budget: Vec<(PeerId, usize)> = Vec::new();
        let mut over_budget: Vec<(PeerId, usize)> = Vec::new();
        for host in &mut self.hosts {
            if host.peer == request.visitor || request.exclude.contains(&host.peer) {
                continue;
            }
            usable += 1;
            if (inputs.congested)(host.peer) {
                congested = true;
                continue;
            }
            if max_uploads.is_some_and(|max| host.uploads >= max) {
                continue;
            }
            prune(&mut host.recent, inputs.now);
            match max_uploads {
                Some(max) if host.recent.len() >= max => {
                    over_budget.push((host.peer, host.recent.len()));
                }
                _ => within_budget.push((host.peer, host.recent.len())),
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
        match least_loaded(&candidates, inputs.random) {
            Some(host) => Choice::Host(host),
            None if usable > 0 => Choice::AllBusy { congested },
            None => Choice::Nobody,
        }
    }

    /// Takes a slot of `host` for the visitor.
    fn route(&mut self, request: Request<T>, host: PeerId, now: Duration) -> Event<T> {
        let visitor = request.visitor;
        self.free_slot(visitor);
        self.slots.insert(
            visitor,
            Slot {
                host,
                progress_at: now,
            },
        );
        self.awaiting.insert(visitor, vec![host]);
        if let Some(host) = self.host_mut(host) {
            host.uploads += 1;
            host.recent.push_back(now);
        }
        Event::Routed {
            visitor,
            host,
            token: request.token,
        }
    }
}

#[cfg(test)]
mod tests;
