//! The server's settings: one struct, parsed from flags and `EPHEMERAL_*`
//! environment variables, with a `Default` that tests and embedders use.
//! Every limit is explicit, with its unit and why it exists.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

pub use crate::addresses::Cidr;
use crate::registry::queued_page_bytes;
use ephemeral_shared::protocol::IceServer;
use ephemeral_shared::selection::Selection;

const DEFAULT_BIND: &str = "127.0.0.1:4000";
const MIB: usize = 1024 * 1024;

/// Ephemeral's signaling server: pages live in visitors' browsers; this
/// routes requests and WebRTC signals between them and stores no page.
#[derive(Debug, Clone, Parser)]
#[command(name = "signal-server", version, about)]
pub struct Config {
    /// Address and port to listen on (HTTP and websocket).
    #[arg(long, env = "EPHEMERAL_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Largest page, in bytes, accepted for relay over the websocket.
    #[arg(long, env = "EPHEMERAL_MAX_PAGE_BYTES", default_value_t = MIB)]
    pub max_page_bytes: usize,

    /// Largest websocket message, in bytes. Must hold a relayed page as a
    /// JSON string, which escaping can make larger than the page.
    #[arg(long, env = "EPHEMERAL_MAX_MESSAGE_BYTES", default_value_t = 2 * MIB)]
    pub max_message_bytes: usize,

    /// Largest websocket frame, in bytes. Browsers send a message as one
    /// frame, so this matches the message limit by default.
    #[arg(long, env = "EPHEMERAL_MAX_FRAME_BYTES", default_value_t = 2 * MIB)]
    pub max_frame_bytes: usize,

    /// Initial read buffer per connection, in bytes, kept for the
    /// connection's life. The library default (128 KiB) would cost 6 GiB
    /// at 50k idle connections. Small is cheap: the socket is read in
    /// large chunks underneath (`lean_io`), and the buffer grows to fit a
    /// larger message when one comes.
    #[arg(long, env = "EPHEMERAL_READ_BUFFER_BYTES", default_value_t = 256)]
    pub read_buffer_bytes: usize,

    /// Bytes buffered per connection before a write goes to the socket; 0
    /// writes each message at once, which keeps idle connections small and
    /// signals fast.
    #[arg(long, env = "EPHEMERAL_WRITE_BUFFER_BYTES", default_value_t = 0)]
    pub write_buffer_bytes: usize,

    /// Topics one socket may be joined to at once.
    #[arg(long, env = "EPHEMERAL_MAX_TOPICS", default_value_t = 100)]
    pub max_topics_per_socket: usize,

    /// Messages per second one socket may send, sustained.
    #[arg(long, env = "EPHEMERAL_MESSAGES_PER_SECOND", default_value_t = 100)]
    pub messages_per_second: u32,

    /// Messages one socket may send in a burst: a host answering many
    /// visitors at once trickles a dozen candidates to each.
    #[arg(long, env = "EPHEMERAL_MESSAGE_BURST", default_value_t = 400)]
    pub message_burst: u32,

    /// Seconds without any message (heartbeats included) before a socket
    /// is closed. Phoenix clients heartbeat every 30 s.
    #[arg(long, env = "EPHEMERAL_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Bytes queued for one socket (replies, pushes, relayed pages) before
    /// it counts as too slow and is closed (1008), so a reader that stops
    /// reading holds at most this much server memory. At least one relayed
    /// page must fit: all its parts are queued at once, a little more than
    /// `--max-message-bytes` with the frames around them.
    #[arg(long, env = "EPHEMERAL_OUTBOUND_QUEUE_BYTES", default_value_t = 4 * MIB)]
    pub outbound_queue_bytes: usize,

    /// Seconds one write to a socket may take before the socket counts as
    /// stalled and is closed (1008). A stalled socket is no longer given
    /// visitors as soon as half its queue is full.
    #[arg(long, env = "EPHEMERAL_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub write_timeout_secs: u64,

    /// Largest `signal` message, in bytes. An offer with every candidate is
    /// a few kilobytes; the cap keeps one client from making the server
    /// carry megabytes to another.
    #[arg(long, env = "EPHEMERAL_MAX_SIGNAL_BYTES", default_value_t = 64 * 1024)]
    pub max_signal_bytes: usize,

    /// Largest message of every other event but `content` (joins, leaves,
    /// heartbeats, requests), in bytes.
    #[arg(long, env = "EPHEMERAL_MAX_CONTROL_BYTES", default_value_t = 8 * 1024)]
    pub max_control_bytes: usize,

    /// Websockets and HTTP connections one client address may hold at
    /// once (an IPv6 client's address is its /64). Past it, new ones are
    /// refused, so one address cannot take every file descriptor.
    #[arg(
        long,
        env = "EPHEMERAL_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,

