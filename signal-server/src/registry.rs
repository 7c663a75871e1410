//! Routing on the wire: keeps each page's members and its routing state
//! ([`ephemeral_shared::routing`]) in step, feeds the policy the clock,
//! random numbers and which hosts are congested, and turns its decisions
//! into frames, delivered once the page's lock is released. Runs the one
//! timer task, which wakes at the earliest deadline of any page, and the
//! task that sends coalesced `visitors_count` broadcasts.
//!
//! In a cluster this is the state of the pages homed on this node, and a
//! member may be a socket of another node ([`Target::Remote`]): what the
//! policy decides for it goes to that node as a typed message instead of
//! a frame.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{HostRequest, PeerId, Reason, RequestRouted, VisitorsCount};
use ephemeral_shared::routing::{self, Broadcast, Event, Inputs, Limits};
use ephemeral_shared::{PageHash, Role, Topic};
use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tungstenite::Utf8Bytes;

use crate::cluster::wire::{Counts, Message, PageCounts};
use crate::cluster::{NodeId, Outbox};
use crate::conn::Conn;
use crate::membership::{Member, Page, Pages, Target, lock};
use crate::metrics::Metrics;
use crate::timers::Timers;

mod relay;

pub use relay::{queued_page_bytes, send_page};

/// A `content_request` as the server needs it to answer later.
#[derive(Debug, Clone)]
pub struct Request {
    pub visitor: PeerId,
    /// The visitor, as a member of `want:<hash>`.
    pub target: Target,
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
    visitor: PeerId,
    target: Target,
    msg_ref: Option<String>,
    relay: bool,
}

/// A message for a local socket, or for another node of the cluster.
enum Delivery {
    Local(Arc<Conn>, Utf8Bytes),
    Remote(NodeId, Message),
}

/// Messages to send once the lock is released.
type Deliveries = Vec<Delivery>;

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
    /// In a cluster, how remote members are reached. Topic memberships
    /// are then counted by the cluster, which sees every local one.
    outbox: Option<Outbox>,
}

/// The visitor's original push, rebuilt to reply to it.
fn reply_frame(hash: PageHash, member: &Member, msg_ref: Option<String>) -> Frame {
    Frame::new(
        member.join_ref.clone(),
        msg_ref,
        Topic::want(hash).to_string(),
        event::CONTENT_REQUEST,
        Default::default(),
    )
}

/// A `visitors_count` broadcast on `topic`.
pub fn counts_frame(topic: Topic, counts: &VisitorsCount) -> Utf8Bytes {
    Frame::with_payload(None, None, topic.to_string(), event::VISITORS_COUNT, counts)
        .encode()
        .into()
}

/// The reply to a visitor's `content_request` of ref `msg_ref`: its host,
/// or `no_hosts`.
pub fn routed_reply(
    hash: PageHash,
    visitor: &Member,
    msg_ref: Option<String>,
    host: Option<PeerId>,
) -> Utf8Bytes {
    let frame = reply_frame(hash, visitor, msg_ref);
    let reply = match host {
        Some(host) => frame.reply_ok(&RequestRouted { host }),
        None => frame.reply_error(Reason::NoHosts.as_str()),
    };
    reply.encode().into()
}

/// The answer to a request: its host, or `no_hosts`.
fn answer_visitor(hash: PageHash, pending: Pending, host: Option<PeerId>, out: &mut Deliveries) {
    match pending.target {
        Target::Local(member) => {
            let reply = routed_reply(hash, &member, pending.msg_ref, host);
            out.push(Delivery::Local(member.conn, reply));
        }
        Target::Remote(node) => out.push(Delivery::Remote(
            node,
            Message::Routed {
                page: hash,
                visitor: pending.visitor,
                msg_ref: pending.msg_ref,
                host,
            },
        )),
    }
}

