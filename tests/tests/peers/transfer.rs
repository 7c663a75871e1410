//! Pages moving peer to peer.

use std::collections::HashMap;
use std::time::Duration;

use ephemeral_peer::{Fetched, PageHash, Peer, PeerConfig, PeerId, Transport};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_one_visitor_over_webrtc_then_the_visitor_hosts() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = b"<h1>hello, peer</h1>".to_vec();
    let (first, hash) = host(&config, &page).await;

    let second = connect(&config).await;
    let fetched = within("second fetches", second.fetch(hash))
        .await
        .expect("the page arrives");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::WebRtc);
    eprintln!("first fetch: {:?}", fetched.timings);

    // The second peer hosts it now; with the first gone, a third gets it
    // from the second.
    first.shutdown().await;
    // Until the server has seen the first peer go, it may still route a
    // request to it (and the visitor would wait out its RTC timeout). One
    // host and nobody waiting is the second peer hosting alone: the count
    // it saw while it waited was one host too, but with itself waiting.
    let mut hosts = within("watching the host count", second.watch_count(hash))
        .await
        .expect("a count");
    within(
        "the server sees the second peer host alone",
        hosts.wait_for(|count| count.is_some_and(|c| c.count == 1 && c.waiting == 0)),
    )
    .await
    .expect("counts");
    let third = connect(&config).await;
    let fetched = within("third fetches", third.fetch(hash))
        .await
        .expect("the page arrives from the second peer");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::WebRtc);
    within("the second peer counts its upload", async {
        while second.served().webrtc() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!("second fetch: {:?}", fetched.timings);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_visitors_at_once_are_all_served_and_the_load_spreads() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = text_page(20_000, 11);
    let (seed_a, hash) = host(&config, &page).await;
    let (seed_b, _) = host(&config, &page).await;

    // Wave 1: 20 visitors at once, against the two seeds.
    let wave1 = fetch_all(&config, hash, 20).await;
    for (_, fetched) in &wave1 {
        assert_eq!(fetched.page, page);
    }
    // Every fetch is one upload by someone: the seeds, or visitors of this
    // wave that already host (the server gives a host a few visitors at a
    // time, and the rest wait for the swarm to grow).
    let uploads = |wave: &[(Peer, Fetched)]| -> Vec<u64> {
        [&seed_a, &seed_b]
            .into_iter()
            .chain(wave.iter().map(|(peer, _)| peer))
            .map(|peer| peer.served().total())
            .collect()
    };
    within("every upload is counted", async {
        while uploads(&wave1).iter().sum::<u64>() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let served = uploads(&wave1);
    let (a, b) = (served[0], served[1]);
    let busiest = served.iter().copied().max().unwrap_or(0);
    eprintln!("wave 1: uploads per peer {served:?}");
    assert_eq!(
        served.iter().sum::<u64>(),
        20,
        "one upload per visitor: {served:?}"
    );
    assert!(a > 0 && b > 0, "both seeds served: {a} and {b}");
    assert!(busiest <= 10, "no peer served half the crowd: {served:?}");
    let webrtc = wave1
        .iter()
        .filter(|(_, f)| f.transport == Transport::WebRtc)
        .count();
    eprintln!("wave 1: {webrtc} of 20 over WebRTC");

    // Wave 2: every visitor of wave 1 hosts now; 10 more visitors spread
    // over 22 hosts.
    let wave2 = fetch_all(&config, hash, 10).await;
    let mut by_host: HashMap<Option<PeerId>, usize> = HashMap::new();
    for (_, fetched) in &wave2 {
        assert_eq!(fetched.page, page);
        *by_host.entry(fetched.host).or_default() += 1;
    }
    let busiest = by_host.values().copied().max().unwrap_or(0);
    eprintln!(
        "wave 2: {} hosts served, busiest served {busiest}",
        by_host.len()
    );
    assert!(by_host.len() >= 3, "wave 2 spread over hosts: {by_host:?}");
    assert!(busiest <= 6, "no host took most of wave 2: {by_host:?}");
    drop(wave1);
    server.shutdown().await;
}

/// `n` new peers fetch `hash` at the same time.
async fn fetch_all(config: &PeerConfig, hash: PageHash, n: usize) -> Vec<(Peer, Fetched)> {
    let peers = within("connecting visitors", Peer::connect_many(config, n))
        .await
        .expect("visitors connect");
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|peer| {
            tokio::spawn(async move {
                let result = peer.fetch(hash).await;
                (peer, result)
            })
        })
        .collect();
    let mut fetched = Vec::new();
    for task in tasks {
        let (peer, result) = within("a visitor's fetch", task).await.expect("task");
        fetched.push((peer, result.expect("every visitor is served")));
    }
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_page_crosses_the_data_channel_verified() {
    init_logs();
    const SIZE: usize = 8 * 1024 * 1024;
    let server = start_server(signal_server::Config {
        max_page_bytes: 2 * SIZE,
        max_message_bytes: 3 * SIZE,
        max_frame_bytes: 3 * SIZE,
        // A relayed page of 3 * SIZE bytes of JSON must fit in its parts.
        outbound_queue_bytes: 4 * SIZE,
        ..server_config()
    })
    .await;
    let mut config = peer_config(&server);
    config.fetch.max_page_bytes = 2 * SIZE;
    let page = text_page(SIZE, 42);
    let (_host, hash) = host(&config, &page).await;
    let visitor = connect(&config).await;
    let fetched = within("8 MiB fetch", visitor.fetch(hash))
        .await
        .expect("the large page arrives");
    assert_eq!(fetched.transport, Transport::WebRtc);
    assert_eq!(fetched.page.len(), SIZE);
    assert!(fetched.page == page, "the bytes are the page");
    let open = fetched.timings.channel_open.unwrap_or_default();
    let transfer = fetched.timings.total.saturating_sub(open);
    eprintln!(
        "8 MiB: channel open after {open:?}, transfer {transfer:?} ({:.1} MB/s), total {:?}",
        SIZE as f64 / transfer.as_secs_f64().max(1e-6) / 1e6,
        fetched.timings.total
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unicode_page_has_the_sha256sum_address_and_arrives_intact() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    // Emoji with a skin-tone modifier, a ZWJ family, combining marks
    // (decomposed é, Zalgo-ish a), right-to-left text and a CJK line.
    let text = "👋🏽 👨‍👩‍👧 e\u{301}te\u{301} a\u{300}\u{316}\u{35c} שלום 你好\n";
    let page = text.as_bytes().to_vec();
    let file = std::env::temp_dir().join(format!("ephemeral-unicode-{}.txt", std::process::id()));
    std::fs::write(&file, &page).expect("write the page");
    let output = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum runs");
    let _ = std::fs::remove_file(&file);
    let sum = String::from_utf8_lossy(&output.stdout);
    let sum = sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();

    let (_host, hash) = host(&config, &page).await;
    assert_eq!(
        hash.to_string(),
        sum,
        "the address is sha256sum of the UTF-8 bytes"
    );
    let visitor = connect(&config).await;
    let fetched = within("unicode fetch", visitor.fetch(hash))
        .await
        .expect("the page arrives");
    assert_eq!(fetched.transport, Transport::WebRtc);
    assert_eq!(String::from_utf8(fetched.page).as_deref(), Ok(text));
    server.shutdown().await;
}
