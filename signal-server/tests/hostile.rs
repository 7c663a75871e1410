//! One hostile client must not hurt the server or anyone else on it. A test
//! per attack, on a real server on loopback, each asserting what the
//! attacker sees (close code, reply) and that a bystander — another client
//! address, on another page — keeps answering fast. Attackers connect from
//! other loopback addresses (127.0.0.2 and up) so per-address limits fall
//! on them, not on the bystander.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ephemeral_phoenix_client::{Client, Ended, Error, Message, Reply};
use ephemeral_shared::protocol::Reason;
use serde_json::json;
use signal_server::{Config, RunningServer};
use support::{
    closed_within, connect, connect_from, expect_count, from_address, http_get, page, reason,
    server, tcp_from,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

/// The slowest of a bystander's heartbeat round trips while an attack runs
/// must stay under this: loose enough for a debug build on two loaded
/// cores, and far below what these attacks cost before they were fixed
/// (seconds, or no answer at all).
const BYSTANDER_SLOWEST: Duration = Duration::from_millis(300);

async fn bystander_is_fine(server: &RunningServer) -> Result<(), Error> {
    let (have, _) = page("a bystander's own page");
    let mut bystander = connect(server).await?;
    bystander.join(&have).await?;
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let start = Instant::now();
        bystander.heartbeat().await?;
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < BYSTANDER_SLOWEST,
        "a bystander's slowest heartbeat took {slowest:?}"
    );
    Ok(())
}

/// Polls `done` every 20 ms for up to `limit`; whether it came true.
async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_within_the_write_bounds() -> anyhow::Result<()> {
    let config = Config {
        max_message_bytes: 256 * 1024,
        max_frame_bytes: 256 * 1024,
        max_page_bytes: 128 * 1024,
        outbound_queue_bytes: 512 * 1024,
        write_timeout_secs: 2,
        messages_per_second: 2000,
        message_burst: 2000,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("stalled");
    // The staller hosts the page and never reads a byte.
    let mut staller = Client::connect_with(
        &server.websocket_url(),
        from_address("127.0.0.2").receive_buffer(4096),
    )
    .await?;
    let staller_id = staller.join_for_id(&have).await?;
    let mut sender = connect_from(&server, "127.0.0.3").await?;
    sender.join(&want).await?;
    let body = "x".repeat(60 * 1024);
    let signal = json!({"to": staller_id, "type": "offer", "sdp": body});
    let metrics = server.metrics();
    let start = Instant::now();
    let mut sent = 0;
    while metrics.rejected(Reason::SlowConsumer) == 0 && start.elapsed() < Duration::from_secs(15) {
        sender.push(&want, "signal", signal.clone()).await?;
        sent += 1;
        if sent % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        metrics.rejected(Reason::SlowConsumer) >= 1,
        "a socket that read nothing of {sent} signals of 60 KiB was never closed"
    );
    // Closed, and off its page: nobody is routed to it any more.
    assert!(
        within(Duration::from_secs(5), || {
            metrics.connections.load(Ordering::Relaxed) <= 1
        })
        .await,
        "the stalled socket is still open"
    );
    // (The sender, which kept signalling a peer that was gone, may itself
    // have been cut off for it: ask from a fresh socket.)
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;
    let Reply { status, response } = visitor.call(&want, "content_request", json!({})).await?;
    assert_eq!((status.as_str(), reason(&response)), ("error", "no_hosts"));
    drop((staller, sender));
    bystander_is_fine(&server).await?;
    Ok(())
}

#[tokio::test]
async fn every_event_has_a_size_cap() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("caps");
    let mut host = connect(&server).await?;
    let host_id = host.join_for_id(&have).await?;
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;

    let huge = json!({"to": host_id, "type": "offer", "sdp": "x".repeat(70 * 1024)});
    let Reply { status, response } = visitor.call(&want, "signal", huge).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "message_too_large")
    );
    assert!(
        response["detail"].as_str().unwrap().contains("65536 bytes"),
        "{response}"
    );
    let padded = json!({"pad": "x".repeat(9 * 1024)});
    let Reply { status, response } = visitor.call("phoenix", "heartbeat", padded).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "message_too_large")
    );
    // A signal within the cap still flows.
    visitor
        .push(
            &want,
            "signal",
            json!({"to": host_id, "type": "offer", "sdp": "v=0"}),
        )
        .await?;
    host.expect_push(&have, "signal").await?;
    Ok(())
}

