//! The load generator's websocket clients: a raw websocket bound to a
//! chosen loopback source address (so tens of thousands of connections do
//! not run out of ephemeral ports), and on top of it a minimal Phoenix V2
//! client for our server. Also the payloads every benchmark sends: pages
//! and an SDP-sized signal body.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_shared::{Frame, PageHash};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

/// How long [`Phoenix::join_patiently`] waits before asking again.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long [`Phoenix::close`] waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where a websocket server listens, and the URL to ask for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub url: String,
}

impl Endpoint {
    /// Our server's Phoenix endpoint at `addr`.
    pub fn phoenix(addr: SocketAddr) -> Self {
        Self {
            addr,
            url: format!("ws://{addr}/ws/websocket?vsn=2.0.0"),
        }
    }

    /// A plain websocket server's root at `addr`.
    pub fn root(addr: SocketAddr) -> Self {
        Self {
            addr,
            url: format!("ws://{addr}/"),
        }
    }
}

/// The loopback source address for the `i`-th of many connections. Linux
/// routes all of 127.0.0.0/8 to `lo`; each source address has its own
/// ~28k ephemeral ports towards one server port.
pub fn source_ip(i: usize) -> Ipv4Addr {
    const SOURCES: usize = 8;
    Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8)
}

/// Opens a websocket from `source` (any loopback address) to `endpoint`.
/// The client keeps small buffers: at 20k connections the library's
/// 128 KiB default would cost the load generator gigabytes.
pub async fn connect(endpoint: &Endpoint, source: Ipv4Addr) -> Result<Ws> {
    connect_with(endpoint, source, None).await
}

/// [`connect`], with the socket's kernel receive buffer (`SO_RCVBUF`) set
/// to `receive_buffer` bytes before connecting, so the window it
/// advertises is small from the first byte: a reader that stalls then
/// holds almost nothing in its own kernel, and what the server sends it
/// piles up at the server.
pub async fn connect_with(
    endpoint: &Endpoint,
    source: Ipv4Addr,
    receive_buffer: Option<u32>,
) -> Result<Ws> {
    let socket = TcpSocket::new_v4().context("cannot create a TCP socket")?;
    // Benchmarks that reconnect thousands of times from one source address
    // leave ports in TIME_WAIT; SO_REUSEADDR lets the next bind reuse them
    // instead of running out of ephemeral ports.
    socket
        .set_reuseaddr(true)
        .context("cannot set SO_REUSEADDR")?;
    if let Some(bytes) = receive_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .with_context(|| format!("cannot set SO_RCVBUF to {bytes}"))?;
    }
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("cannot bind {source}:0"))?;
    let stream = socket
        .connect(endpoint.addr)
        .await
        .with_context(|| format!("cannot connect to {} from {source}", endpoint.addr))?;
    // Signals are small and latency-bound: never hold one back for Nagle.
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(endpoint.url.as_str(), stream, Some(config))
            .await
            .with_context(|| format!("websocket handshake with {} failed", endpoint.url))?;
    Ok(ws)
}

/// The next text message, skipping pings and pongs; an error once the
/// server closed.
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => bail!("server closed the websocket: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("websocket read failed"),
            None => bail!("server ended the websocket"),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: String) -> Result<()> {
    ws.send(Message::text(text))
        .await
        .context("websocket write failed")
}

/// A Phoenix V2 client over one websocket: refs, joins, pushes, frames.
pub struct Phoenix {
    ws: Ws,
    next_ref: u64,
    /// The join ref of each joined topic; pushes on a topic carry it.
    joins: Vec<(String, String)>,
}

impl Phoenix {
    pub async fn connect(endpoint: &Endpoint, source: Ipv4Addr) -> Result<Self> {
        Self::connect_with(endpoint, source, None).await
    }

    /// [`Phoenix::connect`] with a kernel receive buffer of
    /// `receive_buffer` bytes (see [`connect_with`]).
    pub async fn connect_with(
        endpoint: &Endpoint,
        source: Ipv4Addr,
        receive_buffer: Option<u32>,
    ) -> Result<Self> {
        Ok(Self {
            ws: connect_with(endpoint, source, receive_buffer).await?,
            next_ref: 0,
            joins: Vec::new(),
        })
    }

