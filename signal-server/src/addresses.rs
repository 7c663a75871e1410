//! Who a client is and what one client address may do. The address is the
//! TCP peer's, or — only behind a proxy named by `--trusted-proxy` — the
//! one its `Forwarded` / `X-Forwarded-For` header gives. Per address the
//! server caps the connections held at once and, over all of its sockets,
//! messages, bytes, joins and relayed page bytes per second: the
//! per-socket limits alone let one machine open thousands of sockets.
//!
//! An IPv6 client is counted by its /64, since one host commonly holds a
//! whole /64 and could otherwise pick a fresh address per socket.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::http::HeaderMap;
use ephemeral_shared::protocol::Reason;
use ephemeral_shared::rate::RateLimiter;

/// An address range, `198.18.0.0/15` or `::1/128`; a bare address is one
/// host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an address range like 127.0.0.1/32 or ::1/128, got {0:?}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(s.chars().take(64).collect());
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| error())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| error())?,
            None => bits,
        };
        if prefix > bits {
            return Err(error());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports)
/// as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy,
/// in which case the nearest address in its forwarding headers that is
/// not itself a trusted proxy.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    // Proxies append, so the rightmost entries are the nearest hops and the
    // only ones a trusted proxy vouches for.
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("forwarded") {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((key, node)) = pair.trim().split_once('=') else {
                    continue;
                };
                if key.trim().eq_ignore_ascii_case("for")
                    && let Some(ip) = parse_node(node)
                {
                    hops.push(ip);
                }
            }
        }
    }
    if hops.is_empty() {
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else { continue };
            hops.extend(value.split(',').filter_map(parse_node));
        }
    }
    hops.into_iter()
        .rev()
        .map(canonical)
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// `192.0.2.1`, `"[2001:db8::1]:4711"`, `192.0.2.1:80`; obfuscated or
/// `unknown` nodes are none.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, _port) = node.rsplit_once(':')?;
    host.parse().ok()
}

/// What limits are counted under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// The per-address limits, from the config.
#[derive(Debug, Clone)]
pub struct AddressLimits {
    pub connections: usize,
    /// New TCP connections per second: reconnecting in a loop costs the
    /// server an HTTP parse and an upgrade each time.
    pub connections_per_second: u32,
    pub messages_per_second: u32,
    pub bytes_per_second: u64,
    pub joins_per_second: u32,
    pub relay_bytes_per_second: u64,
    /// The largest single message and page: a byte bucket must hold two, or
    /// one legitimate message could never pass.
    pub largest_message: u64,
    pub largest_page: u64,
}

/// Bursts are this many seconds of the sustained rate.
const BURST_SECONDS: u64 = 4;

/// Which kind of connection a [`Hold`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP connection still speaking HTTP.
    Http,
    /// An upgraded websocket.
    Websocket,
}

/// One client address: what it holds and what it has spent.
#[derive(Debug)]
pub struct Address {
    key: AddressKey,
    http: AtomicUsize,
    websockets: AtomicUsize,
    buckets: Mutex<Buckets>,
    epoch: Instant,
    /// When it last held or opened anything: an address is kept a little
    /// after its last connection closes, or connecting and closing in a
    /// loop would start each time from a full bucket.
    last_active: Mutex<Instant>,
}

#[derive(Debug)]
struct Buckets {
    connects: RateLimiter,
    messages: RateLimiter,
    bytes: RateLimiter,
    joins: RateLimiter,
    relay_bytes: RateLimiter,
}

impl Address {
    fn new(key: AddressKey, limits: &AddressLimits) -> Self {
        let zero = std::time::Duration::ZERO;
        let per_second = |rate: u64, floor: u64| {
            RateLimiter::with_units(rate, (rate * BURST_SECONDS).max(floor), zero)
        };
        Self {
            key,
            http: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
            buckets: Mutex::new(Buckets {
                connects: per_second(u64::from(limits.connections_per_second), 1),
                messages: per_second(u64::from(limits.messages_per_second), 1),
                bytes: per_second(limits.bytes_per_second, 2 * limits.largest_message),
                joins: per_second(u64::from(limits.joins_per_second), 1),
                relay_bytes: per_second(limits.relay_bytes_per_second, 2 * limits.largest_page),
            }),
            epoch: Instant::now(),
            last_active: Mutex::new(Instant::now()),
        }
    }