#[tokio::test]
async fn exclude_lists_are_capped_and_big_pages_do_not_slow_others() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("crowded");
    let mut hosts = Vec::new();
    let mut host_ids = Vec::new();
    for _ in 0..40 {
        let mut host = connect_from(&server, "127.0.0.2").await?;
        host_ids.push(host.join_for_id(&have).await?);
        hosts.push(host);
    }
    let mut visitor = connect_from(&server, "127.0.0.3").await?;
    visitor.join(&want).await?;
    let too_many: Vec<String> = (0..65).map(|i| format!("{i:032x}")).collect();
    let Reply { status, response } = visitor
        .call(&want, "content_request", json!({"exclude": too_many}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );
    assert!(
        response["detail"].as_str().unwrap().contains("at most 64"),
        "{response}"
    );
    // Visitors hammering the crowded page with full exclude lists while a
    // bystander on another page keeps its latency.
    let mut attackers = Vec::new();
    for _ in 0..10 {
        let mut attacker = connect_from(&server, "127.0.0.4").await?;
        attacker.join(&want).await?;
        attackers.push(attacker);
    }
    let exclude: Vec<String> = host_ids.iter().take(39).cloned().collect();
    let attack = tokio::spawn(async move {
        for _ in 0..20 {
            for attacker in &mut attackers {
                attacker
                    .push(&want, "content_request", json!({"exclude": exclude}))
                    .await?;
            }
        }
        Ok::<_, Error>(attackers)
    });
    bystander_is_fine(&server).await?;
    let _ = attack.await;
    Ok(())
}

#[tokio::test]
async fn slow_silent_and_idle_http_connections_are_closed() -> anyhow::Result<()> {
    let config = Config {
        http_header_timeout_secs: 1,
        ..Config::default()
    };
    let server = server(config).await;
    let mut silent = tcp_from(&server, "127.0.0.2").await?;
    let mut dripping = tcp_from(&server, "127.0.0.2").await?;
    dripping.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let drip = tokio::spawn(async move {
        for _ in 0..20 {
            if dripping.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        closed_within(&mut dripping, Duration::from_millis(100)).await
    });
    let mut idle = tcp_from(&server, "127.0.0.2").await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = idle.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle keep-alive"
    );
    assert!(
        drip.await.unwrap(),
        "headers dripped for 3 s were still read"
    );
    assert!(server.metrics().rejected(Reason::HttpTimeout) >= 2);
    Ok(())
}

#[tokio::test]
async fn reconnecting_in_a_loop_is_cut_off_at_accept() -> anyhow::Result<()> {
    let config = Config {
        connections_per_second_per_address: 5,
        ..Config::default()
    };
    let server = server(config).await;
    // Four seconds' worth (20) come through, one at a time; then none.
    let mut accepted = 0;
    for _ in 0..40 {
        let mut tcp = tcp_from(&server, "127.0.0.2").await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        if answer.starts_with("HTTP/1.1 200") {
            accepted += 1;
        }
    }
    assert!((20..=22).contains(&accepted), "{accepted} of 40 accepted");
    assert!(server.metrics().rejected(Reason::TooManyFromAddress) >= 18);
    // Another address is served.
    let (status, _, _) = http_get(&server, "/healthz").await;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() -> anyhow::Result<()> {
    let config = Config {
        max_connections_per_address: 10,
        ..Config::default()
    };
    let server = server(config).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tcp_from(&server, "127.0.0.2").await?);
    }
    let mut refused = tcp_from(&server, "127.0.0.2").await?;
    assert!(
        closed_within(&mut refused, Duration::from_secs(2)).await,
        "an 11th connection from one address was kept"
    );
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(connect_from(&server, "127.0.0.3").await?);
    }
    let eleventh = connect_from(&server, "127.0.0.3").await;
    match eleventh {
        Err(Error::Handshake {
            source: tungstenite::Error::Http(response),
            ..
        }) => assert_eq!(response.status(), 429),
        Err(other) => panic!("expected 429, got {other}"),
        Ok(_) => panic!("an 11th websocket from one address was accepted"),
    }
    // Everyone else is served.
    let (status, _, body) = http_get(&server, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    bystander_is_fine(&server).await?;
    assert!(server.metrics().rejected(Reason::TooManyFromAddress) >= 2);
    Ok(())
}

