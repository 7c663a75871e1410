//! Ephemeral's signaling server. It routes `have:<hash>` / `want:<hash>`
//! topics over Phoenix Channels V2 JSON, picks which host serves each
//! request, relays WebRTC signals and (as a fallback) pages between peers,
//! and broadcasts how many hosts a page has. It stores no page.
//!
//! ```text
//!  http (accept, per-address cap, timeouts)
//!    └─ Router ── /ws/websocket ──► upgrade ──► connection::serve (one task)
//!        │                                   │  Session: limits, joins, routing
//!        ├── /healthz, /metrics              ▼
//!        └── /, /<hash>, /<file> ◄─ assets   Registry: decisions → frames
//!                                            ├─ membership: pages → members
//!                                            ├─ shared::routing (the policy)
//!                                            ├─ run_timers (one, at deadlines)
//!                                            └─ broadcast_counts (coalesced)
//!   with --redis: cluster ── pages homed on other nodes, through Redis
//! ```
//!
//! - [`config`]: every setting and limit, from flags or `EPHEMERAL_*`.
//! - [`http`]: the listener, per-address connection cap, HTTP timeouts.
//! - [`lean_io`]: the TCP stream under HTTP and websockets, which reads
//!   large and keeps no read memory while a connection is idle.
//! - [`addresses`]: client addresses (through trusted proxies) and their
//!   limits.
//! - [`upgrade`]: the websocket handshake, handing over the TCP stream.
//! - [`connection`]: one socket, start to close, reading and writing.
//! - [`conn`]: the handle others reach a socket by, and its byte-bounded
//!   queue.
//! - [`membership`]: who is on which page, each page under its own lock.
//! - [`registry`]: routing on the wire: the routing policy's decisions as
//!   frames, the one timer, count broadcasts.
//! - [`timers`]: each page's next routing deadline, for the one timer.
//! - [`cluster`]: with `--redis`, many nodes as one: each page's routing
//!   state on its home node, the rest forwarded through Redis.
//! - [`stun_turn`]: the built-in STUN/TURN server and its credentials.
//! - [`metrics`]: counters for `/metrics`.
//! - [`assets`]: the embedded web client.
//!
//! Embedders and tests call [`start`] (binds, serves in the background);
//! the binary calls [`run`] (serves until SIGINT/SIGTERM).

pub mod addresses;
pub mod assets;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod connection;
pub mod http;
pub mod lean_io;
pub mod membership;
pub mod metrics;
pub mod registry;
pub mod stun_turn;
pub mod timers;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use addresses::{AddressLimits, Addresses, Kind};
use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use connection::Admission;
use ephemeral_shared::protocol::Reason;
use ephemeral_shared::routing::Limits;
use registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tungstenite::protocol::WebSocketConfig;

pub use config::Config;
pub use metrics::Metrics;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// With `--redis`: this node's part in the cluster.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// The built-in STUN/TURN server, unless `--no-stun`.
    pub stun_turn: Option<Arc<stun_turn::StunTurn>>,
    pub metrics: Arc<Metrics>,
    /// Every client address with a connection open, and its limits.
    pub addresses: Arc<Addresses>,
    /// Flips to `true` once: every connection then closes with 1001.
    shutdown: watch::Receiver<bool>,
    /// Caps open websockets; a permit lives as long as its connection.
    connection_limit: Arc<Semaphore>,
    /// Cloned into every connection task; when all clones are gone, every
    /// connection has finished (the receiver sees the channel close).
    connections_done: mpsc::Sender<()>,
}

/// A server running in the background.
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stun_turn: Option<Arc<stun_turn::StunTurn>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    serve_task: tokio::task::JoinHandle<()>,
    /// The Redis link, with `--redis`: it says goodbye to the cluster.
    link_task: Option<tokio::task::JoinHandle<()>>,
    connections_done: mpsc::Receiver<()>,
}

impl RunningServer {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://…/ws/websocket?vsn=2.0.0` for this server.
    pub fn websocket_url(&self) -> String {
        format!("ws://{}/ws/websocket?vsn=2.0.0", self.local_addr)
    }

    /// The UDP address of the built-in STUN/TURN server, if it runs.
    pub fn stun_turn_addr(&self) -> Option<SocketAddr> {
        self.stun_turn.as_ref().map(|service| service.local_addr())
    }

    /// Where `/metrics` is served when `--metrics-bind` moved it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Closes every connection with "going away", stops listening, and
    /// waits (up to 5 s) for connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(service) = &self.stun_turn {
            service.close().await;
        }
        let wait = async {
            let _ = (&mut self.serve_task).await;
            while self.connections_done.recv().await.is_some() {}
            if let Some(link) = &mut self.link_task {
                let _ = link.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 5 s; stopping anyway");
            self.serve_task.abort();
        }
    }
}

