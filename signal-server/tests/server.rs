//! The real server on a real loopback port, spoken to by real websocket
//! clients; every assertion is on frames or bytes a client receives.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ephemeral_phoenix_client::{
    Client, Ended, Error, Message, Options, Reply, next_text, send_text, websocket,
};
use ephemeral_shared::selection::Selection;
use serde_json::{Value, json};
use signal_server::Config;
use support::{connect, expect_count, http_get, page, reason, server};

#[tokio::test]
async fn join_reply_carries_peer_id_counts_and_ice_servers() -> anyhow::Result<()> {
    let config = Config {
        ice_servers: vec!["stun:127.0.0.1:3478".parse().unwrap()],
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("hello");
    let mut host = connect(&server).await?;
    let reply = host.join(&have).await?;
    let peer_id = reply["peer_id"].as_str().unwrap();
    assert_eq!(peer_id.len(), 32);
    assert!(peer_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(reply["count"], json!(1));
    assert_eq!(reply["waiting"], json!(0));
    // The configured servers first, then the built-in STUN and TURN, at
    // the host the client used, with credentials of this session.
    let port = server.stun_turn_addr().expect("STUN/TURN runs").port();
    let servers = reply["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert_eq!(servers[0], json!({"urls": ["stun:127.0.0.1:3478"]}));
    assert_eq!(
        servers[1],
        json!({"urls": [format!("stun:127.0.0.1:{port}")]})
    );
    assert_eq!(
        servers[2]["urls"],
        json!([format!("turn:127.0.0.1:{port}?transport=udp")])
    );
    let username = servers[2]["username"].as_str().unwrap();
    assert!(username.ends_with(&format!(":{peer_id}")), "{username}");
    assert_eq!(servers[2]["credential"].as_str().unwrap().len(), 28);

    let mut visitor = connect(&server).await?;
    let reply = visitor.join(&want).await?;
    assert_eq!(
        (reply["count"].clone(), reply["waiting"].clone()),
        (json!(1), json!(1))
    );
    assert_ne!(
        reply["peer_id"].as_str().unwrap(),
        peer_id,
        "ids are per socket"
    );
    Ok(())
}

#[tokio::test]
async fn heartbeat_leave_and_close() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let mut client = connect(&server).await?;
    let Reply { status, response } = client.call("phoenix", "heartbeat", json!({})).await?;
    assert_eq!((status.as_str(), response), ("ok", json!({})));

    let (have, _) = page("x");
    client.join(&have).await?;
    let leave_ref = client.push(&have, "phx_leave", json!({})).await?;
    let Reply { status, .. } = client.reply(&leave_ref).await?;
    assert_eq!(status, "ok");
    let close = client.expect(|f| f.event == "phx_close").await?;
    assert_eq!(close.topic, have);
    assert_eq!(
        close.join_ref, close.msg_ref,
        "phx_close carries the join ref"
    );
    // Left for real: a second leave is refused.
    let Reply { status, response } = client.call(&have, "phx_leave", json!({})).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "not_joined")
    );
    Ok(())
}