#[tokio::test]
async fn every_frame_counts_against_the_rate_and_floods_are_closed() -> anyhow::Result<()> {
    let config = Config {
        messages_per_second: 50,
        message_burst: 100,
        ..Config::default()
    };
    let server = server(config).await;
    let floods: [(&str, Message); 4] = [
        ("malformed", Message::text("{nope")),
        ("binary", Message::binary(vec![1u8; 16])),
        ("ping", Message::Ping(vec![1u8; 16].into())),
        (
            "heartbeat",
            Message::text(r#"[null,"1","phoenix","heartbeat",{}]"#),
        ),
    ];
    for (i, (kind, message)) in floods.into_iter().enumerate() {
        let source = format!("127.0.0.{}", 10 + i);
        let mut flooder = connect_from(&server, &source).await?;
        for _ in 0..2000 {
            if flooder.send_message(message.clone()).await.is_err() {
                break;
            }
        }
        // The close frame arrives although the flooder kept sending: the
        // server reads until the close handshake ends instead of dropping
        // the socket (which would reset it).
        assert_eq!(
            flooder.ended().await?,
            Ended::Closed(Some((
                1008,
                "flooding: kept sending after being refused".into()
            ))),
            "{kind} flood"
        );
    }
    assert!(server.metrics().rejected(Reason::Flooding) >= 4);
    bystander_is_fine(&server).await?;
    Ok(())
}

#[tokio::test]
async fn count_broadcasts_do_not_multiply_under_join_leave_toggling() -> anyhow::Result<()> {
    // 200 members from one address: their joins and connections are not
    // what this test is about.
    let config = Config {
        joins_per_second_per_address: 100_000,
        connections_per_second_per_address: 100_000,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("toggled");
    let mut members = Vec::new();
    for _ in 0..199 {
        let mut member = connect_from(&server, "127.0.0.2").await?;
        member.join(&want).await?;
        members.push(member);
    }
    let mut watcher = connect(&server).await?;
    watcher.join(&want).await?;
    let mut toggler = connect_from(&server, "127.0.0.3").await?;
    let before = server.metrics().count_broadcasts.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..40 {
        toggler.join(&have).await?;
        tokio::time::sleep(Duration::from_millis(25)).await;
        let Reply { status, .. } = toggler.call(&have, "phx_leave", json!({})).await?;
        assert_eq!(status, "ok");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let toggled_for = start.elapsed();
    let broadcasts = (server.metrics().count_broadcasts.load(Ordering::Relaxed) - before) / 2;
    // 200 members space a page's broadcasts 200 ms apart.
    let bound = toggled_for.as_millis() as u64 / 200 + 3;
    assert!(
        broadcasts <= bound,
        "{broadcasts} count broadcasts to 200 members for 80 toggles in {toggled_for:?}"
    );
    // The counts still arrive: the toggler is gone, one waiting watcher.
    expect_count(&mut watcher, &want, 0, 200).await?;
    Ok(())
}

#[tokio::test]
async fn a_slot_held_without_progress_is_freed_for_the_next_visitor() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("squatted");
    let mut host = connect(&server).await?;
    host.join(&have).await?;
    // Two squatters take the host's two upload slots and never answer.
    let mut squatters = Vec::new();
    for _ in 0..2 {
        let mut squatter = connect_from(&server, "127.0.0.2").await?;
        squatter.join(&want).await?;
        squatter.push(&want, "content_request", json!({})).await?;
        squatters.push(squatter);
    }
    for _ in 0..2 {
        host.expect_push(&have, "content_request").await?;
    }
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;
    let asked = Instant::now();
    let msg_ref = visitor.push(&want, "content_request", json!({})).await?;
    let routed = visitor
        .expect_within(Duration::from_millis(1600), |f| {
            f.event == "phx_reply" && f.msg_ref.as_deref() == Some(msg_ref.as_str())
        })
        .await?;
    let waited = asked.elapsed();
    let routed =
        routed.unwrap_or_else(|| panic!("still waiting after {waited:?} behind slots nobody used"));
    assert_eq!(routed.as_reply().unwrap().0, "ok");
    assert!(server.metrics().rejected(Reason::SlotTimeout) >= 2);
    Ok(())
}

#[tokio::test]
async fn closes_follow_rfc_6455() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let client = connect(&server).await?;
    assert_eq!(
        client.close().await?,
        Ended::Closed(None),
        "the client's close is echoed"
    );

    // Invalid UTF-8 in a text frame: 1007.
    let mut raw = tcp_from(&server, "127.0.0.1").await?;
    let handshake = "GET /ws/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    raw.write_all(handshake.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        raw.read_exact(&mut byte).await.unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"));
    // FIN + text, masked, 2 bytes: 0xff 0xfe.
    let mask = [1u8, 2, 3, 4];
    raw.write_all(&[
        0x81,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        0xff ^ mask[0],
        0xfe ^ mask[1],
    ])
    .await
    .unwrap();
    let mut close = [0u8; 4];
    raw.read_exact(&mut close).await.unwrap();
    assert_eq!(close[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1007);

    // A malformed key is refused before the upgrade.
    let mut bad = tcp_from(&server, "127.0.0.1").await?;
    let handshake = handshake.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    bad.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let n = bad.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 400"));
    Ok(())
}

