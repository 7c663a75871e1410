//! Ephemeral's signaling server. It routes `have:<hash>` / `want:<hash>`
//! topics over Phoenix Channels V2 JSON, picks which host serves each
//! request, relays WebRTC signals and (as a fallback) pages between peers,
//! and broadcasts how many hosts a page has. It stores no page.
//!
//! ```text
//!  Listener (axum) ── /ws/websocket ──► connection::serve (one task per socket)
//!        │                                   │  Session: limits, joins, routing
//!        ├── /healthz, /metrics              ▼
//!        └── /, /<hash>, /<file> ◄─ assets   Registry: pages → hosts, wanters
//!                                            └─ broadcast_counts (coalesced)
//! ```
//!
//! - [`config`]: every setting and limit, from flags or `EPHEMERAL_*`.
//! - [`connection`]: one socket, start to close.
//! - [`registry`]: topic membership, selection, count broadcasts.
//! - [`metrics`]: counters for `/metrics`.
//! - [`assets`]: the embedded web client.
//!
//! Embedders and tests call [`start`] (binds, serves in the background);
//! the binary calls [`run`] (serves until SIGINT/SIGTERM).

pub mod assets;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

pub use config::Config;
pub use metrics::Metrics;
use metrics::Rejection;
use registry::Registry;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
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
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    serve_task: tokio::task::JoinHandle<()>,
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

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Closes every connection with "going away", stops listening, and
    /// waits (up to 5 s) for connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let wait = async {
            let _ = (&mut self.serve_task).await;
            while self.connections_done.recv().await.is_some() {}
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
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let local_addr = listener.local_addr().context("listener has no address")?;
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let state = Arc::new(AppState {
        registry: Registry::new(metrics.clone(), config.max_uploads_per_host),
        metrics: metrics.clone(),
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

    let app = router(state);
    let mut stop = shutdown_rx;
    let serve_task = tokio::spawn(async move {
        // Signals and replies are small writes, each answered by the peer:
        // without TCP_NODELAY, Nagle holds a write back until the previous
        // one is acknowledged, and the peer's delayed ACK makes that ~40 ms.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        });
        if let Err(error) = serve.await {
            tracing::error!(%error, "server stopped with an error");
        }
    });
    tracing::info!(%local_addr, "listening");
    Ok(RunningServer {
        local_addr,
        metrics,
        shutdown: shutdown_tx,
        serve_task,
        connections_done: done_rx,
    })
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

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws/websocket", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/", get(assets::index))
        .route("/{*path}", get(assets::file))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, state.metrics.render()).into_response()
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let allowed = &state.config.allowed_origins;
    if !allowed.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
    {
        state.metrics.reject(Rejection::OriginNotAllowed);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let Ok(permit) = state.connection_limit.clone().try_acquire_owned() else {
        state.metrics.reject(Rejection::TooManyConnections);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let config = &state.config;
    upgrade
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.max_message_bytes.saturating_mul(2))
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let done = state.connections_done.clone();
            async move {
                connection::serve(socket, state, permit).await;
                drop(done);
            }
        })
}