    /// Spends one new connection.
    fn admit_connect(&self) -> bool {
        let now = self.epoch.elapsed();
        self.buckets().connects.allow(now)
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds_nothing(&self) -> bool {
        self.http.load(Ordering::Relaxed) == 0 && self.websockets.load(Ordering::Relaxed) == 0
    }

    pub fn key(&self) -> AddressKey {
        self.key
    }

    fn buckets(&self) -> MutexGuard<'_, Buckets> {
        // Token counts stay valid whatever a panicking holder did.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spends one message and its bytes; refused when the address is past
    /// either rate, and then nothing is spent.
    pub fn admit_message(&self, bytes: usize) -> Result<(), Reason> {
        let now = self.epoch.elapsed();
        let mut buckets = self.buckets();
        if !buckets.messages.allow(now) {
            return Err(Reason::AddressRateLimited);
        }
        if !buckets.bytes.allow_n(now, bytes as u64) {
            return Err(Reason::AddressRateLimited);
        }
        Ok(())
    }

    /// Spends one join.
    pub fn admit_join(&self) -> bool {
        let now = self.epoch.elapsed();
        self.buckets().joins.allow(now)
    }

    /// Spends `bytes` of relayed page.
    pub fn admit_relay(&self, bytes: u64) -> bool {
        let now = self.epoch.elapsed();
        self.buckets().relay_bytes.allow_n(now, bytes)
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Http => &self.http,
            Kind::Websocket => &self.websockets,
        }
    }
}

/// Every address with a connection open.
#[derive(Debug)]
pub struct Addresses {
    map: Mutex<HashMap<AddressKey, Arc<Address>>>,
    limits: AddressLimits,
}

