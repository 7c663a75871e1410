//! WebRTC through the server's built-in TURN: peers that may use relay
//! candidates only (`RtcSettings::turn_only`), as two peers behind
//! symmetric NATs must. The server lets TURN relay to loopback here
//! (`--turn-allow-peer 127.0.0.0/8`); by default it refuses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ephemeral_peer::Transport;
use ephemeral_shared::path::Path;

use crate::harness::*;

fn turn_on_loopback() -> signal_server::Config {
    signal_server::Config {
        turn_allow_peers: vec!["127.0.0.0/8".parse().expect("a literal range")],
        ..server_config()
    }
}

/// Both sides relay-only: the pair is relay ↔ relay, every packet goes
/// through the server's TURN twice. Before the workaround in `rtc.rs` this took
/// 3.4–3.9 s on loopback (2 s nomination wait plus ~200 ms stalls on each
/// relayed reply) and missed the fetch's WebRTC deadline in the NAT lab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_connect_through_turn_promptly() {
    init_logs();
    let server = start_server(turn_on_loopback()).await;
    let mut config = peer_config(&server);
    config.rtc.turn_only = true;
    let page = text_page(200 * 1024, 11);
    let (_host, hash) = host(&config, &page).await;
    let visitor = connect(&config).await;
    let fetched = within("fetch over TURN", visitor.fetch(hash))
        .await
        .expect("the page arrives");
    eprintln!("over TURN: {:?}", fetched.timings);
    assert_eq!(fetched.page, page);
    assert_eq!(
        fetched.transport,
        Transport::WebRtc,
        "not the websocket relay"
    );
    assert_eq!(fetched.path, Some(Path::Turn));
    let metrics = server.metrics();
    assert!(metrics.turn_relayed_bytes.load(Ordering::Relaxed) >= page.len() as u64);
    let open = fetched.timings.channel_open.expect("a data channel opened");
    let routed = fetched.timings.routed.expect("routed");
    assert!(
        open.saturating_sub(routed) < Duration::from_millis(1500),
        "the channel took {:?} after routing",
        open.saturating_sub(routed)
    );
    server.shutdown().await;
}

/// One side relay-only, the other free to use its host address: the pair
/// is host ↔ relay (the visitor's checks reach the host's relay address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_visitor_reaches_a_host_through_turn() {
    init_logs();
    let server = start_server(turn_on_loopback()).await;
    let config = peer_config(&server);
    let mut relay_only = config.clone();
    relay_only.rtc.turn_only = true;
    let page = text_page(10_000, 12);
    let (_host, hash) = host(&config, &page).await;
    let visitor = connect(&relay_only).await;
    let fetched = within("fetch over TURN", visitor.fetch(hash))
        .await
        .expect("the page arrives");
    eprintln!("relay-only visitor: {:?}", fetched.timings);
    assert_eq!(fetched.page, page);
    assert_eq!(
        fetched.transport,
        Transport::WebRtc,
        "not the websocket relay"
    );
    assert_eq!(fetched.path, Some(Path::Turn));
    server.shutdown().await;
}
