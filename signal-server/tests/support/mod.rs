//! A Phoenix V2 test client over a real websocket, and a tiny HTTP GET.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use ephemeral_shared::frame::Frame;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signal_server::{Config, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// What a client saw when the server ended the connection.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<(u16, String)>),
    Dropped,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Frames read but not yet asked for.
    pending: VecDeque<Frame>,
    /// The join ref used for each topic.
    joins: Vec<(String, String)>,
}

impl Client {
    pub async fn connect(server: &RunningServer) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(server.websocket_url())
            .await
            .expect("websocket connects");
        Self::over(ws)
    }

    fn over(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            next_ref: 0,
            pending: VecDeque::new(),
            joins: Vec::new(),
        }
    }

    /// Connects from `source` (any 127.0.0.0/8 address is this machine), so
    /// a test can be a different client address than its bystanders.
    /// `receive_buffer` shrinks the socket's kernel buffer, for a client
    /// that stops reading to fill up fast.
    pub async fn try_connect_from(
        server: &RunningServer,
        source: &str,
        receive_buffer: Option<u32>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let tcp = tcp_from(server, source, receive_buffer).await?;
        let (ws, _) =
            tokio_tungstenite::client_async(server.websocket_url(), MaybeTlsStream::Plain(tcp))
                .await?;
        Ok(Self::over(ws))
    }

    pub async fn connect_from(server: &RunningServer, source: &str) -> Self {
        Self::try_connect_from(server, source, None)
            .await
            .expect("websocket connects")
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Sends, not minding a server that already closed the socket.
    pub async fn send_lossy(&mut self, message: Message) -> bool {
        self.ws.send(message).await.is_ok()
    }

    /// Heartbeat round trips, `n` in a row; the slowest.
    pub async fn slowest_heartbeat(&mut self, n: usize) -> Duration {
        let mut slowest = Duration::ZERO;
        for _ in 0..n {
            let start = std::time::Instant::now();
            let (status, _) = self.call("phoenix", "heartbeat", json!({})).await;
            assert_eq!(status, "ok");
            slowest = slowest.max(start.elapsed());
        }
        slowest
    }

    /// Starts the close handshake; returns what the server answered.
    pub async fn close_and_hear_back(&mut self) -> Ended {
        let _ = self.ws.send(Message::Close(None)).await;
        self.ended().await
    }

    /// Pushes an event; returns its ref.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let msg_ref = self.next_ref.to_string();
        let join_ref = self
            .joins
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone());
        let frame = json!([join_ref, msg_ref, topic, event, payload]);
        self.send_raw(&frame.to_string()).await;
        msg_ref
    }

    /// Pushes and waits for the reply: (status, response).
    pub async fn call(&mut self, topic: &str, event: &str, payload: Value) -> (String, Value) {
        let msg_ref = self.push(topic, event, payload).await;
        self.reply(&msg_ref).await
    }

    pub async fn reply(&mut self, msg_ref: &str) -> (String, Value) {
        let frame = self
            .expect(|f| f.event == "phx_reply" && f.msg_ref.as_deref() == Some(msg_ref))
            .await;
        let (status, response) = frame.as_reply().expect("a reply");
        (status.to_string(), Value::Object(response.clone()))
    }

    /// Joins; returns the ok response.
    pub async fn join(&mut self, topic: &str) -> Value {
        self.next_ref += 1;
        let join_ref = self.next_ref.to_string();
        self.joins.push((topic.to_string(), join_ref.clone()));
        let frame = json!([join_ref, join_ref, topic, "phx_join", {}]);
        self.send_raw(&frame.to_string()).await;
        let (status, response) = self.reply(&join_ref).await;
        assert_eq!(status, "ok", "join {topic}: {response}");
        response
    }

    pub async fn peer_id(&mut self, topic: &str) -> String {
        self.join(topic).await["peer_id"]
            .as_str()
            .expect("peer_id")
            .to_string()
    }

    /// The next frame matching `wanted`, within [`WAIT`]; others are kept.
    pub async fn expect(&mut self, wanted: impl Fn(&Frame) -> bool) -> Frame {
        self.expect_within(WAIT, &wanted)
            .await
            .unwrap_or_else(|| panic!("no matching frame within {WAIT:?}; saw {:?}", self.pending))
    }

    pub async fn expect_within(
        &mut self,
        wait: Duration,
        wanted: &impl Fn(&Frame) -> bool,
    ) -> Option<Frame> {
        if let Some(i) = self.pending.iter().position(wanted) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let Ok(Message::Text(text)) = next else {
                continue;
            };
            let frame = Frame::parse(text.as_str()).expect("server sends valid frames");
            if wanted(&frame) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// The latest `visitors_count` on `topic` once it equals (count, waiting).
    pub async fn expect_count(&mut self, topic: &str, count: u64, waiting: u64) {
        let matches = |f: &Frame| {
            f.topic == topic
                && f.event == "visitors_count"
                && f.payload.get("count") == Some(&json!(count))
                && f.payload.get("waiting") == Some(&json!(waiting))
        };
        self.expect(matches).await;
    }

    /// Reads until the server ends the connection.
    pub async fn ended(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection still open after {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Ended::Dropped,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ended::Closed(
                        frame.map(|CloseFrame { code, reason }| {
                            (u16::from(code), reason.to_string())
                        }),
                    );
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A TCP connection to the server from `source`.
pub async fn tcp_from(
    server: &RunningServer,
    source: &str,
    receive_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(format!("{source}:0").parse().expect("a source address"))?;
    socket.connect(server.local_addr()).await
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
