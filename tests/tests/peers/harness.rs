//! What every peer test needs: a real signaling server on a free loopback
//! port, peers tuned for loopback, and a bound on every wait.

use std::future::Future;
use std::time::Duration;

use ephemeral_peer::{Peer, PeerConfig};
use ephemeral_shared::PageHash;

/// No test step may take longer than this; a hang is a failure, not a
/// stuck CI run.
pub const STEP: Duration = Duration::from_secs(60);

/// Runs `future` within [`STEP`], or fails saying what was awaited.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A server config for tests: any free port on loopback.
pub fn server_config() -> signal_server::Config {
    signal_server::Config {
        bind: "127.0.0.1:0".parse().expect("a literal address"),
        // Tests run side by side: any free UDP port for STUN/TURN.
        turn_port: 0,
        ..signal_server::Config::default()
    }
}

pub async fn start_server(config: signal_server::Config) -> signal_server::RunningServer {
    signal_server::start(config)
        .await
        .expect("the signaling server starts")
}

/// A peer config for loopback: ICE bound to 127.0.0.1, quick reconnects.
pub fn peer_config(server: &signal_server::RunningServer) -> PeerConfig {
    let mut config = PeerConfig::new(server.websocket_url());
    config.rtc.bind = "127.0.0.1".parse().expect("a literal address");
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(500);
    config
}

pub async fn connect(config: &PeerConfig) -> Peer {
    within("connecting a peer", Peer::connect(config.clone()))
        .await
        .expect("the peer connects")
}

/// A host that shares `page`.
pub async fn host(config: &PeerConfig, page: &[u8]) -> (Peer, PageHash) {
    let peer = connect(config).await;
    let hash = within("sharing a page", peer.share(page.to_vec()))
        .await
        .expect("the page is shared");
    (peer, hash)
}

/// A page of `len` bytes of varied text, so no two chunks are alike.
pub fn text_page(len: usize, seed: u32) -> Vec<u8> {
    let mut page = Vec::with_capacity(len);
    let mut n = seed;
    while page.len() < len {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        page.push(b'a' + ((n >> 16) % 26) as u8);
    }
    page
}
