//! The server's settings: one struct, parsed from flags and `EPHEMERAL_*`
//! environment variables, with a `Default` that tests and embedders use.
//! Every limit is explicit, with its unit and why it exists.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
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

    /// Initial read buffer per connection, in bytes. The library default
    /// (128 KiB) would cost 6 GiB at 50k idle connections; most messages
    /// are signals of a few hundred bytes, and the buffer grows on demand.
    #[arg(long, env = "EPHEMERAL_READ_BUFFER_BYTES", default_value_t = 4096)]
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

    /// Messages queued for one socket before it counts as too slow and is
    /// closed, so one stalled reader cannot hold server memory.
    #[arg(long, env = "EPHEMERAL_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

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
    /// `https://pages.example`). None given: any origin.
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
            read_buffer_bytes: 4096,
            write_buffer_bytes: 0,
            max_topics_per_socket: 100,
            messages_per_second: 100,
            message_burst: 400,
            idle_timeout_secs: 60,
            outbound_queue: 256,
            count_interval_ms: 20,
            max_uploads_per_host: 2,
            queue_wait_ms: 2000,
            max_connections: 100_000,
            selection: Selection::Uniform,
            allowed_origins: Vec::new(),
            ice_servers: Vec::new(),
            log: "info".into(),
        }
    }
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
