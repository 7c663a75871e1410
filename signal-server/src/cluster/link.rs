//! The node's link to Redis, one task: registers the node under a key that
//! expires unless heartbeated, reads the set of live nodes from those keys,
//! receives the node's messages on its own pub/sub channel, and publishes
//! what the outbox holds, in order, pipelined. When Redis cannot be
//! reached the node serves alone and keeps trying; when it is back, the
//! node re-registers and every node re-announces its members.
//!
//! Redis holds nothing else: no page, no member, no routing state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::home::Home;
use super::ring::NodeId;
use super::wire::Message;
use super::{Cluster, Outgoing};

/// Every key and channel of ours starts with this.
const PREFIX: &str = "ephemeral";
/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect delays: the first, and the longest, which bounds how long
/// after Redis is back a node notices.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// While Redis stays unreachable, the log says so again this often.
const REMIND_EVERY: Duration = Duration::from_secs(30);
/// Most messages and bytes published in one pipeline.
const BATCH_MESSAGES: usize = 256;
const BATCH_BYTES: usize = 1024 * 1024;
/// Most `SCAN` rounds when listing the nodes: 1,000 keys each.
const SCAN_ROUNDS: usize = 100;

pub fn alive_key(node: NodeId) -> String {
    format!("{PREFIX}:alive:{node}")
}

pub fn channel(node: NodeId) -> String {
    format!("{PREFIX}:node:{node}")
}

/// Why a session with Redis ended.
enum Ending {
    Shutdown(MultiplexedConnection),
    Lost(redis::RedisError),
}

/// What the link remembers across sessions.
struct LinkState {
    /// Written into the node's key, to tell another node with the same id.
    incarnation: String,
    registered: bool,
    connected_before: bool,
}