impl Addresses {
    pub fn new(limits: AddressLimits) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::default(),
            limits,
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<AddressKey, Arc<Address>>> {
        // Every update is one insert, remove or counter step.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection of `kind` for `ip`; `None` when the
    /// address already holds its limit. `capped: false` counts without the
    /// cap (a trusted proxy's own TCP connections carry many clients).
    pub fn hold(&self, ip: IpAddr, kind: Kind, capped: bool) -> Option<Hold> {
        let key = AddressKey::of(ip);
        let mut map = self.map();
        let address = map
            .entry(key)
            .or_insert_with(|| Arc::new(Address::new(key, &self.limits)))
            .clone();
        address.touch();
        let counter = address.counter(kind);
        if capped && counter.load(Ordering::Relaxed) >= self.limits.connections {
            return None;
        }
        if capped && kind == Kind::Http && !address.admit_connect() {
            return None;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        if map.len() > SWEEP_ABOVE {
            sweep(&mut map, Instant::now());
        }
        Some(Hold { address, kind })
    }

    /// Forgets addresses that hold nothing and were idle long enough for
    /// their buckets to be full again.
    pub fn sweep(&self, now: Instant) {
        sweep(&mut self.map(), now);
    }

    /// Addresses known now: those with a connection open, and those that
    /// had one within the last few seconds.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection counted against its address; dropping it uncounts it
/// (the address is forgotten a few seconds later, see [`Addresses::sweep`]).
#[derive(Debug)]
pub struct Hold {
    address: Arc<Address>,
    kind: Kind,
}

impl Hold {
    pub fn address(&self) -> &Arc<Address> {
        &self.address
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.address
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
        self.address.touch();
    }
}

/// The map is swept on insert once it holds more addresses than this, so
/// memory stays bounded by the addresses active in the last few seconds.
const SWEEP_ABOVE: usize = 1024;

fn sweep(map: &mut HashMap<AddressKey, Arc<Address>>, now: Instant) {
    let idle_for = std::time::Duration::from_secs(BURST_SECONDS);
    map.retain(|_, address| {
        !address.holds_nothing() || now.saturating_duration_since(address.idle_since()) < idle_for
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(connections: usize) -> AddressLimits {
        AddressLimits {
            connections,
            connections_per_second: 1000,
            messages_per_second: 10,
            bytes_per_second: 1000,
            joins_per_second: 1,
            relay_bytes_per_second: 1000,
            largest_message: 100,
            largest_page: 100,
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(net.contains(ip("198.19.255.1")));
        assert!(!net.contains(ip("198.20.0.1")));
        assert!(net.contains(ip("::ffff:198.18.0.9")), "v4-mapped v6");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("127.0.0.1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
        assert_eq!(net.to_string(), "198.18.0.0/15");
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("198.18.0.5"), &headers, &trusted),
            ip("198.18.0.5")
        );
        // Through a trusted proxy: the nearest hop it vouches for, not a
        // leftmost entry the client could have written itself.
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
        headers.insert(
            "forwarded",
            HeaderValue::from_static("for=\"[2001:db8::1]:4711\";proto=https"),
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers, &trusted),
            ip("2001:db8::1"),
            "Forwarded wins over X-Forwarded-For"
        );
        // A trusted proxy that names nobody is the client itself.
        assert_eq!(
            client_address(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2:aaaa::1")),
            AddressKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(ip("::ffff:127.0.0.1")).to_string(),
            "127.0.0.1"
        );
    }

    #[test]
    fn connections_are_capped_per_address_and_forgotten_when_gone() {
        let table = Addresses::new(limits(2));
        let a = ip("127.0.0.2");
        let first = table.hold(a, Kind::Websocket, true).unwrap();
        let second = table.hold(a, Kind::Websocket, true).unwrap();
        assert!(table.hold(a, Kind::Websocket, true).is_none());
        assert!(table.hold(ip("127.0.0.3"), Kind::Websocket, true).is_some());
        let http = table.hold(a, Kind::Http, true).unwrap();
        assert!(table.hold(a, Kind::Websocket, false).is_some(), "uncapped");
        drop((first, second, http));
        table.sweep(Instant::now());
        assert!(
            !table.is_empty(),
            "kept a few seconds after its last connection"
        );
        table.sweep(Instant::now() + std::time::Duration::from_secs(BURST_SECONDS));
        assert!(table.is_empty(), "then forgotten");
    }

    #[test]
    fn reconnecting_in_a_loop_is_refused_past_the_connection_rate() {
        let table = Addresses::new(AddressLimits {
            connections_per_second: 5,
            ..limits(100)
        });
        let address = ip("127.0.0.9");
        // A burst of four seconds' worth, one at a time, each closed at once.
        let opened = (0..50)
            .filter(|_| table.hold(address, Kind::Http, true).is_some())
            .count();
        assert_eq!(opened, 20);
        assert!(table.hold(ip("127.0.0.10"), Kind::Http, true).is_some());
        assert!(
            table.hold(address, Kind::Http, false).is_some(),
            "a trusted proxy is not rate-limited"
        );
    }

    #[test]
    fn an_address_shares_its_rates_over_its_sockets() {
        let table = Addresses::new(limits(10));
        let one = table.hold(ip("127.0.0.2"), Kind::Websocket, true).unwrap();
        let two = table.hold(ip("127.0.0.2"), Kind::Websocket, true).unwrap();
        // 10/s with a burst of 40, shared.
        let allowed = (0..100)
            .filter(|i| {
                let socket = if i % 2 == 0 { &one } else { &two };
                socket.address().admit_message(1).is_ok()
            })
            .count();
        assert_eq!(allowed, 40);
        assert!(one.address().admit_join());
        assert!((0..10).filter(|_| two.address().admit_join()).count() <= 3);
        assert!(!one.address().admit_relay(5000));
    }
}
