//! The routing policy driven by a fake clock, seeded random numbers and
//! hosts marked congested by hand: every timeout runs faster than real
//! time.

use super::*;
use std::collections::HashMap;

const SECOND: Duration = Duration::from_secs(1);

fn peer(n: u128) -> PeerId {
    PeerId::from_random(n)
}

fn limits(max_uploads_per_host: usize) -> Limits {
    Limits {
        max_uploads_per_host,
        queue_wait: 2 * SECOND,
        slot_timeout: SECOND,
    }
}

/// A page with a fake clock, seeded random numbers (xorshift64*) and
/// hosts marked congested by hand. Tokens are request numbers.
struct Bench {
    page: Page<u32>,
    now: Duration,
    seed: u64,
    congested: HashSet<PeerId>,
    requests: u32,
}

impl Bench {
    fn new(limits: Limits) -> Self {
        Self {
            page: Page::new(limits),
            now: Duration::from_secs(100),
            seed: 0x2545_f491_4f6c_dd1d,
            congested: HashSet::new(),
            requests: 0,
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Page<u32>, &mut Inputs) -> R) -> R {
        let seed = &mut self.seed;
        let mut random = || {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let congested = &self.congested;
        let is_congested = |host: PeerId| congested.contains(&host);
        let mut inputs = Inputs {
            now: self.now,
            random: &mut random,
            congested: &is_congested,
        };
        f(&mut self.page, &mut inputs)
    }

    fn join(&mut self, role: Role, who: PeerId) -> Vec<Event<u32>> {
        self.with(|page, inputs| page.join(role, who, inputs))
    }

    fn leave(&mut self, role: Role, who: PeerId) -> Vec<Event<u32>> {
        self.with(|page, inputs| page.leave(role, who, inputs))
    }

    fn hosts(&mut self, ids: &[u128]) {
        for &id in ids {
            self.join(Role::Have, peer(id));
        }
    }

    fn ask_excluding(&mut self, visitor: PeerId, exclude: &[PeerId]) -> Vec<Event<u32>> {
        self.requests += 1;
        let request = Request {
            visitor,
            exclude: exclude.iter().copied().collect(),
            token: self.requests,
        };
        self.with(|page, inputs| page.request(request, inputs))
    }

    /// A visitor joins `want:` and asks; the events of its request.
    fn ask(&mut self, visitor: PeerId) -> Vec<Event<u32>> {
        self.join(Role::Want, visitor);
        self.ask_excluding(visitor, &[])
    }

    /// The host `visitor`'s request went to, when that is all that
    /// happened.
    fn served_by(&mut self, visitor: PeerId) -> PeerId {
        match self.ask(visitor).as_slice() {
            [
                Event::Routed {
                    visitor: v, host, ..
                },
            ] if *v == visitor => *host,
            other => panic!("expected one routing, got {other:?}"),
        }
    }

    /// Host 1 with one slot, held by visitor 10 (request 1); visitor 11's
    /// request 2 waits for it.
    fn busy(limits: Limits) -> Self {
        let mut bench = Bench::new(Limits {
            max_uploads_per_host: 1,
            ..limits
        });
        bench.hosts(&[1]);
        assert_eq!(bench.served_by(peer(10)), peer(1));
        assert_eq!(bench.ask(peer(11)), queued(peer(11)));
        bench
    }

    fn timeout(&mut self) -> Vec<Event<u32>> {
        self.with(|page, inputs| page.on_timeout(inputs))
    }

    fn advance_to(&mut self, at: Duration) {
        assert!(at >= self.now, "the clock never goes back");
        self.now = at;
    }
}

fn queued(visitor: PeerId) -> Vec<Event<u32>> {
    vec![Event::Queued { visitor }]
}

fn routed(visitor: PeerId, host: PeerId, token: u32) -> Event<u32> {
    Event::Routed {
        visitor,
        host,
        token,
    }
}

fn no_hosts(visitor: PeerId, token: u32) -> Event<u32> {
    Event::NoHosts { visitor, token }
}

#[test]
fn uniform_selection_is_even_over_many_picks() {
    let mut bench = Bench::new(limits(2));
    bench.hosts(&[1, 2, 3, 4, 5]);
    let mut counts: HashMap<PeerId, u32> = HashMap::new();
    let rounds: u32 = 20_000;
    for visitor in 0..rounds {
        let visitor = peer(1000 + u128::from(visitor));
        // Past the window, every host is equally unloaded.
        bench.now += RECENT_WINDOW + SECOND;
        *counts.entry(bench.served_by(visitor)).or_default() += 1;
        bench.leave(Role::Want, visitor);
    }
    assert_eq!(counts.len(), 5);
    // 4,000 each expected, with a standard deviation of about 57.
    for (host, count) in &counts {
        assert!((3700..4300).contains(count), "{host}: {count} of {rounds}");
    }
}

#[test]
fn the_least_loaded_hosts_of_the_window_go_first() {
    let mut bench = Bench::new(limits(10));
    bench.hosts(&[1, 2, 3]);
    let mut served: Vec<PeerId> = (10..13).map(|v| bench.served_by(peer(v))).collect();
    served.sort();
    assert_eq!(served, [peer(1), peer(2), peer(3)], "one each");
}

#[test]
fn excluded_hosts_and_the_visitor_itself_are_never_picked() {
    let mut bench = Bench::new(limits(100));
    bench.hosts(&[1, 2, 3]);
    // Visitor 3 is also a host of the page.
    bench.join(Role::Want, peer(3));
    for _ in 0..200 {
        let events = bench.ask_excluding(peer(3), &[peer(1)]);
        assert!(
            matches!(events.as_slice(), [Event::Routed { host, .. }] if *host == peer(2)),
            "{events:?}"
        );
        bench.now += RECENT_WINDOW + SECOND;
    }
    let token = bench.requests + 1;
    assert_eq!(
        bench.ask_excluding(peer(3), &[peer(1), peer(2)]),
        [no_hosts(peer(3), token)]
    );
}

#[test]
fn a_page_without_hosts_answers_no_hosts() {
    let mut bench = Bench::new(limits(2));
    assert_eq!(bench.ask(peer(10)), [no_hosts(peer(10), 1)]);
    assert_eq!(bench.page.next_deadline(), None);
}

#[test]
fn busy_hosts_queue_requests_until_a_slot_frees() {
    let mut bench = Bench::busy(limits(1));
    // Served: the first visitor leaves, and its slot goes to the next.
    assert_eq!(
        bench.leave(Role::Want, peer(10)),
        [routed(peer(11), peer(1), 2)]
    );
}

#[test]
fn a_new_host_takes_a_waiting_request() {
    let mut bench = Bench::busy(limits(1));
    assert_eq!(
        bench.join(Role::Have, peer(2)),
        [routed(peer(11), peer(2), 2)]
    );
}

#[test]
fn a_waiting_visitor_that_leaves_is_forgotten() {
    let mut bench = Bench::busy(limits(1));
    assert_eq!(bench.leave(Role::Want, peer(11)), []);
    assert_eq!(
        bench.leave(Role::Want, peer(10)),
        [],
        "nobody left to route"
    );
}

#[test]
fn waiting_requests_hear_no_hosts_when_the_last_host_leaves() {
    let mut bench = Bench::busy(limits(1));
    assert_eq!(bench.leave(Role::Have, peer(1)), [no_hosts(peer(11), 2)]);
    assert_eq!(bench.page.next_deadline(), None, "its slot went with it");
}

#[test]
fn a_new_request_ends_the_previous_one() {
    let mut bench = Bench::new(limits(1));
    bench.hosts(&[1]);
    assert_eq!(bench.served_by(peer(10)), peer(1));
    // Its own slot is freed first, so the busy host can take it again.
    assert!(matches!(
        bench.ask_excluding(peer(10), &[]).as_slice(),
        [Event::Routed { host, token: 2, .. }] if *host == peer(1)
    ));
    assert_eq!(bench.page.relay_visitors(peer(1)), 1);
}

#[test]
fn an_overdue_request_goes_to_a_busy_host_after_the_queue_wait() {
    let mut bench = Bench::busy(Limits {
        slot_timeout: 60 * SECOND,
        ..limits(1)
    });
    let asked = bench.now;
    let due = asked + 2 * SECOND;
    assert_eq!(bench.page.next_deadline(), Some(due));
    bench.advance_to(due - Duration::from_millis(1));
    assert_eq!(bench.timeout(), []);
    bench.advance_to(due);
    assert_eq!(bench.timeout(), [routed(peer(11), peer(1), 2)]);
    assert_eq!(bench.page.next_deadline(), Some(asked + 60 * SECOND));
}

#[test]
fn an_idle_slot_expires_and_progress_keeps_it() {
    let mut bench = Bench::new(Limits {
        queue_wait: 60 * SECOND,
        ..limits(1)
    });
    bench.hosts(&[1, 2]);
    let start = bench.now;
    let first = bench.served_by(peer(10));
    let second = bench.served_by(peer(11));
    assert_ne!(first, second);
    assert_eq!(bench.page.next_deadline(), Some(start + SECOND));

    bench.advance_to(start + SECOND / 2);
    bench.page.progress(peer(10), first, bench.now);
    // Progress reported for a host that is not its own keeps nothing.
    bench.page.progress(peer(11), first, bench.now);
    assert_eq!(bench.page.next_deadline(), Some(start + SECOND));

    bench.advance_to(start + SECOND);
    assert_eq!(
        bench.timeout(),
        [Event::SlotExpired {
            visitor: peer(11),
            host: second
        }]
    );
    assert_eq!(bench.page.next_deadline(), Some(start + 3 * SECOND / 2));

    bench.advance_to(start + 3 * SECOND / 2);
    assert_eq!(
        bench.timeout(),
        [Event::SlotExpired {
            visitor: peer(10),
            host: first
        }]
    );
}

#[test]
fn an_expired_slot_lets_a_waiting_request_through() {
    let mut bench = Bench::busy(Limits {
        queue_wait: 60 * SECOND,
        ..limits(1)
    });
    bench.advance_to(bench.now + SECOND);
    assert_eq!(
        bench.timeout(),
        [
            Event::SlotExpired {
                visitor: peer(10),
                host: peer(1)
            },
            routed(peer(11), peer(1), 2)
        ]
    );
}

#[test]
fn while_uploads_are_under_way_hosts_past_their_budget_wait_for_new_ones() {
    let mut bench = Bench::new(Limits {
        max_uploads_per_host: 1,
        queue_wait: 3600 * SECOND,
        slot_timeout: 3600 * SECOND,
    });
    bench.hosts(&[1, 2]);
    let start = bench.now;
    let first = bench.served_by(peer(10));
    bench.now += SECOND;
    let second = bench.served_by(peer(11));
    // The first host's visitor is served and leaves: it has a free slot
    // but has had its share of the window, and an upload is under way.
    bench.leave(Role::Want, peer(10));
    assert_eq!(bench.ask(peer(12)), queued(peer(12)));
    let back = start + RECENT_WINDOW + Duration::from_nanos(1);
    assert_eq!(bench.page.next_deadline(), Some(back));
    bench.advance_to(back);
    assert_eq!(bench.timeout(), [routed(peer(12), first, 3)]);
    // Once nothing is under way, a host past its budget serves again.
    bench.leave(Role::Want, peer(11));
    bench.leave(Role::Want, peer(12));
    assert!(matches!(
        bench.ask(peer(13)).as_slice(),
        [Event::Routed { .. }]
    ));
    assert_ne!(first, second);
}

#[test]
fn congested_hosts_are_passed_over_and_looked_at_again() {
    let mut bench = Bench::new(limits(2));
    bench.hosts(&[1, 2]);
    bench.congested.insert(peer(1));
    for visitor in 10..14 {
        assert_eq!(bench.served_by(peer(visitor)), peer(2));
        bench.leave(Role::Want, peer(visitor));
        bench.now += RECENT_WINDOW + SECOND;
    }
    bench.congested.insert(peer(2));
    let asked = bench.now;
    assert_eq!(bench.ask(peer(20)), queued(peer(20)));
    // An eighth of the shortest timeout (the 1 s slot timeout).
    let recheck = asked + Duration::from_millis(125);
    assert_eq!(bench.page.next_deadline(), Some(recheck));
    bench.advance_to(recheck);
    assert_eq!(bench.timeout(), [], "still congested");
    let again = recheck + Duration::from_millis(125);
    assert_eq!(bench.page.next_deadline(), Some(again));
    bench.congested.remove(&peer(1));
    bench.advance_to(again);
    assert_eq!(bench.timeout(), [routed(peer(20), peer(1), 5)]);
}

#[test]
fn overdue_requests_still_skip_congested_hosts() {
    let mut bench = Bench::busy(Limits {
        slot_timeout: 3600 * SECOND,
        ..limits(1)
    });
    let asked = bench.now;
    bench.congested.insert(peer(1));
    bench.advance_to(asked + 2 * SECOND);
    assert_eq!(bench.timeout(), []);
    bench.congested.clear();
    bench.advance_to(asked + 4 * SECOND);
    assert!(matches!(
        bench.timeout().as_slice(),
        [Event::Routed { token: 2, .. }]
    ));
}

#[test]
fn next_deadline_is_none_without_slots_or_queue() {
    let mut bench = Bench::new(limits(1));
    assert_eq!(bench.page.next_deadline(), None);
    bench.hosts(&[1]);
    let start = bench.now;
    bench.served_by(peer(10));
    assert_eq!(bench.page.next_deadline(), Some(start + SECOND));
    bench.now += SECOND / 4;
    bench.ask(peer(11));
    assert_eq!(
        bench.page.next_deadline(),
        Some(start + SECOND),
        "the slot expires before the queue wait"
    );
    bench.leave(Role::Want, peer(10));
    bench.leave(Role::Want, peer(11));
    assert_eq!(bench.page.next_deadline(), None);
}

#[test]
fn relayed_content_is_allowed_once_and_only_to_those_who_asked() {
    let mut bench = Bench::new(limits(1));
    bench.hosts(&[1, 2]);
    let host = bench.served_by(peer(10));
    let other = if host == peer(1) { peer(2) } else { peer(1) };
    assert_eq!(bench.page.relay_visitors(host), 1);
    assert_eq!(bench.page.relay_visitors(other), 0);
    assert_eq!(bench.page.take_relay_visitors(other), []);
    assert_eq!(bench.page.take_relay_visitors(host), [peer(10)]);
    assert_eq!(bench.page.take_relay_visitors(host), [], "once per request");

    // A refusal goes to the visitor only from the host it asked, once.
    bench.ask_excluding(peer(10), &[other]);
    assert!(!bench.page.relay_unavailable(other, peer(10)));
    assert!(bench.page.relay_unavailable(host, peer(10)));
    assert!(!bench.page.relay_unavailable(host, peer(10)));

    // A host that leaves may no longer relay; a visitor that left is
    // not relayed to.
    bench.ask_excluding(peer(10), &[other]);
    bench.leave(Role::Have, host);
    assert_eq!(bench.page.relay_visitors(host), 0);
    let served = bench.served_by(peer(11));
    bench.leave(Role::Want, peer(11));
    assert_eq!(bench.page.take_relay_visitors(served), []);
}

#[test]
fn coin_flip_picks_among_eligible_hosts_and_allows_their_relay() {
    let mut bench = Bench::new(limits(1));
    bench.hosts(&[1, 2, 3, 4]);
    let exclude: HashSet<PeerId> = [peer(2)].into();
    let mut picked_any = 0;
    for round in 0..200 {
        let mut random = {
            let mut n: u64 = round;
            move || {
                n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                n
            }
        };
        // Host 4 asks: it and host 2 are never picked.
        let flip = bench.page.coin_flip(peer(4), &exclude, &mut random);
        assert_eq!(flip.eligible, 2);
        assert!(flip.hosts.iter().all(|h| [peer(1), peer(3)].contains(h)));
        if !flip.hosts.is_empty() {
            picked_any += 1;
            assert_eq!(bench.page.relay_visitors(flip.hosts[0]), 1);
        }
    }
    assert!(picked_any > 100, "{picked_any}");
    assert_eq!(bench.page.next_deadline(), None, "no slot is taken");
}

#[test]
fn count_broadcasts_are_coalesced() {
    let interval = Duration::from_millis(20);
    let mut bench = Bench::new(limits(1));
    bench.hosts(&[1]);
    let now = bench.now;
    let one = VisitorsCount {
        count: 1,
        waiting: 0,
    };
    assert_eq!(bench.page.broadcast(now, interval), Broadcast::Send(one));
    assert_eq!(bench.page.broadcast(now, interval), Broadcast::Unchanged);
    // Back to what was sent: nothing to send.
    bench.join(Role::Want, peer(10));
    bench.leave(Role::Want, peer(10));
    assert_eq!(bench.page.broadcast(now, interval), Broadcast::Unchanged);
    bench.join(Role::Want, peer(10));
    let soon = now + interval - Duration::from_millis(1);
    assert_eq!(bench.page.broadcast(soon, interval), Broadcast::NotYet);
    let two = VisitorsCount {
        count: 1,
        waiting: 1,
    };
    assert_eq!(
        bench.page.broadcast(now + interval, interval),
        Broadcast::Send(two)
    );
}

#[test]
fn count_broadcasts_of_a_crowd_are_spaced_by_its_size() {
    let interval = Duration::from_millis(20);
    let mut bench = Bench::new(limits(1));
    for visitor in 0..1000 {
        bench.join(Role::Want, peer(visitor));
    }
    let now = bench.now;
    assert!(matches!(
        bench.page.broadcast(now, interval),
        Broadcast::Send(_)
    ));
    bench.leave(Role::Want, peer(0));
    let later = now + SECOND - Duration::from_millis(1);
    assert_eq!(bench.page.broadcast(later, interval), Broadcast::NotYet);
    assert!(matches!(
        bench.page.broadcast(now + SECOND, interval),
        Broadcast::Send(VisitorsCount {
            count: 0,
            waiting: 999
        })
    ));
}

#[test]
fn hosts_leaving_in_any_order_keep_the_rest_reachable() {
    let mut bench = Bench::new(limits(100));
    bench.hosts(&[1, 2, 3, 4]);
    bench.leave(Role::Have, peer(1));
    bench.leave(Role::Have, peer(3));
    let mut seen = HashSet::new();
    for visitor in 10..60 {
        seen.insert(bench.served_by(peer(visitor)));
    }
    assert_eq!(seen, [peer(2), peer(4)].into());
    assert!(!bench.page.is_empty());
    bench.leave(Role::Have, peer(2));
    bench.leave(Role::Have, peer(4));
    for visitor in 10..60 {
        bench.leave(Role::Want, peer(visitor));
    }
    assert!(bench.page.is_empty());
}

#[test]
fn hosts_stay_reachable_as_a_page_crosses_its_index_threshold_both_ways() {
    // Pages past a few hosts find them through a map, smaller ones by a
    // scan: every host must stay reachable across the switch, either way.
    let mut bench = Bench::new(limits(1000));
    let hosts: Vec<u128> = (1..=20).collect();
    bench.hosts(&hosts);
    // Leave out of order, down through the threshold and back up past it.
    for gone in [20, 1, 7, 13, 2, 19, 8, 14, 3, 18, 9, 15] {
        bench.leave(Role::Have, peer(gone));
    }
    bench.hosts(&[30, 31, 32]);
    bench.leave(Role::Have, peer(4));
    let expected: HashSet<PeerId> = [5, 6, 10, 11, 12, 16, 17, 30, 31, 32]
        .into_iter()
        .map(peer)
        .collect();
    assert_eq!(bench.page.counts().count, expected.len());
    let mut seen = HashSet::new();
    for visitor in 100..2100 {
        seen.insert(bench.served_by(peer(visitor)));
        bench.leave(Role::Want, peer(visitor));
    }
    assert_eq!(seen, expected);
    for host in expected {
        bench.leave(Role::Have, host);
    }
    assert!(bench.page.is_empty());
}

#[test]
fn a_timeout_always_moves_the_next_deadline_past_now() {
    // Otherwise the one timer would spin: whatever is due is acted on.
    let mut bench = Bench::new(Limits {
        max_uploads_per_host: 1,
        queue_wait: SECOND,
        slot_timeout: SECOND / 2,
    });
    let mut dice = 0x9e37_79b9_7f4a_7c15_u64;
    let mut roll = |n: u64| {
        dice ^= dice << 13;
        dice ^= dice >> 7;
        dice ^= dice << 17;
        dice % n
    };
    let mut timeouts = 0;
    for _ in 0..20_000 {
        let who = peer(u128::from(roll(12)));
        match roll(8) {
            0 => drop(bench.join(Role::Have, who)),
            1 => drop(bench.leave(Role::Have, who)),
            2 | 3 => drop(bench.ask(who)),
            4 => drop(bench.leave(Role::Want, who)),
            5 => {
                if !bench.congested.remove(&who) {
                    bench.congested.insert(who);
                }
            }
            _ => bench.now += Duration::from_millis(roll(3000)),
        }
        if bench.page.next_deadline().is_some_and(|at| at <= bench.now) {
            timeouts += 1;
            for event in bench.timeout() {
                if let Event::Routed { visitor, host, .. } = event {
                    assert_ne!(visitor, host);
                }
            }
            let next = bench.page.next_deadline();
            assert!(next.is_none_or(|at| at > bench.now), "{next:?}");
        }
    }
    assert!(timeouts > 1000, "{timeouts}");
}