    /// Pushes `event` on `topic`; returns the push's ref.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> Result<String> {
        let (join_ref, msg_ref) = self.next_refs(topic);
        let frame = json!([join_ref, msg_ref, topic, event, payload]);
        send_text(&mut self.ws, frame.to_string()).await?;
        Ok(msg_ref)
    }

    /// The refs of the next push on `topic` (its join ref, if joined, and
    /// a fresh message ref), for a caller that writes the frame's text
    /// itself with [`Phoenix::send_raw`], e.g. to size it to the byte.
    pub fn next_refs(&mut self, topic: &str) -> (Option<String>, String) {
        self.next_ref += 1;
        let join_ref = self
            .joins
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone());
        (join_ref, self.next_ref.to_string())
    }

    /// Sends a frame's text as it is.
    pub async fn send_raw(&mut self, text: String) -> Result<()> {
        send_text(&mut self.ws, text).await
    }

    /// Joins `topic` and returns the ok response. Frames that arrive before
    /// the reply are dropped: nothing else is expected before a join
    /// completes in these benchmarks.
    pub async fn join(&mut self, topic: &str) -> Result<Map<String, Value>> {
        match self.try_join(topic).await? {
            Ok(response) => Ok(response),
            Err(response) => bail!("join {topic} refused: {}", Value::Object(response)),
        }
    }

    /// Joins `topic`, and when the server refuses for a rate (the socket's
    /// or its address's joins per second), waits and asks again until
    /// `deadline`: with the server's per-address limits in force, clients
    /// that share an address and join at once are paced, not failed.
    pub async fn join_patiently(
        &mut self,
        topic: &str,
        deadline: Instant,
    ) -> Result<Map<String, Value>> {
        loop {
            let response = match self.try_join(topic).await? {
                Ok(response) => return Ok(response),
                Err(response) => response,
            };
            let refused = || format!("join {topic} refused: {}", Value::Object(response.clone()));
            if !is_rate_refusal(&response) {
                bail!(refused());
            }
            if Instant::now() + JOIN_RETRY_PAUSE >= deadline {
                bail!("{} until the deadline", refused());
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
        }
    }

    /// Sends a join and waits for its reply: `Ok` with the ok response, or
    /// `Err` with the error response (the topic is then not joined).
    async fn try_join(
        &mut self,
        topic: &str,
    ) -> Result<std::result::Result<Map<String, Value>, Map<String, Value>>> {
        self.next_ref += 1;
        let join_ref = self.next_ref.to_string();
        let frame = json!([join_ref, join_ref, topic, "phx_join", {}]);
        send_text(&mut self.ws, frame.to_string()).await?;
        let frame = self.reply_to(&join_ref).await?;
        let Some((status, response)) = frame.as_reply() else {
            bail!("join {topic}: expected a reply, got {}", frame.event);
        };
        if status != "ok" {
            return Ok(Err(response.clone()));
        }
        self.joins.push((topic.to_string(), join_ref));
        Ok(Ok(response.clone()))
    }

    /// Leaves `topic` and waits for the server's ok.
    pub async fn leave(&mut self, topic: &str) -> Result<()> {
        let msg_ref = self.push(topic, "phx_leave", json!({})).await?;
        self.joins.retain(|(t, _)| t != topic);
        let frame = self.reply_to(&msg_ref).await?;
        match frame.as_reply() {
            Some(("ok", _)) => Ok(()),
            Some((_, response)) => {
                bail!("leave {topic} refused: {}", Value::Object(response.clone()))
            }
            None => bail!("leave {topic}: expected a reply, got {}", frame.event),
        }
    }

    /// The frame that carries `msg_ref`, dropping the ones before it.
    async fn reply_to(&mut self, msg_ref: &str) -> Result<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.msg_ref.as_deref() == Some(msg_ref) {
                return Ok(frame);
            }
        }
    }

    /// Closes the websocket as a browser does: a close frame, then reading
    /// until the server's close (at most `CLOSE_WAIT`).
    pub async fn close(mut self) -> Result<()> {
        self.ws
            .close(None)
            .await
            .context("cannot send a close frame")?;
        let drained = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        });
        drained
            .await
            .with_context(|| format!("the server did not close within {CLOSE_WAIT:?}"))
    }

    /// Joins `topic` and returns the peer id the server assigned.
    pub async fn join_for_id(&mut self, topic: &str) -> Result<String> {
        let response = self.join(topic).await?;
        peer_id(&response, topic)
    }

    /// The next frame the server sends.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        let text = next_text(&mut self.ws).await?;
        Frame::parse(&text).with_context(|| format!("server sent an invalid frame: {text:.80}"))
    }
}

/// The peer id a join of `topic` was answered with.
pub fn peer_id(response: &Map<String, Value>, topic: &str) -> Result<String> {
    response
        .get("peer_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("join {topic}: reply without a peer_id"))
}

/// The `reason` of an error reply's response, e.g. `rate_limited`.
pub fn refusal_reason(response: &Map<String, Value>) -> &str {
    response
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
}

/// Whether an error response refuses for a rate (per socket or per
/// address), so that asking again later can succeed.
pub fn is_rate_refusal(response: &Map<String, Value>) -> bool {
    matches!(
        refusal_reason(response),
        "rate_limited" | "address_rate_limited" | "relay_quota"
    )
}

/// A page of `bytes` bytes of UTF-8 text, distinct for each `seed`, and
/// its address.
pub fn page(bytes: usize, seed: u64) -> (String, PageHash) {
    let header = format!("# Benchmark page {seed}\n\n");
    let line = "Pages live only in their visitors' browsers; the server keeps none.\n";
    let mut text = header;
    while text.len() < bytes {
        text.push_str(line);
    }
    text.truncate(bytes);
    let hash = PageHash::of(text.as_bytes());
    (text, hash)
}

/// An SDP-sized body for offers and answers: a data-channel-only offer
/// from webrtc-rs with its ICE credentials and fingerprint is ~600 bytes,
/// and every system in the signaling comparison relays this same string.
pub fn sdp() -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 7406338236734462519 671458036 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
         a=fingerprint:sha-256 4B:6C:7E:3A:90:11:AA:C2:5D:02:9F:41:7B:8E:63:D4:\
         2C:19:F0:88:5A:B7:11:3E:CD:40:72:9A:E1:55:0F:6B\r\na=group:BUNDLE 0\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
         a=max-message-size:262144\r\na=ice-ufrag:QmYbPHvUzZlzKkQe\r\n\
         a=ice-pwd:tGyuTGEbXcdbFVzLvBqCvFmIZXqCIBLS\r\n",
    );
    while sdp.len() < 600 {
        sdp.push_str("a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n");
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_the_size_asked_and_distinct_hashes() {
        let (a, ha) = page(10 * 1024, 1);
        let (b, hb) = page(10 * 1024, 2);
        assert_eq!(a.len(), 10 * 1024);
        assert_eq!(b.len(), 10 * 1024);
        assert_ne!(ha, hb);
        assert!(ha.matches(a.as_bytes()));
    }

    #[test]
    fn sources_stay_on_loopback() {
        for i in 0..20 {
            assert!(source_ip(i).is_loopback());
        }
    }
}