/// Runs the link until `shutdown` fires; then says goodbye to the others.
pub async fn run(
    cluster: Arc<Cluster>,
    client: redis::Client,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut home = Home::default();
    let server = client.get_connection_info().addr().to_string();
    let mut link = LinkState {
        incarnation: format!("{:016x}", rand::random::<u64>()),
        registered: false,
        connected_before: false,
    };
    let mut retry = RETRY_MIN;
    let mut last_warning: Option<Instant> = None;
    loop {
        let ending = session(
            &cluster,
            &mut home,
            &client,
            &mut link,
            &mut outgoing,
            &mut shutdown,
        )
        .await;
        match ending {
            Ok(Ending::Shutdown(mut conn)) => {
                goodbye(&cluster, &mut conn).await;
                return;
            }
            Ok(Ending::Lost(error)) | Err(error) => {
                let metrics = &cluster.metrics.cluster;
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                let remind = last_warning.is_none_or(|at| at.elapsed() >= REMIND_EVERY);
                if cluster.is_up() || remind {
                    tracing::warn!(
                        %error, redis = %server, node = %cluster.node,
                        "cannot reach Redis: this node serves alone (degraded) and keeps trying"
                    );
                    last_warning = Some(Instant::now());
                }
            }
        }
        if cluster.is_up() {
            retry = RETRY_MIN;
        }
        cluster.set_up(&mut home, false);
        // What was queued for other nodes cannot be sent; the snapshots
        // after reconnecting replace it.
        while let Ok(dropped) = outgoing.try_recv() {
            cluster.outbox.taken(dropped.text.len());
            cluster
                .metrics
                .cluster
                .dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => return,
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// One connection to Redis, from connecting to losing it.
async fn session(
    cluster: &Cluster,
    home: &mut Home,
    client: &redis::Client,
    link: &mut LinkState,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ending, redis::RedisError> {
    let settings = cluster.settings();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        // A Redis that stops answering is lost like one that went away.
        .set_response_timeout(Some(settings.node_ttl));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out("connecting for pub/sub"))??;
    pubsub.subscribe(channel(cluster.node)).await?;
    let mut inbox = pubsub.into_on_message();
    let nodes = beat(cluster, &mut conn, link).await?;
    if link.connected_before {
        cluster
            .metrics
            .cluster
            .reconnects
            .fetch_add(1, Ordering::Relaxed);
    }
    link.connected_before = true;
    cluster.set_up(home, true);
    tracing::info!(node = %cluster.node, nodes = nodes.len(), "connected to Redis: part of the cluster");
    // Every other node is new to a node that was alone: each gets a
    // snapshot and is asked for one.
    cluster.set_view(home, nodes);
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(Ending::Shutdown(conn)),
            message = inbox.next() => {
                let Some(message) = message else {
                    return Ok(Ending::Lost(timed_out("the pub/sub connection closed")));
                };
                cluster.receive(home, message.get_payload_bytes());
            }
            Some(first) = outgoing.recv() => publish(cluster, &mut conn, first, outgoing).await?,
            _ = tick.tick() => {
                let nodes = beat(cluster, &mut conn, link).await?;
                cluster.set_view(home, nodes);
                cluster.send_digests();
            }
            () = cluster.rescan.notified() => {
                let nodes = beat(cluster, &mut conn, link).await?;
                cluster.set_view(home, nodes);
            }
        }
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Renews this node's key and reads the live nodes.
async fn beat(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    link: &mut LinkState,
) -> Result<BTreeSet<NodeId>, redis::RedisError> {
    let ttl = u64::try_from(cluster.settings().node_ttl.as_millis()).unwrap_or(u64::MAX);
    let previous: Option<String> = redis::cmd("SET")
        .arg(alive_key(cluster.node))
        .arg(&link.incarnation)
        .arg("PX")
        .arg(ttl)
        .arg("GET")
        .query_async(conn)
        .await?;
    if !link.registered {
        link.registered = true;
        if previous.is_some_and(|previous| previous != link.incarnation) {
            // 32 random bits: one chance in four billion per pair of nodes.
            tracing::error!(node = %cluster.node, "another live node has this node's id; restart one of them");
        }
    }
    let pattern = format!("{PREFIX}:alive:*");
    let mut nodes = BTreeSet::new();
    let mut cursor = 0u64;
    for _ in 0..SCAN_ROUNDS {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for key in keys {
            let id = key
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_prefix(":alive:"))
                .and_then(|id| id.parse::<NodeId>().ok());
            match id {
                Some(id) => {
                    nodes.insert(id);
                }
                None => {
                    cluster
                        .metrics
                        .cluster
                        .invalid
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    nodes.insert(cluster.node);
    Ok(nodes)
}

/// Publishes `first` and whatever else is queued, up to a batch, in one
/// pipeline: in order, one round trip.
async fn publish(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    first: Outgoing,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), redis::RedisError> {
    let mut pipe = redis::pipe();
    let mut messages = 0usize;
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(message) = next.take() {
        cluster.outbox.taken(message.text.len());
        bytes += message.text.len();
        messages += 1;
        pipe.cmd("PUBLISH")
            .arg(channel(message.to))
            .arg(message.text);
        if messages < BATCH_MESSAGES && bytes < BATCH_BYTES {
            next = outgoing.try_recv().ok();
        }
    }
    let receivers: Vec<i64> = pipe.query_async(conn).await?;
    let metrics = &cluster.metrics.cluster;
    metrics
        .messages_out
        .fetch_add(messages as u64, Ordering::Relaxed);
    metrics.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    let unheard = receivers.iter().filter(|n| **n == 0).count() as u64;
    metrics.undelivered.fetch_add(unheard, Ordering::Relaxed);
    Ok(())
}

/// On shutdown: the node's key goes at once and the others hear it is
/// leaving, so its pages move now rather than when its key expires.
async fn goodbye(cluster: &Cluster, conn: &mut MultiplexedConnection) {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(alive_key(cluster.node)).ignore();
    let leaving = super::wire::Envelope {
        from: cluster.node,
        msg: Message::Leaving,
    }
    .encode();
    for node in cluster.nodes().into_iter().filter(|n| *n != cluster.node) {
        pipe.cmd("PUBLISH")
            .arg(channel(node))
            .arg(&leaving)
            .ignore();
    }
    let said: Result<(), _> = pipe.query_async(conn).await;
    if let Err(error) = said {
        tracing::debug!(%error, "could not tell the cluster this node is leaving");
    }
}