#[tokio::test]
async fn error_replies_do_not_echo_long_input() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let mut client = connect(&server).await?;
    let topic = format!("have:{}", "z".repeat(4000));
    let Reply { status, response } = client.call(&topic, "phx_join", json!({})).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "unknown_topic")
    );
    let reply = client
        .expect_within(Duration::from_millis(50), |_| true)
        .await?;
    assert!(reply.is_none());
    let raw = format!(r#"["1","2","{topic}","phx_join",{{}}]"#);
    client.send_text(&raw).await?;
    let reply = client.expect(|f| f.event == "phx_reply").await?;
    assert!(
        reply.topic.len() <= 80,
        "reply echoed {} bytes",
        reply.topic.len()
    );
    assert!(reply.encode().len() < 1024);
    Ok(())
}

#[tokio::test]
async fn metrics_can_require_a_token_or_move_elsewhere() -> anyhow::Result<()> {
    let server = server(Config {
        metrics_token: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    let (status, _, _) = http_get(&server, "/metrics").await;
    assert_eq!(status, 401);
    let mut tcp = tcp_from(&server, "127.0.0.1").await?;
    tcp.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("ephemeral_pages 0"), "{body}");

    let moved = server_with_metrics_elsewhere().await;
    let (status, _, _) = http_get(&moved, "/metrics").await;
    assert_eq!(status, 404, "not on the public address");
    let metrics_addr = moved.metrics_addr().expect("a metrics address");
    let mut tcp = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    Ok(())
}

async fn server_with_metrics_elsewhere() -> RunningServer {
    server(Config {
        metrics_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await
}
