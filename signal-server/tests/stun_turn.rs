//! The built-in STUN/TURN server, driven by a real TURN client (the `turn`
//! crate's) over loopback UDP: Binding answers, allocations with the
//! credentials a session is handed, and everything that keeps TURN from
//! being an open proxy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use ephemeral_phoenix_client::Client;
use ephemeral_shared::protocol::Reason;
use signal_server::{Config, RunningServer};
use support::{connect, page, server};
use tokio::net::UdpSocket;
use turn::client::{Client as TurnClient, ClientConfig};
use util::Conn;

/// A TURN client on a fresh loopback socket.
async fn turn_client(server: &RunningServer, username: &str, password: &str) -> TurnClient {
    let address = server.stun_turn_addr().expect("STUN/TURN runs").to_string();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: address.clone(),
        turn_serv_addr: address,
        username: username.into(),
        password: password.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .expect("a TURN client");
    client.listen().await.expect("the client listens");
    client
}

/// The TURN credentials a session is handed in its join reply.
async fn session_credentials(server: &RunningServer) -> (Client, String, String) {
    let mut client = connect(server).await.expect("connects");
    let reply = client.join(&page("turn").0).await.expect("joins");
    let turn = reply["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"][0].as_str().unwrap().starts_with("turn:"))
        .expect("a TURN server in the join reply")
        .clone();
    let username = turn["username"].as_str().unwrap().to_string();
    let password = turn["credential"].as_str().unwrap().to_string();
    (client, username, password)
}

/// A UDP peer that reports what reaches it and answers "pong".
async fn echo_peer() -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = tx.send(buf[..len].to_vec()).await;
            let _ = socket.send_to(b"pong", from).await;
        }
    });
    (address, rx)
}

fn loopback_allowed() -> Config {
    Config {
        turn_allow_peers: vec!["127.0.0.0/8".parse().unwrap()],
        ..Config::default()
    }
}

#[tokio::test]
async fn stun_binding_tells_a_client_its_address() {
    for no_turn in [false, true] {
        let server = server(Config {
            no_turn,
            ..Config::default()
        })
        .await;
        let client = turn_client(&server, "", "").await;
        let address = server.stun_turn_addr().unwrap().to_string();
        let mapped = client
            .send_binding_request_to(&address)
            .await
            .expect("a Binding answer");
        assert_eq!(mapped.ip().to_string(), "127.0.0.1");
        client.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_session_relays_through_turn_with_its_own_credentials() {
    let server = server(loopback_allowed()).await;
    let (_session, username, password) = session_credentials(&server).await;
    let client = turn_client(&server, &username, &password).await;
    let relay = client.allocate().await.expect("an allocation");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    let (peer, mut received) = echo_peer().await;
    relay.send_to(b"ping", peer).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("the peer hears the relay")
        .unwrap();
    assert_eq!(got, b"ping");
    let mut buf = [0u8; 64];
    let (len, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .expect("the answer comes back through the relay")
        .unwrap();
    assert_eq!((&buf[..len], from), (&b"pong"[..], peer));
    let metrics = server.metrics();
    assert_eq!(
        metrics
            .turn_allocations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        metrics
            .turn_relayed_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 8
    );
    client.close().await.unwrap();
}

#[tokio::test]
async fn wrong_expired_and_foreign_credentials_are_refused() {
    let server = server(Config {
        turn_secret: Some("s3cret".into()),
        ..loopback_allowed()
    })
    .await;
    let (_session, username, password) = session_credentials(&server).await;
    let wrong = turn_client(&server, &username, "not the password").await;
    assert!(wrong.allocate().await.is_err(), "a wrong password");

    let expired_name = format!("1000000000:{}", username.split_once(':').unwrap().1);
    let expired_password = {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"s3cret");
        BASE64_STANDARD.encode(ring::hmac::sign(&key, expired_name.as_bytes()).as_ref())
    };
    let expired = turn_client(&server, &expired_name, &expired_password).await;
    assert!(expired.allocate().await.is_err(), "expired credentials");

    let foreign = turn_client(&server, "alice", "password").await;
    assert!(foreign.allocate().await.is_err(), "a name we never minted");

    let metrics = server.metrics();
    assert!(metrics.rejected(Reason::TurnExpired) >= 1);
    assert!(metrics.rejected(Reason::TurnCredentials) >= 1);
    // The session's own credentials still work.
    let right = turn_client(&server, &username, &password).await;
    assert!(right.allocate().await.is_ok());
}

#[tokio::test]
async fn turn_refuses_private_peers_caps_allocations_and_bytes() {
    // Default ranges: loopback is refused.
    let server = server(Config {
        turn_max_allocations: 2,
        ..Config::default()
    })
    .await;
    let (_session, username, password) = session_credentials(&server).await;
    let (peer, mut received) = echo_peer().await;
    let first = turn_client(&server, &username, &password).await;
    let relay = first.allocate().await.expect("an allocation");
    relay.send_to(b"to loopback", peer).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(500), received.recv()).await;
    assert!(heard.is_err(), "TURN relayed to a loopback peer");
    assert!(server.metrics().rejected(Reason::TurnPeerAddress) >= 1);

    let second = turn_client(&server, &username, &password).await;
    assert!(second.allocate().await.is_ok());
    let third = turn_client(&server, &username, &password).await;
    assert!(
        third.allocate().await.is_err(),
        "a third allocation for one session"
    );
    assert!(server.metrics().rejected(Reason::TurnAllocations) >= 1);

    // A byte quota per allocation.
    let server = server_with_quota(1000).await;
    let (_session, username, password) = session_credentials(&server).await;
    let (peer, mut received) = echo_peer().await;
    let client = turn_client(&server, &username, &password).await;
    let relay = client.allocate().await.expect("an allocation");
    let mut delivered = 0;
    for _ in 0..10 {
        relay.send_to(&[7u8; 300], peer).await.unwrap();
        if let Ok(Some(bytes)) =
            tokio::time::timeout(Duration::from_millis(300), received.recv()).await
        {
            delivered += bytes.len();
        }
    }
    assert!(
        delivered <= 1000,
        "{delivered} bytes past a 1000-byte quota"
    );
    assert!(delivered >= 300, "nothing relayed at all");
    assert!(server.metrics().rejected(Reason::TurnQuota) >= 1);
}

async fn server_with_quota(bytes: u64) -> RunningServer {
    server(Config {
        turn_quota_bytes: bytes,
        ..loopback_allowed()
    })
    .await
}

#[tokio::test]
async fn no_turn_keeps_stun_and_refuses_allocations() {
    let server = server(Config {
        no_turn: true,
        ..loopback_allowed()
    })
    .await;
    let mut client = connect(&server).await.expect("connects");
    let reply = client.join(&page("stun only").0).await.expect("joins");
    let urls: Vec<&str> = reply["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["urls"][0].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].starts_with("stun:127.0.0.1:"));

    let none = signal_server::start(Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        no_stun: true,
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(none.stun_turn_addr().is_none());
}
