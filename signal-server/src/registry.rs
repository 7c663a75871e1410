//! Routing on the wire: keeps each page's members and its routing state
//! ([`ephemeral_shared::routing`]) in step, feeds the policy the clock,
//! random numbers and which hosts are congested, and turns its decisions
//! into frames, delivered once the page's lock is released. Runs the one
//! timer task, which wakes at the earliest deadline of any page, and the
//! task that sends coalesced `visitors_count` broadcasts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{
    Content, ContentUnavailableFrom, HostRequest, PeerId, Reason, RequestRouted, VisitorsCount,
};
use ephemeral_shared::routing::{self, Broadcast, Event, Inputs, Limits};
use ephemeral_shared::{PageHash, Role, Topic};
use rand::Rng;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::conn::Conn;
use crate::membership::{Member, Page, Pages, lock};
use crate::metrics::Metrics;

/// A `content_request` as the server needs it to answer later.
#[derive(Debug, Clone)]
pub struct Request {
    /// The visitor, as a member of `want:<hash>`.
    pub visitor: Member,
    /// The ref of the push, for the reply.
    pub msg_ref: Option<String>,
    pub relay: bool,
    /// At most [`ephemeral_shared::protocol::MAX_EXCLUDE`] peers.
    pub exclude: HashSet<PeerId>,
}

/// What a request waiting in the routing policy carries: all it takes to
/// answer the visitor and to tell its host.
#[derive(Debug)]
struct Pending {
    visitor: Member,
    msg_ref: Option<String>,
    relay: bool,
}

/// Messages to send once the lock is released.
type Deliveries = Vec<(Arc<Conn>, Utf8Bytes)>;

/// Each page's next deadline, earliest first: what the timer waits for.
#[derive(Debug, Default)]
struct Timers {
    of_page: HashMap<PageHash, Duration>,
    order: BTreeSet<(Duration, PageHash)>,
}

impl Timers {
    /// Sets the page's deadline; whether it is now the earliest of all.
    fn set(&mut self, hash: PageHash, deadline: Option<Duration>) -> bool {
        if self.of_page.get(&hash) == deadline.as_ref() {
            return false;
        }
        if let Some(old) = self.of_page.remove(&hash) {
            self.order.remove(&(old, hash));
        }
        let Some(at) = deadline else {
            return false;
        };
        self.of_page.insert(hash, at);
        self.order.insert((at, hash));
        self.order.first() == Some(&(at, hash))
    }

    fn first(&self) -> Option<Duration> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes off the pages whose deadline has come.
    fn take_due(&mut self, now: Duration) -> Vec<PageHash> {
        let mut due = Vec::new();
        while let Some(&(at, hash)) = self.order.first()
            && at <= now
        {
            self.order.pop_first();
            self.of_page.remove(&hash);
            due.push(hash);
        }
        due
    }
}

#[derive(Debug)]
pub struct Registry {
    pages: Pages<Pending>,
    /// Pages whose counts changed since the last broadcast.
    dirty: Mutex<HashSet<PageHash>>,
    dirty_notify: Notify,
    timers: Mutex<Timers>,
    /// Wakes the timer when a deadline earlier than all others is set.
    timer_notify: Notify,
    /// What the routing policy's times count from.
    epoch: Instant,
    pub metrics: Arc<Metrics>,
}

/// The visitor's original push, rebuilt to reply to it.
fn reply_frame(hash: PageHash, pending: &Pending) -> Frame {
    Frame::new(
        pending.visitor.join_ref.clone(),
        pending.msg_ref.clone(),
        Topic::want(hash).to_string(),
        event::CONTENT_REQUEST,
        Default::default(),
    )
}

/// A push to a member of `topic`.
fn push<P: serde::Serialize>(member: &Member, topic: Topic, event: &str, payload: &P) -> Utf8Bytes {
    Frame::with_payload(
        member.join_ref.clone(),
        None,
        topic.to_string(),
        event,
        payload,
    )
    .encode()
    .into()
}

