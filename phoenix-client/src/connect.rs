use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Ended, Error};

/// A websocket as this crate opens it: plain TCP, no TLS.
pub type Websocket = WebSocketStream<TcpStream>;

/// Long enough for a debug build on two loaded cores; far shorter than a
/// hung test.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Phoenix endpoint of an Ephemeral server listening at `addr`.
pub fn websocket_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws/websocket?vsn=2.0.0")
}

/// How to connect, and how long a [`crate::Client`] waits.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub(crate) source: Option<IpAddr>,
    pub(crate) receive_buffer: Option<u32>,
    pub(crate) connect_timeout: Duration,
    pub(crate) wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            source: None,
            receive_buffer: None,
            connect_timeout: DEFAULT_TIMEOUT,
            wait: DEFAULT_TIMEOUT,
        }
    }
}

impl Options {
    /// Connects from `source`. Linux routes all of 127.0.0.0/8 to `lo`, so
    /// a test can be many client addresses (the server's per-address
    /// limits fall on each apart), and each address has its own ~28k
    /// ephemeral ports towards one server port.
    pub fn source(mut self, source: impl Into<IpAddr>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the socket's kernel receive buffer (`SO_RCVBUF`) before
    /// connecting, so the window it advertises is small from the first
    /// byte: a reader that stalls then holds almost nothing in its own
    /// kernel, and what the server sends it piles up at the server.
    pub fn receive_buffer(mut self, bytes: u32) -> Self {
        self.receive_buffer = Some(bytes);
        self
    }

    /// How long the TCP connection and the websocket handshake may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a client waits for a reply, an expected frame or the end
    /// of the connection.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

/// A TCP connection to `addr`, for tests that speak below the websocket.
pub async fn tcp(addr: SocketAddr, options: Options) -> Result<TcpStream, Error> {
    let to = addr.to_string();
    within(options.connect_timeout, to, open_tcp(addr, &options)).await
}

/// A websocket to `url` (`ws://` only).
pub async fn websocket(url: &str, options: Options) -> Result<Websocket, Error> {
    within(options.connect_timeout, url.to_string(), async {
        let stream = tcp_to_host(url, &options).await?;
        // At tens of thousands of connections the library's 128 KiB
        // buffers would cost the load generator gigabytes.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|source| Error::Handshake {
                url: url.to_string(),
                source,
            })?;
        Ok(ws)
    })
    .await
}

/// The next text message, skipping pings, pongs and binary messages.
pub async fn next_text(ws: &mut Websocket) -> Result<String, Error> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => return Err(Error::Ended(Ended::closed(frame))),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(Error::Receive(error)),
            None => return Err(Error::Ended(Ended::Dropped)),
        }
    }
}

pub async fn send_text(ws: &mut Websocket, text: impl Into<String>) -> Result<(), Error> {
    ws.send(Message::text(text.into()))
        .await
        .map_err(Error::Send)
}

async fn within<T>(
    timeout: Duration,
    to: String,
    connecting: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| Error::ConnectTimeout { to, timeout })?
}

/// A TCP connection to the host of `url`: its addresses in turn, those of
/// the source's family only when a source is set.
async fn tcp_to_host(url: &str, options: &Options) -> Result<TcpStream, Error> {
    let bad = |reason: String| Error::BadUrl {
        url: url.to_string(),
        reason,
    };
    let request = url
        .into_client_request()
        .map_err(|error| bad(error.to_string()))?;
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(bad("only ws:// (this client has no TLS)".into()));
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| Error::Resolve {
            url: url.to_string(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        if options
            .source
            .is_some_and(|source| source.is_ipv4() != addr.is_ipv4())
        {
            continue;
        }
        match open_tcp(addr, options).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| bad("no address of the host fits the source address".into())))
}

async fn open_tcp(addr: SocketAddr, options: &Options) -> Result<TcpStream, Error> {
    let failed = |action| {
        move |source| Error::Tcp {
            addr,
            action,
            source,
        }
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed("create a socket"))?;
    if let Some(bytes) = options.receive_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .map_err(failed("set SO_RCVBUF"))?;
    }
    if let Some(source) = options.source {
        // Thousands of connections from one source address leave ports in
        // TIME_WAIT; SO_REUSEADDR lets the next bind reuse them instead of
        // running out of ephemeral ports.
        socket
            .set_reuseaddr(true)
            .map_err(failed("set SO_REUSEADDR"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(failed("bind the source address"))?;
    }
    let stream = socket.connect(addr).await.map_err(failed("connect"))?;
    // Signals are small and latency-bound: never hold one back for Nagle.
    stream
        .set_nodelay(true)
        .map_err(failed("set TCP_NODELAY"))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_websocket_urls_are_opened() {
        for url in ["wss://example.test/ws", "http://example.test/", "not a url"] {
            let error = websocket(url, Options::default()).await.err();
            assert!(
                matches!(error, Some(Error::BadUrl { .. })),
                "{url}: {error:?}"
            );
        }
    }
}