    /// New TCP connections per second from one address (bursts of four
    /// seconds' worth): reconnecting in a loop is refused at accept, before
    /// any HTTP is parsed.
    #[arg(
        long,
        env = "EPHEMERAL_CONNECTIONS_PER_SECOND_PER_ADDRESS",
        default_value_t = 20
    )]
    pub connections_per_second_per_address: u32,

    /// Websocket messages per second from one address, over all its
    /// sockets (bursts of four seconds' worth).
    #[arg(
        long,
        env = "EPHEMERAL_MESSAGES_PER_SECOND_PER_ADDRESS",
        default_value_t = 1000
    )]
    pub messages_per_second_per_address: u32,

    /// Websocket bytes per second received from one address (bursts of
    /// four seconds' worth, and at least two of the largest messages).
    #[arg(long, env = "EPHEMERAL_BYTES_PER_SECOND_PER_ADDRESS", default_value_t = 8 * MIB)]
    pub bytes_per_second_per_address: usize,

    /// Topic joins per second from one address (bursts of four seconds'
    /// worth).
    #[arg(
        long,
        env = "EPHEMERAL_JOINS_PER_SECOND_PER_ADDRESS",
        default_value_t = 50
    )]
    pub joins_per_second_per_address: u32,

    /// Page bytes per second one address may have relayed to visitors
    /// (bursts of four seconds' worth, and at least two of the largest
    /// pages).
    #[arg(long, env = "EPHEMERAL_RELAY_BYTES_PER_SECOND_PER_ADDRESS", default_value_t = 4 * MIB)]
    pub relay_bytes_per_second_per_address: usize,

    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers name the
    /// client (repeatable CIDR, e.g. `127.0.0.1/32`). From anyone else
    /// those headers are ignored: the TCP peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "EPHEMERAL_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Seconds a client has to send a request's headers, and that an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "EPHEMERAL_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Milliseconds an upload slot may be held without progress (a signal
    /// from the visitor to its host) before it is freed for the next
    /// visitor, so a visitor that asks and never answers cannot hold a
    /// page's hosts.
    #[arg(long, env = "EPHEMERAL_SLOT_TIMEOUT_MS", default_value_t = 1000)]
    pub slot_timeout_ms: u64,

    /// Milliseconds over which host-count changes of a page are coalesced
    /// into one `visitors_count` broadcast: under churn a page with n hosts
    /// costs n messages per interval, not n per join.
    #[arg(long, env = "EPHEMERAL_COUNT_INTERVAL_MS", default_value_t = 20)]
    pub count_interval_ms: u64,

    /// Visitors one host is asked to serve at once, and — while a page has
    /// uploads under way — per 10 s. Further requests wait for a free slot,
    /// which comes when a visitor has the page (it leaves `want:`) or a new
    /// host joins (often that visitor). So a crowd is served by the swarm
    /// it grows, each host serving a few, not all by the first host.
    #[arg(long, env = "EPHEMERAL_MAX_UPLOADS_PER_HOST", default_value_t = 2)]
    pub max_uploads_per_host: usize,

    /// Milliseconds a request waits for a free slot before it goes to a
    /// busy host anyway, so hosts whose visitors never leave cannot stall
    /// a page.
    #[arg(long, env = "EPHEMERAL_QUEUE_WAIT_MS", default_value_t = 2000)]
    pub queue_wait_ms: u64,

    /// Most websocket connections at once; further upgrades get 503.
    #[arg(long, env = "EPHEMERAL_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// How a request's host is chosen: `uniform` (exactly one, each of n
    /// hosts serves 1/n) or `coin-flip` (the seed app's rule, to compare).
    #[arg(long, env = "EPHEMERAL_SELECTION", default_value = "uniform")]
    pub selection: Selection,

    /// Origins allowed to open a websocket (repeatable, e.g.
    /// `https://pages.example`). None given: any origin. Browsers always
    /// send `Origin`; a request without one (a native client) is allowed,
    /// since any non-browser client could forge the header anyway.
    #[arg(
        long = "allowed-origin",
        env = "EPHEMERAL_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// STUN/TURN server handed to every client (repeatable):
    /// `stun:host:port` or `turn:user:pass@host:port`.
    #[arg(
        long = "ice-server",
        env = "EPHEMERAL_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<IceServer>,

    /// UDP port of the built-in STUN/TURN server, on the `--bind` IP.
    /// Clients are handed it with per-session credentials.
    #[arg(long, env = "EPHEMERAL_TURN_PORT", default_value_t = 3478)]
    pub turn_port: u16,

    /// Answer STUN only: no TURN relay (peers behind symmetric NATs then
    /// fall back to the websocket relay).
    #[arg(long, env = "EPHEMERAL_NO_TURN")]
    pub no_turn: bool,

    /// No STUN or TURN at all (for a server behind an operator's own).
    #[arg(long, env = "EPHEMERAL_NO_STUN")]
    pub no_stun: bool,

    /// Secret TURN credentials are signed with. Random per process unless
    /// given; nodes of one site share it.
    #[arg(long, env = "EPHEMERAL_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Host name put in the STUN/TURN URLs clients get. Default: the host
    /// the client used to reach this server (its `Host` header).
    #[arg(long, env = "EPHEMERAL_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// Public address relayed traffic is announced from, for a server
    /// behind 1:1 NAT (most clouds). Default: the bind address, or the
    /// first non-loopback interface address when binding all interfaces.
    #[arg(long, env = "EPHEMERAL_PUBLIC_IP")]
    pub public_ip: Option<std::net::IpAddr>,

    /// UDP ports TURN relays from, `MIN-MAX` (open them in the firewall).
    #[arg(long, env = "EPHEMERAL_TURN_RELAY_PORTS", default_value = "49152-65535", value_parser = parse_port_range)]
    pub turn_relay_ports: (u16, u16),

    /// Peer ranges TURN may relay to although they are private or loopback
    /// (repeatable CIDR; e.g. `127.0.0.0/8` for tests on one machine).
    #[arg(
        long = "turn-allow-peer",
        env = "EPHEMERAL_TURN_ALLOW_PEERS",
        value_delimiter = ','
    )]
    pub turn_allow_peers: Vec<Cidr>,

    /// Seconds a session's TURN credentials stay valid.
    #[arg(
        long,
        env = "EPHEMERAL_TURN_CREDENTIAL_TTL_SECS",
        default_value_t = 3600
    )]
    pub turn_credential_ttl_secs: u64,

    /// TURN allocations one websocket session may hold at once.
    #[arg(long, env = "EPHEMERAL_TURN_MAX_ALLOCATIONS", default_value_t = 8)]
    pub turn_max_allocations: usize,

    /// Bytes one TURN allocation may relay, both directions (a page over
    /// WebRTC is at most a few tens of MiB).
    #[arg(long, env = "EPHEMERAL_TURN_QUOTA_BYTES", default_value_t = 64 * MIB as u64)]
    pub turn_quota_bytes: u64,

    /// Token `/metrics` requires as `Authorization: Bearer <token>`. None
    /// given: `/metrics` is open (bind it elsewhere with `--metrics-bind`).
    #[arg(long, env = "EPHEMERAL_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Serve `/metrics` on this address instead of the public one (e.g.
    /// `127.0.0.1:9100` for a local scraper).
    #[arg(long, env = "EPHEMERAL_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Join the cluster of every node using this Redis
    /// (`redis://host:port/`): pages hosted on any node are fetched from
    /// any other, with the same guarantees (docs/cluster.md). Not given: a
    /// single process, nothing shared.
    #[arg(long = "redis", env = "EPHEMERAL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Milliseconds between a cluster node's heartbeats in Redis, which is
    /// also how often it looks for nodes that came or went.
    #[arg(long, env = "EPHEMERAL_CLUSTER_HEARTBEAT_MS", default_value_t = 500)]
    pub cluster_heartbeat_ms: u64,

    /// Milliseconds after its last heartbeat that a node counts as gone:
    /// its sockets leave every page, and its pages move to other nodes.
    #[arg(long, env = "EPHEMERAL_CLUSTER_NODE_TTL_MS", default_value_t = 2000)]
    pub cluster_node_ttl_ms: u64,

    /// Bytes of messages for other nodes queued while Redis is slow, before
    /// further ones are dropped (and the nodes resynchronised).
    #[arg(long, env = "EPHEMERAL_CLUSTER_QUEUE_BYTES", default_value_t = 64 * MIB)]
    pub cluster_queue_bytes: usize,

    /// Log filter, e.g. `info` or `signal_server=debug`.
    #[arg(long, env = "EPHEMERAL_LOG", default_value = "info")]
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 4000)),
            max_page_bytes: MIB,
            max_message_bytes: 2 * MIB,
            max_frame_bytes: 2 * MIB,
            read_buffer_bytes: 256,
            write_buffer_bytes: 0,
            max_topics_per_socket: 100,
            messages_per_second: 100,
            message_burst: 400,
            idle_timeout_secs: 60,
            outbound_queue_bytes: 4 * MIB,
            write_timeout_secs: 10,
            max_signal_bytes: 64 * 1024,
            max_control_bytes: 8 * 1024,
            max_connections_per_address: 256,
            connections_per_second_per_address: 20,
            messages_per_second_per_address: 1000,
            bytes_per_second_per_address: 8 * MIB,
            joins_per_second_per_address: 50,
            relay_bytes_per_second_per_address: 4 * MIB,
            trusted_proxies: Vec::new(),
            http_header_timeout_secs: 10,
            slot_timeout_ms: 1000,
            count_interval_ms: 20,
            max_uploads_per_host: 2,
            queue_wait_ms: 2000,
            max_connections: 100_000,
            selection: Selection::Uniform,
            allowed_origins: Vec::new(),
            ice_servers: Vec::new(),
            turn_port: 3478,
            no_turn: false,
            no_stun: false,
            turn_secret: None,
            public_host: None,
            public_ip: None,
            turn_relay_ports: (49152, 65535),
            turn_allow_peers: Vec::new(),
            turn_credential_ttl_secs: 3600,
            turn_max_allocations: 8,
            turn_quota_bytes: 64 * MIB as u64,
            metrics_token: None,
            metrics_bind: None,
            redis_url: None,
            cluster_heartbeat_ms: 500,
            cluster_node_ttl_ms: 2000,
            cluster_queue_bytes: 64 * MIB,
            log: "info".into(),
        }
    }
}