/// Runs the routing policy on `page`, with the time read under the page's
/// lock (so it never goes back for the page), fresh random numbers, and
/// its hosts' congestion.
fn decide(
    page: &mut Page<Pending>,
    epoch: Instant,
    f: impl FnOnce(&mut routing::Page<Pending>, &mut Inputs) -> Vec<Event<Pending>>,
) -> Vec<Event<Pending>> {
    let Page { hosts, routing, .. } = page;
    let mut rng = rand::rng();
    let mut random = || rng.random::<u64>();
    let congested = |host: PeerId| hosts.get(&host).is_some_and(|m| m.conn.congested());
    let mut inputs = Inputs {
        now: epoch.elapsed(),
        random: &mut random,
        congested: &congested,
    };
    f(routing, &mut inputs)
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, limits: Limits) -> Self {
        Self {
            pages: Pages::new(limits, metrics.clone()),
            dirty: Default::default(),
            dirty_notify: Notify::new(),
            timers: Default::default(),
            timer_notify: Notify::new(),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// Runs a routing step on the page of `hash` (unless there is no such
    /// page and not `create`), queues what it decided on `out`, and moves
    /// the page's deadline.
    fn route_on(
        &self,
        hash: PageHash,
        create: bool,
        out: &mut Deliveries,
        step: impl FnOnce(&mut Page<Pending>) -> Vec<Event<Pending>>,
    ) {
        self.pages.with_page(hash, create, |page| {
            let events = step(page);
            self.answer(page, hash, events, out);
            if lock(&self.timers).set(hash, page.routing.next_deadline()) {
                self.timer_notify.notify_one();
            }
        });
    }

    /// Adds `member` to `topic`; the page's counts.
    pub fn join(&self, topic: Topic, member: Member) -> VisitorsCount {
        let mut out = Deliveries::new();
        let mut counts = None;
        self.route_on(topic.hash, true, &mut out, |page| {
            let peer = member.conn.peer;
            page.side_mut(topic.role).insert(peer, member);
            let events = decide(page, self.epoch, |routing, inputs| {
                routing.join(topic.role, peer, inputs)
            });
            counts = Some(page.routing.counts());
            events
        });
        self.deliver(out);
        self.metrics.topics.fetch_add(1, Ordering::Relaxed);
        self.mark_dirty(topic.hash);
        counts.unwrap_or(VisitorsCount {
            count: 0,
            waiting: 0,
        })
    }

    /// Removes `peer` from `topic`.
    pub fn leave(&self, topic: Topic, peer: PeerId) {
        let mut out = Deliveries::new();
        let mut removed = false;
        self.route_on(topic.hash, false, &mut out, |page| {
            removed = page.side_mut(topic.role).remove(&peer).is_some();
            decide(page, self.epoch, |routing, inputs| {
                routing.leave(topic.role, peer, inputs)
            })
        });
        self.deliver(out);
        if removed {
            self.metrics.topics.fetch_sub(1, Ordering::Relaxed);
            self.mark_dirty(topic.hash);
        }
    }

    /// The member `peer` of `topic`, if it is one.
    pub fn member(&self, topic: Topic, peer: PeerId) -> Option<Member> {
        self.pages
            .with_page(topic.hash, false, |page| {
                page.side(topic.role).get(&peer).cloned()
            })
            .flatten()
    }

    /// A signal passed from `visitor` to `host`: the visitor is being
    /// served, so its slot is not idle. The timer may then wake for a
    /// deadline that moved; it finds nothing due and sleeps again.
    pub fn progress(&self, hash: PageHash, visitor: PeerId, host: PeerId) {
        self.pages.with_page(hash, false, |page| {
            page.routing.progress(visitor, host, self.epoch.elapsed());
        });
    }

    /// How many visitors `host` may relay the page to.
    pub fn relay_visitors(&self, hash: PageHash, host: PeerId) -> usize {
        self.pages
            .with_page(hash, false, |page| page.routing.relay_visitors(host))
            .unwrap_or(0)
    }

    /// Relays `content` from `host` to the visitors whose request went to
    /// it, each once; how many it was queued for.
    pub fn relay(&self, hash: PageHash, host: PeerId, content: String) -> usize {
        let visitors: Vec<Member> = self
            .pages
            .with_page(hash, false, |page| {
                let asked = page.routing.take_relay_visitors(host);
                asked
                    .iter()
                    .filter_map(|visitor| page.wanters.get(visitor).cloned())
                    .collect()
            })
            .unwrap_or_default();
        let page_bytes = content.len() as u64;
        let payload = Content { content };
        for visitor in &visitors {
            let text = push(visitor, Topic::want(hash), event::CONTENT, &payload);
            if visitor.conn.deliver(text, &self.metrics) {
                self.metrics
                    .relayed_bytes
                    .fetch_add(page_bytes, Ordering::Relaxed);
            }
        }
        visitors.len()
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
            .pages
            .with_page(hash, false, |page| {
                if !page.routing.relay_unavailable(host, visitor) {
                    return None;
                }
                page.wanters.get(&visitor).cloned()
            })
            .flatten();
        let Some(target) = target else {
            return false;
        };
        let payload = ContentUnavailableFrom { from: host, size };
        let text = push(
            &target,
            Topic::want(hash),
            event::CONTENT_UNAVAILABLE,
            &payload,
        );
        target.conn.deliver(text, &self.metrics);
        true
    }

    /// The seed's rule (`--selection coin-flip`): each host other than the
    /// visitor and those it excludes gets the request with probability
    /// 1/n; the visitor hears how many did, or `no_hosts` when none could.
    pub fn coin_flip(&self, hash: PageHash, request: Request) {
        let visitor = request.visitor.conn.peer;
        let picked = self.pages.with_page(hash, false, |page| {
            let mut rng = rand::rng();
            let flip = page
                .routing
                .coin_flip(visitor, &request.exclude, &mut || rng.random());
            let hosts: Vec<Member> = flip
                .hosts
                .iter()
                .filter_map(|host| page.hosts.get(host).cloned())
                .collect();
            (hosts, flip.eligible)
        });
        let (hosts, eligible) = picked.unwrap_or_default();
        let pending = Pending {
            visitor: request.visitor,
            msg_ref: request.msg_ref,
            relay: request.relay,
        };
        let mut out = Deliveries::new();
        if eligible == 0 {
            self.no_hosts(hash, &pending, &mut out);
        } else {
            let ask = HostRequest {
                from: visitor,
                relay: pending.relay,
            };
            for host in &hosts {
                let text = push(host, Topic::have(hash), event::CONTENT_REQUEST, &ask);
                out.push((host.conn.clone(), text));
            }
            self.metrics
                .requests_routed
                .fetch_add(hosts.len() as u64, Ordering::Relaxed);
            let reply = reply_frame(hash, &pending).reply_ok(&json!({ "routed": hosts.len() }));
            out.push((pending.visitor.conn.clone(), reply.encode().into()));
        }
        self.deliver(out);
    }

    /// Routes a visitor's request (uniform selection) to one host of
    /// `hash` with a free upload slot, or queues it when every host it may
    /// use is busy. A visitor's new request ends its previous one. The
    /// visitor's reply is queued on its socket now or once a host is found.
    pub fn request(&self, hash: PageHash, request: Request) {
        let mut out = Deliveries::new();
        let mut unrouted = Some(routing::Request {
            visitor: request.visitor.conn.peer,
            exclude: request.exclude,
            token: Pending {
                visitor: request.visitor,
                msg_ref: request.msg_ref,
                relay: request.relay,
            },
        });
        self.route_on(hash, false, &mut out, |page| {
            let Some(request) = unrouted.take() else {
                return Vec::new();
            };
            decide(page, self.epoch, |routing, inputs| {
                routing.request(request, inputs)
            })
        });
        // The visitor joined `want:` first, so a missing page means no host
        // and no visitor is left: it raced its own leave.
        if let Some(request) = unrouted {
            self.no_hosts(hash, &request.token, &mut out);
        }
        self.deliver(out);
    }

    /// Queues the frames and counts the metrics of routing decisions.
    fn answer(
        &self,
        page: &Page<Pending>,
        hash: PageHash,
        events: Vec<Event<Pending>>,
        out: &mut Deliveries,
    ) {
        for event in events {
            match event {
                Event::Routed {
                    visitor,
                    host,
                    token,
                } => {
                    let Some(host_member) = page.hosts.get(&host) else {
                        continue;
                    };
                    // The reply is queued first, so it reaches the visitor
                    // before anything the host sends.
                    let reply = reply_frame(hash, &token).reply_ok(&RequestRouted { host });
                    out.push((token.visitor.conn.clone(), reply.encode().into()));
                    let ask = HostRequest {
                        from: visitor,
                        relay: token.relay,
                    };
                    let text = push(host_member, Topic::have(hash), event::CONTENT_REQUEST, &ask);
                    out.push((host_member.conn.clone(), text));
                    self.metrics.requests_routed.fetch_add(1, Ordering::Relaxed);
                }
                Event::Queued { .. } => {
                    self.metrics.requests_queued.fetch_add(1, Ordering::Relaxed);
                }
                Event::NoHosts { token, .. } => self.no_hosts(hash, &token, out),
                Event::SlotExpired { .. } => self.metrics.reject(Reason::SlotTimeout),
            }
        }
    }

    fn no_hosts(&self, hash: PageHash, pending: &Pending, out: &mut Deliveries) {
        let reply = reply_frame(hash, pending).reply_error(Reason::NoHosts.as_str());
        out.push((pending.visitor.conn.clone(), reply.encode().into()));
        self.metrics
            .requests_no_host
            .fetch_add(1, Ordering::Relaxed);
    }

    fn deliver(&self, out: Deliveries) {
        for (conn, text) in out {
            conn.deliver(text, &self.metrics);
        }
    }

    /// The one timer: sleeps until the earliest deadline of any page (slot
    /// timeouts, overdue requests), lets those pages' routing act on it,
    /// until `shutdown` fires.
    pub async fn run_timers(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = lock(&self.timers)
                .first()
                .and_then(|at| self.epoch.checked_add(at));
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.timer_notify.notified() => continue,
                _ = shutdown.changed() => return,
            }
            let due = lock(&self.timers).take_due(self.epoch.elapsed());
            for hash in due {
                let mut out = Deliveries::new();
                self.route_on(hash, false, &mut out, |page| {
                    decide(page, self.epoch, |routing, inputs| {
                        routing.on_timeout(inputs)
                    })
                });
                self.deliver(out);
            }
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
    /// pages (see [`routing::BROADCAST_SPACING_PER_MEMBER`]); counts that
    /// came back to what was last sent are not sent again.
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
            let now = self.epoch.elapsed();
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
    fn broadcast_count(&self, hash: PageHash, interval: Duration, now: Duration) -> bool {
        let due = self.pages.with_page(hash, false, |page| {
            let decision = page.routing.broadcast(now, interval);
            let members = match decision {
                Broadcast::Send(_) => page.connections(),
                Broadcast::Unchanged | Broadcast::NotYet => Vec::new(),
            };
            (decision, members)
        });
        let (counts, members) = match due {
            None | Some((Broadcast::Unchanged, _)) => return true,
            Some((Broadcast::NotYet, _)) => return false,
            Some((Broadcast::Send(counts), members)) => (counts, members),
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