#[tokio::test]
async fn every_bad_input_gets_a_reason_and_the_socket_stays_up() -> anyhow::Result<()> {
    let config = Config {
        max_topics_per_socket: 2,
        ..Config::default()
    };
    let server = server(config).await;
    let mut bystander = connect(&server).await?;
    let (have, want) = page("bad inputs");
    bystander.join(&have).await?;

    let mut client = connect(&server).await?;
    let unparsable = [
        ("{not json", "malformed_json"),
        (r#"{"topic":"x"}"#, "wrong_arity"),
        (r#"["1","1","phoenix","heartbeat"]"#, "wrong_arity"),
        (r#"[1,"1","phoenix","heartbeat",{}]"#, "malformed_frame"),
        (r#"["1","1","phoenix","heartbeat",[]]"#, "malformed_frame"),
    ];
    for (text, expected) in unparsable {
        client.send_text(text).await?;
        let reply = client.expect(|f| f.event == "phx_reply").await?;
        assert_eq!(reply.topic, "phoenix");
        let (status, response) = reply.as_reply().unwrap();
        assert_eq!(status, "error");
        assert_eq!(response["reason"], json!(expected), "{text}");
        assert!(response["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    client.send_message(Message::binary(vec![1, 2, 3])).await?;
    let reply = client.expect(|f| f.event == "phx_reply").await?;
    assert_eq!(reply.as_reply().unwrap().1["reason"], json!("binary_frame"));

    let bad_hash = format!("want:{}", "A".repeat(64));
    let hash = &have["have:".len()..];
    let cases: Vec<(String, &str, Value, &str)> = vec![
        ("room:lobby".into(), "phx_join", json!({}), "unknown_topic"),
        (bad_hash, "phx_join", json!({}), "unknown_topic"),
        ("want:abc".into(), "phx_join", json!({}), "unknown_topic"),
        (want.clone(), "content_request", json!({}), "not_joined"),
        (want.clone(), "signal", json!({}), "not_joined"),
        ("phoenix".into(), "dance", json!({}), "unknown_event"),
        (want.clone(), "dance", json!({}), "unknown_event"),
        (have.clone(), "content_request", json!({}), "unknown_event"),
        (
            format!("want:{hash}"),
            "content",
            json!({"content": "x"}),
            "unknown_event",
        ),
    ];
    for (topic, event, payload, expected) in cases {
        let Reply { status, response } = client.call(&topic, event, payload).await?;
        assert_eq!(
            (status.as_str(), reason(&response)),
            ("error", expected),
            "{topic} {event}"
        );
    }

    client.join(&want).await?;
    let Reply { status, response } = client.call(&want, "phx_join", json!({})).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "already_joined")
    );
    let Reply { status, response } = client
        .call(&want, "content_request", json!({"relay": 3}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );
    assert!(
        response["detail"]
            .as_str()
            .unwrap()
            .contains("content_request")
    );
    let Reply { status, response } = client
        .call(&want, "signal", json!({"to": "nobody"}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );

    let (other_have, other_want) = page("other");
    client.join(&other_have).await?;
    let Reply { status, response } = client.call(&other_want, "phx_join", json!({})).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "too_many_topics")
    );

    // After all that, both sockets still work.
    client.heartbeat().await?;
    bystander.heartbeat().await?;

    let (_, _, metrics) = http_get(&server, "/metrics").await;
    for reason in [
        "malformed_json",
        "unknown_topic",
        "not_joined",
        "bad_payload",
    ] {
        let zero = format!("ephemeral_rejected_total{{reason=\"{reason}\"}} 0\n");
        assert!(metrics.contains(&format!("reason=\"{reason}\"")) && !metrics.contains(&zero));
    }
    Ok(())
}

#[tokio::test]
async fn a_request_goes_to_one_host_who_learns_the_visitor() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("routed");
    let mut visitor = connect(&server).await?;
    let visitor_id = visitor.join_for_id(&want).await?;

    let Reply { status, response } = visitor.call(&want, "content_request", json!({})).await?;
    assert_eq!((status.as_str(), reason(&response)), ("error", "no_hosts"));

    let mut host = connect(&server).await?;
    let host_id = host.join_for_id(&have).await?;
    let Reply { status, response } = visitor
        .call(&want, "content_request", json!({"relay": true}))
        .await?;
    assert_eq!(status, "ok");
    assert_eq!(response, json!({"host": host_id}));
    let request = host.expect(|f| f.event == "content_request").await?;
    assert_eq!(request.topic, have);
    assert_eq!(
        Value::Object(request.payload),
        json!({"from": visitor_id, "relay": true})
    );
    assert!(
        request.join_ref.is_some(),
        "a direct push carries the host's join ref"
    );

    // Excluding the only host leaves nobody.
    let Reply { status, response } = visitor
        .call(&want, "content_request", json!({"exclude": [host_id]}))
        .await?;
    assert_eq!((status.as_str(), reason(&response)), ("error", "no_hosts"));
    let (_, _, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("ephemeral_requests_routed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ephemeral_requests_no_host_total 2\n"),
        "{metrics}"
    );
    Ok(())
}

async fn hosts(
    server: &signal_server::RunningServer,
    have: &str,
    n: usize,
) -> Result<Vec<(String, Client)>, Error> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        let mut host = connect(server).await?;
        let id = host.join_for_id(have).await?;
        hosts.push((id, host));
    }
    Ok(hosts)
}

/// Sends `rounds` requests and returns, per host id, how many it received,
/// plus the reply of each request.
async fn run_requests(
    visitor: &mut Client,
    want: &str,
    hosts: &mut [(String, Client)],
    rounds: usize,
    payload: Value,
) -> Result<(HashMap<String, usize>, Vec<Value>), Error> {
    let mut replies = Vec::new();
    for _ in 0..rounds {
        let Reply { status, response } = visitor
            .call(want, "content_request", payload.clone())
            .await?;
        assert_eq!(status, "ok", "{response}");
        replies.push(response);
    }
    // A final heartbeat round trip on each host: every push sent before it
    // has arrived once its reply has.
    let mut received = HashMap::new();
    for (id, host) in hosts.iter_mut() {
        host.heartbeat().await?;
        let mut n = 0;
        while host
            .expect_within(Duration::ZERO, |f| f.event == "content_request")
            .await?
            .is_some()
        {
            n += 1;
        }
        received.insert(id.clone(), n);
    }
    Ok((received, replies))
}

#[tokio::test]
async fn uniform_selection_answers_each_request_exactly_once_and_evenly() -> anyhow::Result<()> {
    let config = Config {
        messages_per_second: 100_000,
        message_burst: 100_000,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("uniform");
    let mut hosts = hosts(&server, &have, 4).await?;
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;
    let rounds = 2000;
    let (received, replies) =
        run_requests(&mut visitor, &want, &mut hosts, rounds, json!({})).await?;

    assert_eq!(
        received.values().sum::<usize>(),
        rounds,
        "each request reached exactly one host"
    );
    let mut named: HashMap<String, usize> = HashMap::new();
    for reply in &replies {
        *named
            .entry(reply["host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        named, received,
        "the reply names the host that got the request"
    );
    let expected = rounds as f64 / 4.0;
    let chi2: f64 = received
        .values()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    // 3 degrees of freedom: p = 0.001 at 16.27. A picker that favours one
    // host by even 10% lands far above it at 2000 requests.
    assert!(chi2 < 16.27, "chi-square {chi2}: {received:?}");

    // Exclusions are honoured.
    let excluded: Vec<String> = hosts.iter().take(3).map(|(id, _)| id.clone()).collect();
    let (received, _) = run_requests(
        &mut visitor,
        &want,
        &mut hosts,
        50,
        json!({"exclude": excluded}),
    )
    .await?;
    assert_eq!(received[&hosts[3].0], 50);
    assert_eq!(received.values().sum::<usize>(), 50);
    Ok(())
}

#[tokio::test]
async fn coin_flip_mode_behaves_like_the_seed() -> anyhow::Result<()> {
    let config = Config {
        selection: Selection::CoinFlip,
        messages_per_second: 100_000,
        message_burst: 100_000,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("coin flip");
    let mut hosts = hosts(&server, &have, 2).await?;
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;
    let rounds = 400;
    let (received, replies) =
        run_requests(&mut visitor, &want, &mut hosts, rounds, json!({})).await?;
    let routed: Vec<u64> = replies
        .iter()
        .map(|r| r["routed"].as_u64().unwrap())
        .collect();
    let unanswered = routed.iter().filter(|&&n| n == 0).count();
    let doubled = routed.iter().filter(|&&n| n == 2).count();
    // Expected a quarter each at n = 2; a uniform picker would give zero.
    assert!((60..140).contains(&unanswered), "{unanswered} unanswered");
    assert!((60..140).contains(&doubled), "{doubled} answered twice");
    assert_eq!(
        received.values().sum::<usize>() as u64,
        routed.iter().sum::<u64>()
    );
    Ok(())
}

#[tokio::test]
async fn relayed_content_is_checked_then_sent_to_those_who_asked() -> anyhow::Result<()> {
    let config = Config {
        max_page_bytes: 64,
        ..Config::default()
    };
    let server = server(config).await;
    let text = "a relayed page ✓ 👋🏽";
    let (have, want) = page(text);
    let mut host = connect(&server).await?;
    host.join(&have).await?;
    let mut visitors = Vec::new();
    for _ in 0..2 {
        let mut visitor = connect(&server).await?;
        visitor.join(&want).await?;
        visitors.push(visitor);
    }
    // Nobody asked yet: the server carries nothing.
    let Reply { status, response } = host
        .call(&have, "content", json!({"content": text}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "not_requested")
    );
    for visitor in &mut visitors {
        let Reply { status, .. } = visitor
            .call(&want, "content_request", json!({"relay": true}))
            .await?;
        assert_eq!(status, "ok");
        host.expect_push(&have, "content_request").await?;
    }

    let Reply { status, response } = host
        .call(&have, "content", json!({"content": "forged"}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "hash_mismatch")
    );
    let Reply { status, response } = host
        .call(&have, "content", json!({"content": "x".repeat(65)}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "page_too_large")
    );
    let Reply { status, response } = host.call(&have, "content", json!({"text": text})).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );

    let Reply { status, response } = host
        .call(&have, "content", json!({"content": text}))
        .await?;
    assert_eq!((status.as_str(), response), ("ok", json!({"delivered": 2})));
    // Once per request: a second push reaches nobody.
    let Reply { status, response } = host
        .call(&have, "content", json!({"content": text}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "not_requested")
    );
    for visitor in &mut visitors {
        let content = visitor.expect(|f| f.event == "content").await?;
        assert_eq!(content.topic, want);
        assert_eq!(content.payload["content"], json!(text));
        // Only the verified page was broadcast.
        let forged = visitor
            .expect_within(Duration::from_millis(100), |f| f.event == "content")
            .await?;
        assert!(forged.is_none());
    }
    let (_, _, metrics) = http_get(&server, "/metrics").await;
    let bytes = 2 * text.len();
    assert!(
        metrics.contains(&format!("ephemeral_relayed_bytes_total {bytes}\n")),
        "{metrics}"
    );
    Ok(())
}

/// A page larger than one part reaches the visitor as `content` frames of
/// at most 64 KiB, cut on character boundaries, each saying where its
/// bytes go and how large the page is; read here as the text on the wire.
#[tokio::test]
async fn a_relayed_page_reaches_the_visitor_in_parts() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    // Escapes, then 4-byte characters, so that a cut at 64 KiB would fall
    // inside one.
    let text = format!("a\"\n{}", "😀".repeat(50_000));
    let (have, want) = page(&text);
    let mut host = connect(&server).await?;
    host.join(&have).await?;
    let mut visitor = websocket(&server.websocket_url(), Options::default()).await?;
    send_text(
        &mut visitor,
        format!(r#"["7","1","{want}","phx_join",{{}}]"#),
    )
    .await?;
    send_text(
        &mut visitor,
        format!(r#"["7","2","{want}","content_request",{{"relay":true}}]"#),
    )
    .await?;
    host.expect_push(&have, "content_request").await?;
    let Reply { status, response } = host
        .call(&have, "content", json!({"content": text}))
        .await?;
    assert_eq!((status.as_str(), response), ("ok", json!({"delivered": 1})));

    let mut received = String::new();
    let mut lengths = Vec::new();
    while received.len() < text.len() {
        let wire = tokio::time::timeout(support::WAIT, next_text(&mut visitor)).await??;
        let frame: Value = serde_json::from_str(&wire)?;
        if frame[3] != "content" {
            continue;
        }
        let part = frame[4]["content"].as_str().unwrap_or_default();
        let expected = format!(
            r#"["7",null,"{want}","content",{{"content":{},"offset":{},"size":{}}}]"#,
            serde_json::to_string(part)?,
            received.len(),
            text.len()
        );
        assert_eq!(wire, expected, "part {}", lengths.len());
        lengths.push(part.len());
        received.push_str(part);
    }
    assert!(received == text, "the parts make the page");
    // The first cut moved back to the start of a character; every part
    // but the last is as full as a cut allows.
    assert_eq!(lengths.len(), 4, "{lengths:?}");
    assert_eq!(lengths[0], 65_535);
    let (last, full) = lengths.split_last().unwrap();
    assert!(
        full.iter().all(|&n| (65_533..=65_536).contains(&n)),
        "{lengths:?}"
    );
    assert!(*last > 0);
    let (_, _, metrics) = http_get(&server, "/metrics").await;
    let bytes = text.len();
    assert!(
        metrics.contains(&format!("ephemeral_relayed_bytes_total {bytes}\n")),
        "the page counts once, not per part: {metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn signals_flow_between_sides_of_one_page_with_from_stamped() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("signals");
    let mut host = connect(&server).await?;
    let host_id = host.join_for_id(&have).await?;
    let mut visitor = connect(&server).await?;
    let visitor_id = visitor.join_for_id(&want).await?;
    let mut impostor = connect(&server).await?;
    let impostor_id = impostor.join_for_id(&want).await?;

    let offer = json!({"to": visitor_id, "type": "offer", "sdp": "v=0", "from": impostor_id});
    let offer_ref = host.push(&have, "signal", offer).await?;
    let got = visitor.expect(|f| f.event == "signal").await?;
    assert_eq!(got.topic, want);
    assert_eq!(
        Value::Object(got.payload),
        json!({"from": host_id, "type": "offer", "sdp": "v=0"}),
        "from is the sender's real id, whatever the sender claimed"
    );

    let candidate = json!({
        "to": host_id, "type": "candidate",
        "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0
    });
    visitor.push(&want, "signal", candidate).await?;
    let got = host.expect(|f| f.event == "signal").await?;
    assert_eq!(got.topic, have);
    assert_eq!(got.payload["from"], json!(visitor_id));
    assert_eq!(got.payload["sdpMLineIndex"], json!(0));
    // A delivered signal is not replied to: the answer is the receipt.
    let ok = host
        .expect_within(Duration::from_millis(100), |f| {
            f.event == "phx_reply" && f.msg_ref.as_deref() == Some(offer_ref.as_str())
        })
        .await?;
    assert!(ok.is_none(), "a delivered signal was replied to: {ok:?}");

    // Wanters cannot reach each other, nor anyone on another page.
    let sideways = json!({"to": impostor_id, "type": "offer", "sdp": "v=0"});
    let Reply { status, response } = visitor.call(&want, "signal", sideways).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "unknown_peer")
    );
    let (other_have, _) = page("another page");
    let mut stranger = connect(&server).await?;
    stranger.join(&other_have).await?;
    let across = json!({"to": visitor_id, "type": "answer", "sdp": "v=0"});
    let Reply { status, response } = stranger.call(&other_have, "signal", across).await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "unknown_peer")
    );
    let Reply { status, response } = host
        .call(&have, "signal", json!({"to": visitor_id, "type": "gossip"}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );
    assert!(
        impostor
            .expect_within(Duration::from_millis(100), |f| f.event == "signal")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn visitor_counts_follow_joins_leaves_and_disconnects() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, want) = page("counted");
    let mut visitor = connect(&server).await?;
    visitor.join(&want).await?;
    expect_count(&mut visitor, &want, 0, 1).await?;

    let mut first = connect(&server).await?;
    first.join(&have).await?;
    expect_count(&mut visitor, &want, 1, 1).await?;
    expect_count(&mut first, &have, 1, 1).await?;

    let mut second = connect(&server).await?;
    second.join(&have).await?;
    expect_count(&mut visitor, &want, 2, 1).await?;
    expect_count(&mut first, &have, 2, 1).await?;

    let Reply { status, .. } = second.call(&have, "phx_leave", json!({})).await?;
    assert_eq!(status, "ok");
    expect_count(&mut visitor, &want, 1, 1).await?;

    // An abrupt disconnect: the TCP connection just goes away.
    drop(first);
    expect_count(&mut visitor, &want, 0, 1).await?;
    let Reply { status, response } = visitor.call(&want, "content_request", json!({})).await?;
    assert_eq!((status.as_str(), reason(&response)), ("error", "no_hosts"));
    Ok(())
}

#[tokio::test]
async fn count_broadcasts_are_coalesced_under_churn() -> anyhow::Result<()> {
    let config = Config {
        count_interval_ms: 200,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("churn");
    let mut watcher = connect(&server).await?;
    watcher.join(&want).await?;
    let mut joined = Vec::new();
    for _ in 0..30 {
        let mut host = connect(&server).await?;
        host.join(&have).await?;
        joined.push(host);
    }
    expect_count(&mut watcher, &want, 30, 1).await?;
    let broadcasts = server
        .metrics()
        .count_broadcasts
        .load(std::sync::atomic::Ordering::Relaxed);
    // 31 joins; without coalescing that is 31 broadcasts per topic.
    assert!(broadcasts <= 2 * 10, "{broadcasts} broadcasts for 31 joins");
    Ok(())
}

#[tokio::test]
async fn floods_are_refused_then_cut_off() -> anyhow::Result<()> {
    let config = Config {
        messages_per_second: 5,
        message_burst: 10,
        ..Config::default()
    };
    let server = server(config).await;
    let mut client = connect(&server).await?;
    for _ in 0..15 {
        client.push("phoenix", "heartbeat", json!({})).await?;
    }
    let mut limited = 0;
    for _ in 0..15 {
        let reply = client.expect(|f| f.event == "phx_reply").await?;
        if reply.as_reply().unwrap().1.get("reason") == Some(&json!("rate_limited")) {
            limited += 1;
        }
    }
    assert!(
        (4..=6).contains(&limited),
        "{limited} of 15 refused at burst 10"
    );
    for _ in 0..30 {
        client.push("phoenix", "heartbeat", json!({})).await?;
    }
    assert_eq!(
        client.ended().await?,
        Ended::Closed(Some((
            1008,
            "flooding: kept sending after being refused".into()
        )))
    );
    // Others are unaffected.
    let mut other = connect(&server).await?;
    other.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn oversize_messages_close_with_1009() -> anyhow::Result<()> {
    let config = Config {
        max_message_bytes: 1024,
        max_frame_bytes: 1024,
        max_page_bytes: 512,
        ..Config::default()
    };
    let server = server(config).await;
    let mut client = connect(&server).await?;
    let huge = format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(2000)
    );
    client.send_text(&huge).await?;
    assert_eq!(
        client.ended().await?,
        Ended::Closed(Some((1009, "message too big".into())))
    );
    let (_, _, metrics) = http_get(&server, "/metrics").await;
    assert!(metrics.contains("ephemeral_rejected_total{reason=\"oversize_message\"} 1\n"));
    Ok(())
}

#[tokio::test]
async fn silent_sockets_are_closed_and_their_topics_freed() -> anyhow::Result<()> {
    let config = Config {
        idle_timeout_secs: 1,
        ..Config::default()
    };
    let server = server(config).await;
    let (have, want) = page("idle");
    let mut host = connect(&server).await?;
    host.join(&have).await?;
    assert_eq!(
        host.ended().await?,
        Ended::Closed(Some((1000, "idle timeout: no message or heartbeat".into())))
    );
    let mut visitor = connect(&server).await?;
    let reply = visitor.join(&want).await?;
    assert_eq!(reply["count"], json!(0));
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_going_away() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let (have, _) = page("shutdown");
    a.join(&have).await?;
    server.shutdown().await;
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.ended().await?,
            Ended::Closed(Some((1001, "server shutting down".into())))
        );
    }
    Ok(())
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let config = Config {
        allowed_origins: vec!["http://good.test".into()],
        ..Config::default()
    };
    let server = server(config).await;
    for (origin, ok) in [("http://good.test", true), ("http://evil.test", false)] {
        let mut request = server.websocket_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let result = tokio_tungstenite::connect_async(request).await;
        assert_eq!(result.is_ok(), ok, "{origin}");
    }
    Ok(())
}

#[tokio::test]
async fn health_metrics_and_pages_over_http() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (status, _, body) = http_get(&server, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut client = connect(&server).await?;
    let (have, _) = page("metrics");
    client.join(&have).await?;
    let (status, head, metrics) = http_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"));
    assert!(metrics.contains("ephemeral_connections 1\n"), "{metrics}");
    assert!(metrics.contains("ephemeral_topics 1\n"), "{metrics}");

    let hash = &have["have:".len()..];
    for path in ["/".to_string(), format!("/{hash}")] {
        let (status, head, body) = http_get(&server, &path).await;
        // 200 with the app once the client is built, 503 with a clear
        // message before; either way HTML under a strict CSP.
        assert!(status == 200 || status == 503, "{path}: {status}");
        assert!(head.contains("content-type: text/html"), "{path}");
        assert!(head.contains(
            "content-security-policy: default-src 'self'; script-src 'self' 'wasm-unsafe-eval'"
        ));
        if status == 503 {
            assert!(body.contains("cargo xtask build"));
        }
    }
    let (status, _, _) = http_get(&server, "/no-such-file.txt").await;
    assert_eq!(status, 404);
    Ok(())
}

/// One host whose single upload slot `first` holds, and `second`'s request
/// waiting for it.
struct BusyHost {
    server: signal_server::RunningServer,
    have: String,
    want: String,
    host: Client,
    host_id: String,
    first: Client,
    first_id: String,
    second: Client,
    second_id: String,
    second_ref: String,
}

impl BusyHost {
    async fn start(name: &str, queue_wait_ms: u64) -> Result<BusyHost, Error> {
        let server = server(Config {
            max_uploads_per_host: 1,
            queue_wait_ms,
            ..Config::default()
        })
        .await;
        let (have, want) = page(name);
        let mut host = connect(&server).await?;
        let host_id = host.join_for_id(&have).await?;
        let (mut first, first_id, first_ref) = ask(&server, &want).await?;
        assert_eq!(first.reply(&first_ref).await?, ok(json!({"host": host_id})));
        let (mut second, second_id, second_ref) = ask(&server, &want).await?;
        let reply = second
            .expect_within(Duration::from_millis(200), |f| {
                f.event == "phx_reply" && f.msg_ref.as_deref() == Some(second_ref.as_str())
            })
            .await?;
        assert!(
            reply.is_none(),
            "answered while the host was busy: {reply:?}"
        );
        Ok(BusyHost {
            server,
            have,
            want,
            host,
            host_id,
            first,
            first_id,
            second,
            second_id,
            second_ref,
        })
    }

    /// The reply the waiting request finally gets.
    async fn second_reply(&mut self) -> Result<Reply, Error> {
        self.second.reply(&self.second_ref).await
    }
}

/// A visitor joined to `want`, its peer id, and the ref of its request.
async fn ask(
    server: &signal_server::RunningServer,
    want: &str,
) -> Result<(Client, String, String), Error> {
    let mut visitor = connect(server).await?;
    let id = visitor.join_for_id(want).await?;
    let msg_ref = visitor.push(want, "content_request", json!({})).await?;
    Ok((visitor, id, msg_ref))
}

fn ok(response: Value) -> Reply {
    Reply {
        status: "ok".into(),
        response,
    }
}

#[tokio::test]
async fn a_busy_host_makes_requests_wait_for_a_free_slot() -> anyhow::Result<()> {
    let mut busy = BusyHost::start("slots", 10_000).await?;
    let request = busy.host.expect(|f| f.event == "content_request").await?;
    assert_eq!(request.payload["from"], json!(busy.first_id));

    // The first visitor has the page: it leaves want:, freeing the slot.
    let Reply { status, .. } = busy.first.call(&busy.want, "phx_leave", json!({})).await?;
    assert_eq!(status, "ok");
    let host_id = busy.host_id.clone();
    assert_eq!(busy.second_reply().await?, ok(json!({"host": host_id})));
    let request = busy.host.expect(|f| f.event == "content_request").await?;
    assert_eq!(request.payload["from"], json!(busy.second_id));
    let (_, _, metrics) = http_get(&busy.server, "/metrics").await;
    assert!(
        metrics.contains("ephemeral_requests_queued_total 1\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_new_host_takes_a_waiting_request() -> anyhow::Result<()> {
    let mut busy = BusyHost::start("new host", 10_000).await?;
    // Typically the first visitor itself, now hosting.
    let mut fresh = connect(&busy.server).await?;
    let fresh_id = fresh.join_for_id(&busy.have).await?;
    assert_eq!(busy.second_reply().await?, ok(json!({"host": fresh_id})));
    let request = fresh.expect(|f| f.event == "content_request").await?;
    assert_eq!(request.payload["from"], json!(busy.second_id));
    Ok(())
}

#[tokio::test]
async fn a_request_waits_no_longer_than_the_queue_wait() -> anyhow::Result<()> {
    // The first visitor never leaves; after the wait, the busy host gets
    // the second request anyway.
    let mut busy = BusyHost::start("overdue", 400).await?;
    let host_id = busy.host_id.clone();
    assert_eq!(busy.second_reply().await?, ok(json!({"host": host_id})));
    Ok(())
}

#[tokio::test]
async fn a_waiting_visitor_that_goes_is_forgotten() -> anyhow::Result<()> {
    let BusyHost {
        server,
        want,
        mut host,
        mut first,
        second,
        ..
    } = BusyHost::start("forgotten", 10_000).await?;
    drop(second);
    // Wait until the server has seen it go: two sockets left.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !http_get(&server, "/metrics")
        .await
        .2
        .contains("ephemeral_connections 2\n")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disconnect was never seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.expect(|f| f.event == "content_request").await?;
    let Reply { status, .. } = first.call(&want, "phx_leave", json!({})).await?;
    assert_eq!(status, "ok");
    let stray = host
        .expect_within(Duration::from_millis(300), |f| f.event == "content_request")
        .await?;
    assert!(
        stray.is_none(),
        "a request of a visitor that left was routed: {stray:?}"
    );
    Ok(())
}

#[tokio::test]
async fn waiting_requests_hear_no_hosts_as_soon_as_the_last_host_goes() -> anyhow::Result<()> {
    // Keep the server and the first visitor: dropping either closes sockets
    // (and frees the slot), which is not what this test is about.
    let BusyHost {
        server: _server,
        first: _first,
        host,
        mut second,
        second_ref,
        ..
    } = BusyHost::start("last host", 10_000).await?;
    let started = std::time::Instant::now();
    drop(host);
    let Reply { status, response } = second.reply(&second_ref).await?;
    assert_eq!((status.as_str(), reason(&response)), ("error", "no_hosts"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not the 10 s queue wait"
    );
    Ok(())
}

#[tokio::test]
async fn visitors_report_the_path_a_page_took_and_metrics_count_it() -> anyhow::Result<()> {
    let server = server(Config::default()).await;
    let (have, _) = page("which way");
    for path in ["direct", "turn", "turn", "relay"] {
        let mut client = connect(&server).await?;
        let Reply { status, .. } = client
            .call(&have, "phx_join", json!({ "path": path }))
            .await?;
        assert_eq!(status, "ok");
    }
    let mut author = connect(&server).await?;
    author.join(&have).await?;
    let mut liar = connect(&server).await?;
    let Reply { status, response } = liar
        .call(&have, "phx_join", json!({"path": "pigeon"}))
        .await?;
    assert_eq!(
        (status.as_str(), reason(&response)),
        ("error", "bad_payload")
    );
    let (_, _, metrics) = http_get(&server, "/metrics").await;
    for (path, n) in [("direct", 1), ("turn", 2), ("relay", 1)] {
        let line = format!("ephemeral_fetches_total{{path=\"{path}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    Ok(())
}