/// Binds `config.bind` and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let local_addr = listener.local_addr().context("listener has no address")?;
    let metrics_listener = match config.metrics_bind {
        Some(bind) => Some(
            TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot listen on {bind} for /metrics"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(listener) => Some(listener.local_addr().context("listener has no address")?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let routing = Limits {
        max_uploads_per_host: config.max_uploads_per_host,
        queue_wait: config.queue_wait(),
        slot_timeout: config.slot_timeout(),
    };
    let addresses = Addresses::new(AddressLimits {
        connections: config.max_connections_per_address,
        connections_per_second: config.connections_per_second_per_address,
        messages_per_second: config.messages_per_second_per_address,
        bytes_per_second: config.bytes_per_second_per_address as u64,
        joins_per_second: config.joins_per_second_per_address,
        relay_bytes_per_second: config.relay_bytes_per_second_per_address as u64,
        largest_message: config.max_message_bytes as u64,
        largest_page: config.max_page_bytes as u64,
    });
    let (registry, cluster, link) = match &config.redis_url {
        None => (
            Arc::new(Registry::new(metrics.clone(), routing)),
            None,
            None,
        ),
        Some(url) => {
            let (registry, cluster, link) = clustered(&config, url, routing, &metrics)?;
            (registry, Some(cluster), Some(link))
        }
    };
    let stun_turn = if config.no_stun {
        None
    } else {
        let service =
            stun_turn::StunTurn::start(stun_turn_config(&config), metrics.clone()).await?;
        Some(Arc::new(service))
    };
    let state = Arc::new(AppState {
        registry,
        cluster: cluster.clone(),
        stun_turn: stun_turn.clone(),
        metrics: metrics.clone(),
        addresses,
        shutdown: shutdown_rx.clone(),
        connection_limit: Arc::new(Semaphore::new(config.max_connections)),
        connections_done: done_tx,
        config,
    });

    let counts_state = state.clone();
    let counts_shutdown = shutdown_rx.clone();
    tokio::spawn(async move {
        let interval = counts_state.config.count_interval();
        counts_state
            .registry
            .broadcast_counts(interval, counts_shutdown)
            .await;
    });
    let timer_state = state.clone();
    let timer_shutdown = shutdown_rx.clone();
    tokio::spawn(async move { timer_state.registry.run_timers(timer_shutdown).await });
    let link_task = match (cluster, link) {
        (Some(cluster), Some((client, outgoing))) => Some(tokio::spawn(cluster::link::run(
            cluster,
            client,
            outgoing,
            shutdown_rx.clone(),
        ))),
        _ => None,
    };

    let (app, metrics_app) = routers(state.clone());
    if let (Some(listener), Some(metrics_app)) = (metrics_listener, metrics_app) {
        tokio::spawn(http::serve(
            listener,
            metrics_app,
            state.clone(),
            shutdown_rx.clone(),
        ));
    }
    let serve_task = tokio::spawn(http::serve(listener, app, state, shutdown_rx));
    tracing::info!(%local_addr, "listening");
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        stun_turn,
        metrics,
        shutdown: shutdown_tx,
        serve_task,
        link_task,
        connections_done: done_rx,
    })
}

/// What a cluster node runs on: its registry, its part in the cluster,
/// and what the Redis link task takes.
type Clustered = (
    Arc<Registry>,
    Arc<cluster::Cluster>,
    (redis::Client, mpsc::UnboundedReceiver<cluster::Outgoing>),
);