/// Tells `host` to serve `visitor`.
fn ask_host(hash: PageHash, host: PeerId, target: &Target, ask: HostRequest, out: &mut Deliveries) {
    match target {
        Target::Local(member) => {
            let text = push(member, Topic::have(hash), event::CONTENT_REQUEST, &ask);
            out.push(Delivery::Local(member.conn.clone(), text));
        }
        Target::Remote(node) => out.push(Delivery::Remote(
            *node,
            Message::HostRequest {
                page: hash,
                host,
                from: ask.from,
                relay: ask.relay,
            },
        )),
    }
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
    // A host on another node is not known to be behind: if it stops
    // reading, its own node closes it, and it leaves.
    let congested = |host: PeerId| {
        hosts
            .get(&host)
            .and_then(Target::local)
            .is_some_and(|m| m.conn.congested())
    };
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
            outbox: None,
        }
    }

    /// The registry of a cluster node: remote members are reached through
    /// `outbox`.
    pub fn clustered(metrics: Arc<Metrics>, limits: Limits, outbox: Outbox) -> Self {
        Self {
            outbox: Some(outbox),
            ..Self::new(metrics, limits)
        }
    }

    fn count_topic(&self, delta: i64) {
        if self.outbox.is_none() {
            self.metrics.topics.fetch_add(delta, Ordering::Relaxed);
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

    /// Adds `peer` to `topic`; the page's counts.
    pub fn join(&self, topic: Topic, peer: PeerId, target: Target) -> VisitorsCount {
        let mut out = Deliveries::new();
        let mut counts = None;
        self.route_on(topic.hash, true, &mut out, |page| {
            page.side_mut(topic.role).insert(peer, target);
            let events = decide(page, self.epoch, |routing, inputs| {
                routing.join(topic.role, peer, inputs)
            });
            counts = Some(page.routing.counts());
            events
        });
        self.deliver(out);
        self.count_topic(1);
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
            self.count_topic(-1);
            self.mark_dirty(topic.hash);
        }
    }

    /// The member `peer` of `topic`, if it is one of this node's sockets.
    pub fn member(&self, topic: Topic, peer: PeerId) -> Option<Member> {
        self.pages
            .with_page(topic.hash, false, |page| {
                page.side(topic.role)
                    .get(&peer)
                    .and_then(Target::local)
                    .cloned()
            })
            .flatten()
    }

    /// The pages whose routing state is here.
    pub fn pages(&self) -> Vec<PageHash> {
        self.pages.hashes()
    }

    /// The page's counts, if its routing state is here.
    pub fn counts(&self, hash: PageHash) -> Option<VisitorsCount> {
        self.pages
            .with_page(hash, false, |page| page.routing.counts())
    }

    /// Drops the page's routing state, whatever it holds (a cluster moved
    /// its home: the new home rebuilds it). Requests waiting in it get no
    /// answer; their visitors ask again after their timeout.
    pub fn drop_page(&self, hash: PageHash) {
        let Some(page) = self.pages.remove(hash) else {
            return;
        };
        let local = [&page.hosts, &page.wanters]
            .into_iter()
            .flat_map(|side| side.values())
            .filter(|target| target.local().is_some())
            .count();
        self.count_topic(-(local as i64));
        lock(&self.timers).set(hash, None);
    }

    /// A signal passed from `visitor` to `host`: the visitor is being
    /// served, so its slot is not idle. The timer may then wake for a
    /// deadline that moved; it finds nothing due and sleeps again.
    pub fn progress(&self, hash: PageHash, visitor: PeerId, host: PeerId) {
        self.pages.with_page(hash, false, |page| {
            page.routing.progress(visitor, host, self.epoch.elapsed());
        });
    }

    /// Routes a visitor's request (uniform selection) to one host of
    /// `hash` with a free upload slot, or queues it when every host it may
    /// use is busy. A visitor's new request ends its previous one. The
    /// visitor's reply is queued on its socket now or once a host is found.
    pub fn request(&self, hash: PageHash, request: Request) {
        let mut out = Deliveries::new();
        let mut unrouted = Some(routing::Request {
            visitor: request.visitor,
            exclude: request.exclude,
            token: Pending {
                visitor: request.visitor,
                target: request.target,
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
            self.no_hosts(hash, request.token, &mut out);
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
                    let Some(host_target) = page.hosts.get(&host) else {
                        continue;
                    };
                    let ask = HostRequest {
                        from: visitor,
                        relay: token.relay,
                    };
                    // The reply is queued first, so it reaches the visitor
                    // before anything the host sends. Across nodes too:
                    // Redis delivers one publisher's messages in order, and
                    // the host's answer can only follow the push.
                    answer_visitor(hash, token, Some(host), out);
                    ask_host(hash, host, host_target, ask, out);
                    self.metrics.requests_routed.fetch_add(1, Ordering::Relaxed);
                }
                Event::Queued { .. } => {
                    self.metrics.requests_queued.fetch_add(1, Ordering::Relaxed);
                }
                Event::NoHosts { token, .. } => self.no_hosts(hash, token, out),
                Event::SlotExpired { .. } => self.metrics.reject(Reason::SlotTimeout),
            }
        }
    }

    fn no_hosts(&self, hash: PageHash, pending: Pending, out: &mut Deliveries) {
        answer_visitor(hash, pending, None, out);
        self.metrics
            .requests_no_host
            .fetch_add(1, Ordering::Relaxed);
    }

    fn deliver(&self, out: Deliveries) {
        for delivery in out {
            match delivery {
                Delivery::Local(conn, text) => {
                    conn.deliver(text, &self.metrics);
                }
                Delivery::Remote(node, message) => {
                    if let Some(outbox) = &self.outbox {
                        outbox.send(node, message);
                    }
                }
            }
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
                Broadcast::Unchanged | Broadcast::NotYet => Default::default(),
            };
            (decision, members)
        });
        let (counts, (members, nodes)) = match due {
            None | Some((Broadcast::Unchanged, _)) => return true,
            Some((Broadcast::NotYet, _)) => return false,
            Some((Broadcast::Send(counts), members)) => (counts, members),
        };
        if let Some(outbox) = &self.outbox {
            for node in nodes {
                let pages = vec![PageCounts {
                    page: hash,
                    counts: Counts::from(counts),
                }];
                outbox.send(node, Message::Counts { pages });
            }
        }
        let have = counts_frame(Topic::have(hash), &counts);
        let want = counts_frame(Topic::want(hash), &counts);
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