/// `MIN-MAX`, both ends included.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let error = || format!("expected a port range like 49152-65535, got {text:?}");
    let (min, max) = text.split_once('-').ok_or_else(error)?;
    let min: u16 = min.trim().parse().map_err(|_| error())?;
    let max: u16 = max.trim().parse().map_err(|_| error())?;
    if min == 0 || max < min {
        return Err(error());
    }
    Ok((min, max))
}

impl Config {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.queue_wait_ms)
    }

    pub fn count_interval(&self) -> Duration {
        Duration::from_millis(self.count_interval_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_secs)
    }

    pub fn slot_timeout(&self) -> Duration {
        Duration::from_millis(self.slot_timeout_ms)
    }

    pub fn cluster_heartbeat(&self) -> Duration {
        Duration::from_millis(self.cluster_heartbeat_ms)
    }

    pub fn cluster_node_ttl(&self) -> Duration {
        Duration::from_millis(self.cluster_node_ttl_ms)
    }

    /// Settings that make no sense together, said in words.
    pub fn validate(&self) -> Result<(), String> {
        let relayed = queued_page_bytes(self.max_message_bytes, self.max_page_bytes);
        if self.outbound_queue_bytes < relayed {
            return Err(format!(
                "--outbound-queue-bytes ({}) must hold the largest relayed page in \
                 its parts, {relayed} bytes with --max-message-bytes ({}) and \
                 --max-page-bytes ({})",
                self.outbound_queue_bytes, self.max_message_bytes, self.max_page_bytes
            ));
        }
        if self.max_page_bytes > self.max_message_bytes {
            return Err(format!(
                "--max-page-bytes ({}) cannot exceed --max-message-bytes ({}): \
                 a host sends a relayed page in one message",
                self.max_page_bytes, self.max_message_bytes
            ));
        }
        if self.redis_url.is_some() {
            if self.selection == Selection::CoinFlip {
                return Err(
                    "--selection coin-flip is a single-process comparison mode; \
                     it cannot be used with --redis"
                        .into(),
                );
            }
            if self.cluster_heartbeat_ms == 0
                || self.cluster_node_ttl_ms < 2 * self.cluster_heartbeat_ms
            {
                return Err(format!(
                    "--cluster-node-ttl-ms ({}) must be at least twice \
                     --cluster-heartbeat-ms ({}), which must not be 0: \
                     one late heartbeat must not make a node count as gone",
                    self.cluster_node_ttl_ms, self.cluster_heartbeat_ms
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_match_default() {
        let parsed = Config::parse_from(["signal-server"]);
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn the_queue_must_hold_a_whole_relayed_page_in_parts() {
        let default = Config::default();
        assert_eq!(default.validate(), Ok(()));
        assert!(default.outbound_queue_bytes >= 2 * default.max_message_bytes);
        let tight = Config {
            outbound_queue_bytes: default.max_message_bytes,
            ..Config::default()
        };
        let refusal = tight.validate().unwrap_err();
        assert!(refusal.contains("--outbound-queue-bytes"), "{refusal}");
        let enough = Config {
            outbound_queue_bytes: queued_page_bytes(MIB * 2, MIB),
            ..Config::default()
        };
        assert_eq!(enough.validate(), Ok(()));
    }

    #[test]
    fn parses_repeatable_flags() {
        let config = Config::parse_from([
            "signal-server",
            "--bind",
            "127.0.0.1:0",
            "--selection",
            "coin-flip",
            "--ice-server",
            "stun:127.0.0.1:3478",
            "--ice-server",
            "turn:u:p@127.0.0.1:3478",
        ]);
        assert_eq!(config.selection, Selection::CoinFlip);
        assert_eq!(config.ice_servers.len(), 2);
        assert_eq!(config.ice_servers[1].username.as_deref(), Some("u"));
    }
}
