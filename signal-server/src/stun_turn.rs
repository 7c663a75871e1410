//! The server's own STUN and TURN service, on one UDP port beside the HTTP
//! port, so that peers behind NAT routers connect to each other with no
//! configuration from the operator: STUN tells a peer its public address
//! (enough between endpoint-independent NATs), TURN relays for peers that
//! cannot reach each other directly (symmetric NATs).
//!
//! The protocol is the `turn` crate's (webrtc-rs, the Rust port of Pion's
//! TURN server: RFC 5389 Binding, RFC 5766 allocations over UDP), chosen
//! because it runs on tokio like the rest of the server and lets us supply
//! both the authentication and the relay sockets. Those two hooks are where
//! this module keeps TURN from becoming an open proxy:
//!
//! - credentials are minted per websocket session (TURN REST API scheme:
//!   username `expiry:peer_id`, password base64(HMAC-SHA1(secret,
//!   username))) and expire; wrong or expired ones are refused;
//! - one session holds a bounded number of allocations at once;
//! - every relay socket is wrapped: packets to or from peers in loopback,
//!   private, link-local, multicast and unspecified ranges are dropped
//!   (unless `--turn-allow-peer` opens a range), and an allocation stops
//!   relaying past its byte quota.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use ephemeral_shared::protocol::{IceServer, PeerId, Reason};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use turn::allocation::AllocationInfo;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use util::Conn;

use crate::addresses::Cidr;
use crate::metrics::Metrics;

/// The realm every credential is for.
const REALM: &str = "ephemeral";

/// What the service needs from the config.
#[derive(Debug, Clone)]
pub struct StunTurnConfig {
    /// UDP address to listen on (the HTTP bind address's IP, this port).
    pub listen: SocketAddr,
    /// Run TURN too; `false` answers STUN Binding requests only.
    pub turn: bool,
    /// Secret credentials are signed with; shared by nodes of a cluster.
    pub secret: String,
    /// The address relayed traffic leaves from, as peers see it.
    pub relay_ip: IpAddr,
    /// Relay ports are picked in this range (both ends included).
    pub relay_ports: (u16, u16),
    /// How long minted credentials stay valid.
    pub credential_ttl: Duration,
    /// Allocations one session may hold at once.
    pub max_allocations_per_session: usize,
    /// Bytes one allocation may relay, both directions.
    pub allocation_quota_bytes: u64,
    /// Peer ranges allowed although private or loopback.
    pub allowed_peers: Vec<Cidr>,
}

/// The running service.
pub struct StunTurn {
    server: Server,
    local_addr: SocketAddr,
    config: StunTurnConfig,
}

