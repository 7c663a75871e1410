//! The HTTP listener. It accepts TCP connections, counts each against its
//! client address (refusing it past `--max-connections-per-address`), and
//! serves HTTP/1.1 with a header-read timeout that also bounds idle
//! keep-alive: a slow or silent connection cannot hold a descriptor for
//! long, and one address cannot hold them all. Upgraded websockets leave
//! this module for [`crate::connection`], counted again there.
//!
//! Written over hyper directly because `axum::serve` sets no timeouts and
//! offers no hook at accept time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use ephemeral_shared::protocol::Reason;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::AppState;
use crate::addresses::{Hold, Kind};
use crate::lean_io::LeanIo;

/// The stream under every HTTP connection, and under its websocket once
/// upgraded (`upgrade` takes it back by this type).
pub type Io = TokioIo<LeanIo<TcpStream>>;

/// How long to pause accepting after an accept error (out of descriptors,
/// typically), so the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts and serves connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A proxy's own connections carry many clients: they count against
        // the clients, once their headers name them.
        let proxy = state
            .config
            .trusted_proxies
            .iter()
            .any(|cidr| cidr.contains(peer.ip()));
        let Some(hold) = state.addresses.hold(peer.ip(), Kind::Http, !proxy) else {
            state.metrics.reject(Reason::TooManyFromAddress);
            drop(tcp);
            continue;
        };
        tokio::spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            hold,
            state.clone(),
            stop.clone(),
        ));
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    hold: Hold,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    // Signals and replies are small writes, each answered by the peer:
    // without TCP_NODELAY, Nagle holds a write back until the previous one
    // is acknowledged, and the peer's delayed ACK makes that ~40 ms.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move { Ok::<_, Infallible>(infallible(app.oneshot(request).await)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.http_header_timeout())
        .keep_alive(true)
        // Under the websocket too, once upgraded: see `lean_io`.
        .serve_connection(Io::new(LeanIo::new(tcp)), service)
        .with_upgrades();
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stopped(&mut stop) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        if error.is_timeout() {
            state.metrics.reject(Reason::HttpTimeout);
        }
        tracing::debug!(%error, %peer, "HTTP connection ended with an error");
    }
    drop(hold);
}

/// Resolves once the server is stopping. The watch guard is dropped here,
/// not held across the caller's awaits (it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// `Result<T, Infallible>` as `T`.
fn infallible<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}
