//! The server under test on loopback, the Phoenix client pointed at it,
//! raw TCP from chosen source addresses, and a tiny HTTP GET.

#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use ephemeral_phoenix_client::{Client, Error, Frame, Options};
use serde_json::{Value, json};
use signal_server::{Config, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(5);

pub async fn server(config: Config) -> RunningServer {
    let config = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        // Tests run side by side: any free UDP port for STUN/TURN.
        turn_port: 0,
        ..config
    };
    signal_server::start(config).await.expect("server starts")
}

pub fn page(text: &str) -> (String, String) {
    let hash = ephemeral_shared::PageHash::of(text.as_bytes()).to_string();
    (format!("have:{hash}"), format!("want:{hash}"))
}

pub async fn connect(server: &RunningServer) -> Result<Client, Error> {
    Client::connect(&server.websocket_url()).await
}

/// Connects from `source` (any 127.0.0.0/8 address is this machine), so
/// a test can be a different client address than its bystanders.
pub async fn connect_from(server: &RunningServer, source: &str) -> Result<Client, Error> {
    Client::connect_from(&server.websocket_url(), address(source)).await
}

pub fn from_address(source: &str) -> Options {
    Options::default().source(address(source))
}

fn address(source: &str) -> IpAddr {
    source.parse().expect("an IP address")
}

/// A TCP connection to the server from `source`.
pub async fn tcp_from(server: &RunningServer, source: &str) -> Result<TcpStream, Error> {
    ephemeral_phoenix_client::tcp(server.local_addr(), from_address(source)).await
}

/// The `reason` of an error reply's response.
pub fn reason(response: &Value) -> &str {
    response["reason"].as_str().unwrap_or("<none>")
}

/// The `visitors_count` on `topic` that says (count, waiting); earlier
/// ones with other numbers are kept unread.
pub async fn expect_count(
    client: &mut Client,
    topic: &str,
    count: u64,
    waiting: u64,
) -> Result<Frame, Error> {
    client
        .expect(|f| {
            f.topic == topic
                && f.event == "visitors_count"
                && f.payload.get("count") == Some(&json!(count))
                && f.payload.get("waiting") == Some(&json!(waiting))
        })
        .await
}

/// Reads until the server closes `stream` (EOF or reset), up to `wait`;
/// whether it did.
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `GET path` over HTTP/1.1; returns (status, headers, body).
pub async fn http_get(server: &RunningServer, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}
