//! Everything that can go wrong on the way to a page: hosts that lie or
//! vanish, WebRTC that cannot work, no hosts at all, a server restart,
//! pages too large for the visitor or for the server's relay.

use std::time::{Duration, Instant};

use ephemeral_peer::{FetchError, FetchOptions, PeerConfig, Transport};
use ephemeral_shared::{FetchFailure, PageHash};

use crate::fake_host::{FakeHost, Misbehaviour};
use crate::harness::*;

/// A fake host holds the visitor's first request; an honest host joins;
/// then the fake misbehaves. The visitor must end up with the right bytes
/// from the honest host.
async fn misbehaving_host_is_replaced(misbehaviour: Misbehaviour) {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    // Several chunks, so "mid-transfer" means something.
    let page = text_page(300 * 1024, 7);
    let hash = PageHash::of(&page);
    let mut fake = FakeHost::start(
        &server.websocket_url(),
        config.rtc.clone(),
        page.clone(),
        misbehaviour,
    )
    .await;

    let visitor = connect(&config).await;
    let fetch = tokio::spawn(async move {
        let result = visitor.fetch(hash).await;
        (visitor, result)
    });
    let asked = within("the fake host is asked", fake.asked.recv()).await;
    assert!(asked.is_some());
    let (honest, honest_hash) = host(&config, &page).await;
    assert_eq!(honest_hash, hash);
    let honest_id = honest.status().borrow().peer_id;
    fake.go();

    let (_visitor, result) = within("the visitor's fetch", fetch)
        .await
        .expect("the fetch task");
    let fetched = result.expect("the right bytes, from the honest host");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::WebRtc);
    assert_eq!(fetched.host, honest_id, "served by the honest host");
    assert!(fetched.requests >= 2, "asked again after the fake host");
    assert!(
        fake.sent.try_recv().is_ok(),
        "the fake host got to send its bytes"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_rejected_and_right_ones_come_from_another_host() {
    misbehaving_host_is_replaced(Misbehaviour::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_vanishing_mid_transfer_is_replaced() {
    misbehaving_host_is_replaced(Misbehaviour::VanishMidTransfer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_every_host_is_a_clear_failure() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = text_page(10_000, 3);
    let mut fake = FakeHost::start(
        &server.websocket_url(),
        config.rtc.clone(),
        page.clone(),
        Misbehaviour::WrongBytes,
    )
    .await;
    fake.go();
    let visitor = connect(&config).await;
    let result = within("the fetch", visitor.fetch(PageHash::of(&page))).await;
    assert_eq!(
        result.map(|f| f.transport),
        Err(FetchError::Failed(FetchFailure::WrongBytesFromEveryHost {
            bad_hosts: 1
        }))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_get_pages_by_relay() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let mut relay_only = config.clone();
    relay_only.fetch.webrtc = false;
    let page = "relayed ✓".as_bytes().to_vec();

    // A relay-only visitor asks for relay; a WebRTC host obliges.
    let (host_peer, hash) = host(&config, &page).await;
    let visitor = connect(&relay_only).await;
    let fetched = within("relay-only fetch", visitor.fetch(hash))
        .await
        .expect("the page by relay");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::Relay);
    assert_eq!(fetched.timings.channel_open, None, "no data channel at all");

    // A relay-only host answers a WebRTC visitor by relay too.
    host_peer.shutdown().await;
    visitor.shutdown().await;
    let (relay_host, _) = host(&relay_only, &page).await;
    let mut hosts = within("watching the host count", relay_host.watch_count(hash))
        .await
        .expect("a count");
    within(
        "the server sees only the relay-only host",
        hosts.wait_for(|count| count.is_some_and(|c| c.count == 1)),
    )
    .await
    .expect("counts");
    let webrtc_visitor = connect(&config).await;
    let fetched = within("fetch from a relay-only host", webrtc_visitor.fetch(hash))
        .await
        .expect("the page by relay");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::Relay);
    server.shutdown().await;
}

/// A page the server relays in several parts comes together verified, and
/// from a relay-only host too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_many_relay_parts_arrives_whole() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let mut relay_only = config.clone();
    relay_only.fetch.webrtc = false;
    // Five parts of at most 64 KiB.
    let page = text_page(300_000, 7);
    let (_host, hash) = host(&relay_only, &page).await;
    for visitor_config in [&relay_only, &config] {
        let visitor = connect(visitor_config).await;
        // Not hosting after: the next visitor must get it from the host.
        let once = FetchOptions::default();
        let fetched = within("a fetch relayed in parts", visitor.fetch_with(hash, once))
            .await
            .expect("the page by relay");
        assert_eq!(fetched.transport, Transport::Relay);
        assert!(fetched.page == page, "the parts make the page");
        visitor.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_that_cannot_connect_falls_back_to_relay() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    // The visitor's ICE binds to an address the host cannot reach: TEST-NET
    // is not on this machine, so its socket fails to bind and no candidate
    // pair ever forms.
    let mut blocked = config.clone();
    blocked.rtc.bind = "192.0.2.1".parse().expect("a literal address");
    blocked.fetch.rtc_timeout = Duration::from_secs(2);
    let page = b"through the server".to_vec();
    let (_host, hash) = host(&config, &page).await;
    let visitor = connect(&blocked).await;
    let fetched = within("fetch with ICE blocked", visitor.fetch(hash))
        .await
        .expect("the page by relay");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::Relay);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hosts_is_gone_promptly() {
    init_logs();
    let server = start_server(server_config()).await;
    let visitor = connect(&peer_config(&server)).await;
    let started = Instant::now();
    let result = within(
        "fetching a page nobody has",
        visitor.fetch(PageHash::of(b"nobody")),
    )
    .await;
    assert_eq!(result.map(|f| f.page), Err(FetchError::Gone));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "gone took {:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_survive_a_server_restart() {
    init_logs();
    let server = start_server(server_config()).await;
    let address = server.local_addr();
    let config = peer_config(&server);
    let pages: Vec<Vec<u8>> = (0..3).map(|i| text_page(1000 + i, i as u32)).collect();
    let mut hosts = Vec::new();
    for page in &pages {
        hosts.push(host(&config, page).await.0);
    }
    // One peer hosting two pages rejoins both.
    let both = connect(&config).await;
    for page in &pages[..2] {
        within("sharing", both.share(page.clone()))
            .await
            .expect("shared");
    }

    server.shutdown().await;
    for peer in hosts.iter().chain([&both]) {
        let mut status = peer.status();
        within("the host notices", status.wait_for(|s| !s.online))
            .await
            .expect("status");
    }
    let server = start_server(signal_server::Config {
        bind: address,
        ..server_config()
    })
    .await;
    for (peer, topics) in hosts.iter().map(|p| (p, 1)).chain([(&both, 2)]) {
        let mut status = peer.status();
        within(
            "the host rejoins",
            status.wait_for(|s| s.online && s.connections >= 2 && s.hosting == topics),
        )
        .await
        .expect("status");
    }

    let visitor = connect(&peer_config(&server)).await;
    for page in &pages {
        let fetched = within("fetch after the restart", visitor.fetch(PageHash::of(page)))
            .await
            .expect("every page is back");
        assert_eq!(&fetched.page, page);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_reconnects_and_keeps_hosting() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = b"still here".to_vec();
    let (host_peer, hash) = host(&config, &page).await;
    host_peer.drop_link();
    let mut status = host_peer.status();
    within(
        "reconnected and rejoined",
        status.wait_for(|s| s.online && s.connections >= 2 && s.hosting == 1),
    )
    .await
    .expect("status");
    let visitor = connect(&config).await;
    let fetched = within("fetch", visitor.fetch(hash))
        .await
        .expect("the page");
    assert_eq!(fetched.page, page);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_heartbeats_keep_the_link() {
    init_logs();
    let server = start_server(server_config()).await;
    let mut config = peer_config(&server);
    // A heartbeat unanswered by the next one drops the link; twenty of
    // them, all answered, must leave the first connection standing.
    config.heartbeat_interval = Duration::from_millis(25);
    let peer = connect(&config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = *peer.status().borrow();
    assert!(status.online);
    assert_eq!(status.connections, 1, "never reconnected");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_heartbeat_drops_the_link_and_reconnects() {
    use futures_util::StreamExt;

    init_logs();
    // A "server" that accepts websockets and then never says a word: the
    // half-open link a heartbeat exists to detect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let accepted = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await {
                // Read (and drop) what the peer sends, answer nothing.
                tokio::spawn(async move { while socket.next().await.is_some() {} });
            }
        }
    });
    let mut config = PeerConfig::new(format!("ws://{address}/ws/websocket?vsn=2.0.0"));
    config.heartbeat_interval = Duration::from_millis(50);
    config.reconnect_min = Duration::from_millis(10);
    let peer = connect(&config).await;
    let mut status = peer.status();
    within(
        "the silent link is dropped and replaced",
        status.wait_for(|s| s.connections >= 2),
    )
    .await
    .expect("status");
    accepted.abort();
}

/// Before any timeout could have fired: a size refusal is an answer, not a
/// wait (the relay timeout is 5 s).
const PROMPT: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_over_the_visitors_limit_fails_at_once_without_another_host() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = text_page(200_000, 5);
    let (_first, hash) = host(&config, &page).await;
    let (_second, _) = host(&config, &page).await;
    let mut small = config.clone();
    small.fetch.max_page_bytes = 100_000;
    let visitor = connect(&small).await;
    let started = Instant::now();
    let result = within("the fetch", visitor.fetch(hash)).await;
    let failure = FetchFailure::PageTooLarge {
        size: 200_000,
        max: 100_000,
    };
    assert_eq!(
        result.map(|f| f.transport),
        Err(FetchError::Failed(failure.clone()))
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_eq!(
        failure.to_string(),
        "the page is 195.3 KiB; this peer accepts pages up to 97.7 KiB"
    );
    server.shutdown().await;
}

/// Waits on the server's `content_unavailable`: a host asked for relay of
/// a page over the server's relay limit says so instead of sending it,
/// and the visitor fails at once. Before, a WebRTC host's `content` was
/// refused and the visitor heard "gone"; a relay-only host's was closed
/// with 1009 and reconnected, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_relay_limit_fails_a_relay_only_visitor_at_once() {
    init_logs();
    let server = start_server(signal_server::Config {
        max_page_bytes: 64 * 1024,
        ..server_config()
    })
    .await;
    let config = peer_config(&server);
    let mut relay_only = config.clone();
    relay_only.fetch.webrtc = false;
    let page = text_page(100_000, 9);
    let expected = Err(FetchError::Failed(FetchFailure::TooLargeForRelay {
        size: 100_000,
        max_relay: Some(64 * 1024),
        webrtc_tried: false,
    }));

    for host_config in [&config, &relay_only] {
        let (host_peer, hash) = host(host_config, &page).await;
        assert_eq!(
            host_peer.status().borrow().max_relay_bytes,
            Some(64 * 1024),
            "the join reply says the relay limit"
        );
        let visitor = connect(&relay_only).await;
        let started = Instant::now();
        let result = within("the relay-only fetch", visitor.fetch(hash)).await;
        assert_eq!(result.map(|f| f.transport), expected);
        assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
        let status = *host_peer.status().borrow();
        assert!(status.online && status.connections == 1, "{status:?}");
        visitor.shutdown().await;
        host_peer.shutdown().await;
    }
    server.shutdown().await;
}

/// Waits on the server's `content_unavailable`, as above, on the fallback
/// path: WebRTC fails, the visitor asks for relay, the page is too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_relay_limit_fails_at_once_when_webrtc_fails() {
    init_logs();
    let server = start_server(signal_server::Config {
        max_page_bytes: 64 * 1024,
        ..server_config()
    })
    .await;
    let config = peer_config(&server);
    // ICE bound where the host cannot reach (see
    // `ice_that_cannot_connect_falls_back_to_relay`).
    let mut blocked = config.clone();
    blocked.rtc.bind = "192.0.2.1".parse().expect("a literal address");
    blocked.fetch.rtc_timeout = Duration::from_secs(2);
    let page = text_page(100_000, 10);
    let (_host, hash) = host(&config, &page).await;
    let visitor = connect(&blocked).await;
    let started = Instant::now();
    let result = within("the fetch with ICE blocked", visitor.fetch(hash)).await;
    let failure = FetchFailure::TooLargeForRelay {
        size: 100_000,
        max_relay: Some(64 * 1024),
        webrtc_tried: true,
    };
    assert_eq!(
        result.map(|f| f.transport),
        Err(FetchError::Failed(failure.clone()))
    );
    // The RTC timeout, then an answer rather than the relay timeout.
    assert!(
        started.elapsed() < blocked.fetch.rtc_timeout + PROMPT,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        failure.to_string(),
        "the page is 97.7 KiB; WebRTC failed and the server relays pages up to 64.0 KiB"
    );
    server.shutdown().await;
}