impl StunTurn {
    /// Binds the UDP port and serves in the background.
    pub async fn start(config: StunTurnConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen for STUN/TURN on UDP {}", config.listen))?;
        let local_addr = socket.local_addr().context("UDP socket has no address")?;
        let sessions = Arc::new(Sessions::default());
        let (closed_tx, closed_rx) = mpsc::channel(64);
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: Box::new(GuardedRelays {
                    config: config.clone(),
                    metrics: metrics.clone(),
                }),
            }],
            realm: REALM.into(),
            auth_handler: Arc::new(SessionAuth {
                secret: config.secret.clone(),
                max_allocations: config.max_allocations_per_session,
                sessions: sessions.clone(),
                metrics: metrics.clone(),
            }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: Some(closed_tx),
        })
        .await
        .context("cannot start the TURN server")?;
        tokio::spawn(forget_closed_allocations(closed_rx, sessions, metrics));
        tracing::info!(%local_addr, turn = config.turn, "STUN/TURN listening");
        Ok(Self {
            server,
            local_addr,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The STUN and TURN servers a session is handed, at `host` (as the
    /// client reached us), with credentials of its own.
    pub fn ice_servers_for(&self, host: &str, peer: PeerId) -> Vec<IceServer> {
        self.ice_servers_until(host, peer, self.credential_expiry())
    }

    /// When TURN credentials minted now expire, in Unix seconds.
    pub fn credential_expiry(&self) -> u64 {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.config.credential_ttl;
        expiry.as_secs()
    }

    /// [`StunTurn::ice_servers_for`] with credentials that expire at
    /// `expiry` (Unix seconds): the same list each time for one session.
    pub fn ice_servers_until(&self, host: &str, peer: PeerId, expiry: u64) -> Vec<IceServer> {
        let port = self.local_addr.port();
        let mut servers = vec![IceServer {
            urls: vec![format!("stun:{host}:{port}")],
            username: None,
            credential: None,
        }];
        if self.config.turn {
            let username = format!("{expiry}:{peer}");
            let credential = password(&self.config.secret, &username);
            servers.push(IceServer {
                urls: vec![format!("turn:{host}:{port}?transport=udp")],
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }

    pub async fn close(&self) {
        if let Err(error) = self.server.close().await {
            tracing::debug!(%error, "TURN server did not close cleanly");
        }
    }
}

/// The TURN REST API password of `username`.
fn password(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    BASE64_STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// A username's expiry and session, if it is one we could have minted.
fn parse_username(username: &str) -> Option<(u64, PeerId)> {
    let (expiry, peer) = username.split_once(':')?;
    Some((expiry.parse().ok()?, peer.parse().ok()?))
}

/// Which client addresses each session's allocations come from: one
/// allocation per address (its 5-tuple), so their number is the session's
/// allocation count.
#[derive(Debug, Default)]
struct Sessions {
    allocations: Mutex<HashMap<String, HashSet<SocketAddr>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashSet<SocketAddr>>> {
        // Each update is one insert or remove.
        self.allocations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SessionAuth {
    secret: String,
    max_allocations: usize,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
}

impl AuthHandler for SessionAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let refuse = |reason: Reason, detail: &str| {
            self.metrics.reject(reason);
            tracing::debug!(%src_addr, detail, "TURN request refused");
            Err(turn::Error::Other(detail.into()))
        };
        let Some((expiry, _peer)) = parse_username(username) else {
            return refuse(Reason::TurnCredentials, "not a username we mint");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if expiry < now {
            return refuse(Reason::TurnExpired, "expired credentials");
        }
        {
            let mut sessions = self.sessions.lock();
            let addresses = sessions.entry(username.to_string()).or_default();
            if !addresses.contains(&src_addr) {
                if addresses.len() >= self.max_allocations {
                    drop(sessions);
                    return refuse(Reason::TurnAllocations, "too many allocations");
                }
                addresses.insert(src_addr);
            }
        }
        // A wrong password fails the message integrity check against this
        // key: the crate refuses it (401) without calling us again.
        Ok(generate_auth_key(
            username,
            realm,
            &password(&self.secret, username),
        ))
    }
}

async fn forget_closed_allocations(
    mut closed: mpsc::Receiver<AllocationInfo>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
) {
    while let Some(info) = closed.recv().await {
        metrics.turn_allocations.fetch_sub(1, Ordering::Relaxed);
        let mut sessions = sessions.lock();
        if let Some(addresses) = sessions.get_mut(&info.username) {
            addresses.remove(&info.five_tuple.src_addr);
            if addresses.is_empty() {
                sessions.remove(&info.username);
            }
        }
    }
}

/// Makes each allocation's relay socket, wrapped in a [`GuardedRelay`].
struct GuardedRelays {
    config: StunTurnConfig,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl RelayAddressGenerator for GuardedRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        _use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if !self.config.turn {
            self.metrics.reject(Reason::TurnDisabled);
            return Err(turn::Error::Other("TURN is off on this server".into()));
        }
        let (min, max) = self.config.relay_ports;
        let bind_ip = self.config.listen.ip();
        let socket = if requested_port != 0 {
            UdpSocket::bind((bind_ip, requested_port)).await.ok()
        } else {
            let mut bound = None;
            for _ in 0..32 {
                let port = min + rand::random::<u16>() % (max - min).saturating_add(1).max(1);
                if let Ok(socket) = UdpSocket::bind((bind_ip, port)).await {
                    bound = Some(socket);
                    break;
                }
            }
            bound
        };
        let Some(socket) = socket else {
            return Err(turn::Error::Other("no free relay port".into()));
        };
        let mut relay_addr = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        relay_addr.set_ip(self.config.relay_ip);
        self.metrics
            .turn_allocations
            .fetch_add(1, Ordering::Relaxed);
        let relay = GuardedRelay {
            socket,
            allowed_peers: self.config.allowed_peers.clone(),
            quota: self.config.allocation_quota_bytes,
            relayed: AtomicU64::new(0),
            metrics: self.metrics.clone(),
        };
        Ok((Arc::new(relay), relay_addr))
    }
}

/// Whether TURN may relay to or from `ip`: public unicast addresses only,
/// unless a range is opened. Relaying into private ranges would let anyone
/// reach the server's own network through it.
fn peer_allowed(ip: IpAddr, allowed: &[Cidr]) -> bool {
    if allowed.iter().any(|cidr| cidr.contains(ip)) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT: private in practice.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => peer_allowed(IpAddr::V4(v4), allowed),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_multicast()
                    || v6.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// One allocation's relay socket, refusing forbidden peers and traffic past
/// the allocation's quota.
struct GuardedRelay {
    socket: UdpSocket,
    allowed_peers: Vec<Cidr>,
    quota: u64,
    relayed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl GuardedRelay {
    /// Counts `len` relayed bytes; whether they fit the quota.
    fn spend(&self, len: usize) -> bool {
        let spent = self.relayed.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if spent > self.quota {
            self.metrics.reject(Reason::TurnQuota);
            return false;
        }
        self.metrics
            .turn_relayed_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        true
    }
}

#[async_trait]
impl Conn for GuardedRelay {
    async fn connect(&self, addr: SocketAddr) -> util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> util::Result<(usize, SocketAddr)> {
        loop {
            let (len, from) = self.socket.recv_from(buf).await?;
            if !peer_allowed(from.ip(), &self.allowed_peers) {
                self.metrics.reject(Reason::TurnPeerAddress);
                continue;
            }
            if self.spend(len) {
                return Ok((len, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        if !peer_allowed(target.ip(), &self.allowed_peers) {
            self.metrics.reject(Reason::TurnPeerAddress);
            // Dropped, as a router drops what it may not forward; the
            // allocation itself stays usable for allowed peers.
            return Ok(buf.len());
        }
        if !self.spend(buf.len()) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The address relayed traffic leaves from when the operator names none:
/// the listen address, or — when that is unspecified — the first address of
/// an interface that is up and not loopback (loopback if there is none).
pub fn default_relay_ip(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let found = util::ifaces::ifaces().ok().and_then(|interfaces| {
        interfaces
            .into_iter()
            .filter_map(|interface| interface.addr.map(|addr| addr.ip()))
            .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
    });
    found.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_follow_the_turn_rest_api() {
        // HMAC-SHA1("secret", "1700000000:peer") in base64, as coturn's
        // use-auth-secret computes it.
        let expected = {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret");
            BASE64_STANDARD.encode(ring::hmac::sign(&key, b"1700000000:peer").as_ref())
        };
        assert_eq!(password("secret", "1700000000:peer"), expected);
        assert_eq!(expected.len(), 28, "20 bytes in base64");
        assert_ne!(password("other", "1700000000:peer"), expected);
    }

    #[test]
    fn usernames_name_an_expiry_and_a_session() {
        let peer = PeerId::from_random(7);
        let (expiry, parsed) = parse_username(&format!("1700000000:{peer}")).unwrap();
        assert_eq!((expiry, parsed), (1_700_000_000, peer));
        assert!(parse_username("1700000000").is_none());
        assert!(parse_username("soon:00000000000000000000000000000007").is_none());
    }

    #[test]
    fn only_public_peers_unless_a_range_is_opened() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!peer_allowed(ip(private), &[]), "{private}");
        }
        for public in ["198.18.0.1", "203.0.113.7", "2001:db8::1"] {
            assert!(peer_allowed(ip(public), &[]), "{public}");
        }
        let loopback: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(peer_allowed(ip("127.0.0.1"), &[loopback]));
    }
}