fn clustered(
    config: &Config,
    url: &str,
    routing: Limits,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Clustered> {
    // Only the URL is checked here: an unreachable Redis is a degraded
    // node, not one that refuses to start.
    let client = redis::Client::open(url).context("--redis is not a Redis URL")?;
    let node = cluster::NodeId::from_bits(rand::random());
    let (outbox, outgoing) =
        cluster::Outbox::new(node, config.cluster_queue_bytes, metrics.clone());
    let registry = Arc::new(Registry::clustered(
        metrics.clone(),
        routing,
        outbox.clone(),
    ));
    let settings = cluster::Settings {
        redis_url: url.to_string(),
        heartbeat: config.cluster_heartbeat(),
        node_ttl: config.cluster_node_ttl(),
        progress_every: config.slot_timeout() / 4,
        caps: cluster::wire::Caps {
            max_page_bytes: config.max_page_bytes,
            max_signal_bytes: config.max_signal_bytes,
        },
    };
    let cluster = Arc::new(cluster::Cluster::new(
        node,
        settings,
        registry.clone(),
        outbox,
        metrics.clone(),
    ));
    tracing::info!(%node, redis = %client.get_connection_info().addr(), "starting as a cluster node");
    Ok((registry, cluster, (client, outgoing)))
}

fn stun_turn_config(config: &Config) -> stun_turn::StunTurnConfig {
    let listen = SocketAddr::new(config.bind.ip(), config.turn_port);
    let secret = config.turn_secret.clone().unwrap_or_else(|| {
        // Per process: credentials die with it, which is what a single node
        // wants; a cluster passes one secret to every node.
        format!("{:032x}", rand::random::<u128>())
    });
    stun_turn::StunTurnConfig {
        listen,
        turn: !config.no_turn,
        secret,
        relay_ip: config
            .public_ip
            .unwrap_or_else(|| stun_turn::default_relay_ip(config.bind.ip())),
        relay_ports: config.turn_relay_ports,
        credential_ttl: Duration::from_secs(config.turn_credential_ttl_secs),
        max_allocations_per_session: config.turn_max_allocations,
        allocation_quota_bytes: config.turn_quota_bytes,
        allowed_peers: config.turn_allow_peers.clone(),
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let server = start(config).await?;
    println!("Ephemeral is serving on http://{}", server.local_addr());
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// The public router, and the `/metrics` router when `--metrics-bind`
/// moves it off the public address.
fn routers(state: Arc<AppState>) -> (Router, Option<Router>) {
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let public = Router::new()
        .route("/ws/websocket", get(websocket))
        .route("/healthz", get(healthz));
    let (public, separate) = if state.config.metrics_bind.is_some() {
        (public, Some(metrics_route.with_state(state.clone())))
    } else {
        (public.merge(metrics_route), None)
    };
    let public = public
        .route("/", get(assets::index))
        .route("/{*path}", get(assets::file))
        .with_state(state);
    (public, separate)
}

/// `ok`; or, on a cluster node that cannot reach Redis, 503 `degraded`:
/// it still serves what its own sockets host, but not pages hosted on
/// other nodes, so a load balancer should prefer the others.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match &state.cluster {
        Some(cluster) if !cluster.is_up() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: cannot reach Redis; serving this node's own pages only\n",
        )
            .into_response(),
        _ => "ok\n".into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !presented
            .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
        {
            state.metrics.reject(Reason::MetricsUnauthorized);
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            return (
                StatusCode::UNAUTHORIZED,
                challenge,
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, state.metrics.render()).into_response()
}

/// The host the client reached us by, for the STUN/TURN URLs it is handed:
/// `--public-host`, else the `Host` header without its port, else the
/// bind address.
fn ice_host(config: &Config, headers: &HeaderMap) -> String {
    if let Some(host) = &config.public_host {
        return host.clone();
    }
    let from_header = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|host| {
            let host = host.trim();
            if let Some(rest) = host.strip_prefix('[') {
                // [v6]:port
                return rest.split_once(']').map(|(v6, _)| format!("[{v6}]"));
            }
            let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
            let plausible = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            plausible.then(|| name.to_string())
        });
    from_header.unwrap_or_else(|| match config.bind.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    })
}

/// Compares without stopping at the first difference, so response times do
/// not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let metrics = &state.metrics;
    let handshake = match upgrade::check(&mut request) {
        Ok(handshake) => handshake,
        Err(refusal) => {
            metrics.reject(Reason::BadHandshake);
            return refusal.into_response();
        }
    };
    let headers = request.headers();
    let allowed = &state.config.allowed_origins;
    if !allowed.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
    {
        metrics.reject(Reason::OriginNotAllowed);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let client = addresses::client_address(peer.ip(), headers, &state.config.trusted_proxies);
    let ice_host = ice_host(&state.config, headers);
    let Some(hold) = state.addresses.hold(client, Kind::Websocket, true) else {
        metrics.reject(Reason::TooManyFromAddress);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        )
            .into_response();
    };
    let Ok(permit) = state.connection_limit.clone().try_acquire_owned() else {
        metrics.reject(Reason::TooManyConnections);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let config = &state.config;
    let websocket = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.max_message_bytes.saturating_mul(2))
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let done = state.connections_done.clone();
    handshake.accept(websocket, move |ws| {
        connection::serve(ws, state, Admission { hold, permit, done }, ice_host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_urls_name_the_host_the_client_used() {
        let config = Config::default();
        let mut headers = HeaderMap::new();
        assert_eq!(ice_host(&config, &headers), "127.0.0.1");
        headers.insert(header::HOST, "pages.example:4000".parse().unwrap());
        assert_eq!(ice_host(&config, &headers), "pages.example");
        headers.insert(header::HOST, "[2001:db8::1]:4000".parse().unwrap());
        assert_eq!(ice_host(&config, &headers), "[2001:db8::1]");
        headers.insert(header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(
            ice_host(&config, &headers),
            "127.0.0.1",
            "nothing odd is echoed"
        );
        let named = Config {
            public_host: Some("turn.pages.example".into()),
            ..Config::default()
        };
        assert_eq!(ice_host(&named, &headers), "turn.pages.example");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
