//! Benchmark 11, the cluster (`--redis`, docs/cluster.md): server nodes as
//! child processes on one real `redis-server` (Debian's package), each
//! number set against one process or one node in the same run.
//!
//! - Idle connections across three nodes: as many as the machine's
//!   per-process descriptor limit lets each node hold (three times just
//!   under 20,000), opened by one generator process per node (the
//!   generators are under the same limit), and each node's memory per
//!   connection — cluster state included: every connection hosts a page of
//!   its own, homed on any of the three nodes.
//! - Signals relayed per second and offer→answer latency: one node, then
//!   two nodes with each page's host on one and its visitor on the other,
//!   the same load in the same run.
//! - Time to content (native peers, WebRTC): visitor on the host's node,
//!   and on another node.
//!
//! Every loop is bounded in count and in time; every process is killed
//! when its handle drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ephemeral_peer::{FetchOptions, Peer, Transport};
use ephemeral_phoenix_client::{Client, websocket_url};
use ephemeral_shared::{PageHash, Topic};
use ephemeral_tests::cluster::Redis;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::children::{self, ChildServer};
use crate::load;
use crate::memory::settle;
use crate::report::{Better, Percentiles, Row, Value};

const BENCHMARK: &str = "11. Cluster";
/// Descriptors a node is left beyond those it has open before its first
/// client (for a Redis reconnect, a metrics scrape, an accept in flight).
const NODE_SPARE_FDS: u64 = 8;
/// Descriptors a generator keeps for itself (runtime, pipes).
const GENERATOR_SPARE_FDS: u64 = 24;
/// The total the issue asks a cluster on this machine to hold.
const ASKED: usize = 60_000;
/// Connections each node gets before its first reading (see memory.rs).
const WARM_UP: usize = 200;
/// Handshakes in flight at once per generator.
/// How long a generator may take to open its connections.
const OPEN_WAIT: Duration = Duration::from_secs(300);
/// The budget per idle connection (issue 11).
const TARGET_BYTES: f64 = 4096.0;

/// How much each part runs.
pub struct Load {
    pairs: usize,
    window: Duration,
    ttc_samples: usize,
}

impl Load {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                pairs: 100,
                window: Duration::from_secs(3),
                ttc_samples: 15,
            }
        } else {
            Self {
                pairs: 200,
                window: Duration::from_secs(8),
                ttc_samples: 40,
            }
        }
    }
}

pub async fn run(load: &Load, fd_limit: u64) -> Result<Vec<Row>> {
    let mut rows = idle(fd_limit).await?;
    rows.extend(signals(load).await?);
    rows.extend(time_to_content(load).await?);
    Ok(rows)
}

/// Flags of every node: no per-address limits (the load comes from a few
/// loopback addresses), no silence timeout, STUN/TURN on any free port.
fn node_flags(redis: Option<&str>) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--idle-timeout-secs",
        "3600",
        "--max-connections",
        "1000000",
        "--messages-per-second",
        "1000000",
        "--message-burst",
        "1000000",
        "--turn-port",
        "0",
    ]
    .iter()
    .chain(children::NO_PER_ADDRESS_LIMITS)
    .map(|flag| flag.to_string())
    .collect();
    if let Some(url) = redis {
        flags.extend(["--redis".to_string(), url.to_string()]);
    }
    flags
}

async fn nodes(redis: Option<&Redis>, n: usize) -> Result<Vec<ChildServer>> {
    let flags = node_flags(redis.map(Redis::url).as_deref());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(children::signal_server(&flags).await?);
    }
    if n > 1 {
        wait_for_cluster(&nodes, n).await?;
    }
    Ok(nodes)
}

/// Until every node sees `n` nodes, at most 30 s.
async fn wait_for_cluster(nodes: &[ChildServer], n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for node in nodes {
            let alive = node.scrape().await?.get("ephemeral_cluster_nodes_alive");
            all &= alive == Some(n as f64);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the nodes did not see each other within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The generator's side (`ephemeral-bench idle-clients URL FIRST COUNT`):
/// opens the connections, says `ready`, holds them until its stdin closes.
pub async fn run_idle_clients(url: String, first: usize, count: usize) -> Result<()> {
    crate::memory::raise_fd_limit()?;
    let clients = crate::memory::open_idle(&url, first, count).await?;
    println!("ready {}", clients.len());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    drop(clients);
    Ok(())
}

/// Idle connections: three nodes filled to what each process's descriptor
/// limit leaves (the memory figures come from these), then four nodes
/// holding the 60,000 asked for, each well under the limit.
async fn idle(fd_limit: u64) -> Result<Vec<Row>> {
    let three = fill(3, None, fd_limit).await?;
    let four = fill(4, Some(ASKED / 4), fd_limit).await?;
    let worst = three.per_connection.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = three
        .per_connection
        .iter()
        .map(|b| format!("{:.1}", b / 1024.0))
        .collect();
    Ok(vec![
        Row::new(
            BENCHMARK,
            "idle connections held by three nodes, each filled to its descriptor limit",
            Value::new(three.held as f64, "connections"),
            Better::Higher,
        )
        .target(
            format!("{ASKED}, each node under {fd_limit} descriptors"),
            three.held >= ASKED,
        )
        .note(format!(
            "{} per node: a node has {} descriptors open of its own before its first client, \
             so three processes under a {fd_limit} limit hold at most {}; opened by three \
             generator processes in {:.1} s",
            three.per_node,
            three.own_fds,
            3 * fd_limit.saturating_sub(three.own_fds),
            three.opening.as_secs_f64()
        )),
        Row::new(
            BENCHMARK,
            "idle connections held by four nodes",
            Value::new(four.held as f64, "connections"),
            Better::Higher,
        )
        .target(format!("{ASKED}"), four.held >= ASKED)
        .note(format!(
            "{} per node, opened by four generator processes in {:.1} s",
            four.per_node,
            four.opening.as_secs_f64()
        )),
        Row::new(
            BENCHMARK,
            format!(
                "memory per idle connection per node, three nodes, {} per node",
                three.per_node
            ),
            Value::new(worst / 1024.0, "KiB"),
            Better::Lower,
        )
        .target("≤ 4 KiB", worst <= TARGET_BYTES)
        .note(format!("nodes: {} KiB; worst shown", each.join(" / "))),
    ])
}

/// What one filling of a cluster measured.
struct Filled {
    /// Connections the nodes report open, warm-up included.
    held: usize,
    /// Connections each node got after its warm-up.
    per_node: usize,
    /// Descriptors a node had open before its first client (the most of
    /// any node).
    own_fds: u64,
    opening: Duration,
    /// Each node's RSS growth per connection, in bytes.
    per_connection: Vec<f64>,
}

/// Starts `count` nodes on a fresh Redis and opens idle connections on
/// each: `per_node` of them, or as many as the node's descriptor limit
/// leaves.
async fn fill(count: usize, per_node: Option<usize>, fd_limit: u64) -> Result<Filled> {
    let redis = Redis::start().await?;
    let nodes = nodes(Some(&redis), count).await?;
    let mut own_fds = 0;
    for node in &nodes {
        own_fds = own_fds.max(node.open_fds()?);
    }
    let room = fd_limit
        .saturating_sub(own_fds + NODE_SPARE_FDS)
        .min(fd_limit.saturating_sub(GENERATOR_SPARE_FDS));
    let per_node = per_node
        .unwrap_or(usize::try_from(room).unwrap_or(usize::MAX))
        .saturating_sub(WARM_UP);
    eprintln!(
        "bench: {} idle connections across {count} nodes",
        count * (per_node + WARM_UP)
    );
    let mut warm = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        warm.extend(
            crate::memory::open_idle(&websocket_url(node.addr), n * WARM_UP, WARM_UP).await?,
        );
    }
    for node in &nodes {
        settle(node).await;
    }
    let before: Vec<u64> = nodes
        .iter()
        .map(ChildServer::rss_kib)
        .collect::<Result<_>>()?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut generators = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let first = 10 * WARM_UP + n * per_node;
        let mut child = Command::new(&exe)
            .arg("idle-clients")
            .arg(websocket_url(node.addr))
            .arg(first.to_string())
            .arg(per_node.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a connection generator")?;
        let stdout = child.stdout.take().context("the generator's stdout")?;
        generators.push((child, BufReader::new(stdout).lines()));
    }
    let started = Instant::now();
    for (_, lines) in &mut generators {
        let line = tokio::time::timeout(OPEN_WAIT, lines.next_line())
            .await
            .context("a generator took too long to open its connections")??
            .context("a generator exited before it was ready")?;
        line.strip_prefix("ready ")
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("unexpected generator line {line:?}"))?;
    }
    let opening = started.elapsed();
    let mut per_connection = Vec::new();
    for (node, before) in nodes.iter().zip(&before) {
        settle(node).await;
        let after = node.rss_kib()?;
        per_connection.push(after.saturating_sub(*before) as f64 * 1024.0 / per_node as f64);
    }
    let mut held = 0.0;
    for node in &nodes {
        held += node
            .scrape()
            .await?
            .get("ephemeral_connections")
            .unwrap_or(0.0);
    }
    drop(generators);
    drop(warm);
    Ok(Filled {
        held: held as usize,
        per_node,
        own_fds,
        opening,
        per_connection,
    })
}

/// One pair's closed loop: the visitor offers, the host answers; each
/// round trip is a sample. Until `until`, at most `max` rounds.
async fn pair_loop(
    host_url: String,
    visitor_url: String,
    i: usize,
    until: Instant,
    exchanged: Arc<AtomicU64>,
) -> Result<Vec<Duration>> {
    let hash = PageHash::of(format!("signals page {i}").as_bytes());
    let (have, want) = (Topic::have(hash).to_string(), Topic::want(hash).to_string());
    let mut host = Client::connect_from(&host_url, load::source_ip(2 * i)).await?;
    let host_id = host.join_for_id(&have).await?;
    let mut visitor = Client::connect_from(&visitor_url, load::source_ip(2 * i + 1)).await?;
    let visitor_id = visitor.join_for_id(&want).await?;
    let sdp = load::sdp();
    let offer = json!({"to": host_id, "type": "offer", "sdp": sdp});
    let answer = json!({"to": visitor_id, "type": "answer", "sdp": sdp});
    let mut samples = Vec::new();
    const MAX_ROUNDS: usize = 1_000_000;
    while Instant::now() < until && samples.len() < MAX_ROUNDS {
        let start = Instant::now();
        visitor.push(&want, "signal", &offer).await?;
        host.expect(|f| f.event == "signal").await?;
        host.push(&have, "signal", &answer).await?;
        visitor.expect(|f| f.event == "signal").await?;
        samples.push(start.elapsed());
        exchanged.fetch_add(1, Ordering::Relaxed);
    }
    Ok(samples)
}

/// `pairs` pages, each with a host on `host_url` and a visitor on
/// `visitor_url`, exchanging offers and answers for `window` after all
/// are connected: signals per second, and the round trips.
async fn exchange(
    host_url: &str,
    visitor_url: &str,
    pairs: usize,
    window: Duration,
) -> Result<(f64, Percentiles)> {
    let exchanged = Arc::new(AtomicU64::new(0));
    // Connecting is not measured: the window starts a moment later.
    let settle_time = Duration::from_secs(2);
    let until = Instant::now() + settle_time + window;
    let tasks: Vec<_> = (0..pairs)
        .map(|i| {
            tokio::spawn(pair_loop(
                host_url.to_string(),
                visitor_url.to_string(),
                i,
                until,
                exchanged.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(settle_time).await;
    let counted_from = exchanged.load(Ordering::Relaxed);
    let measured = Instant::now();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("a pair panicked")??);
    }
    let elapsed = measured.elapsed();
    let exchanges = exchanged.load(Ordering::Relaxed) - counted_from;
    let per_second = 2.0 * exchanges as f64 / elapsed.as_secs_f64();
    let percentiles = Percentiles::of(&samples).context("no exchange completed")?;
    Ok((per_second, percentiles))
}

async fn signals(load: &Load) -> Result<Vec<Row>> {
    eprintln!(
        "bench: signals, {} pairs: one node, then two nodes with pairs split",
        load.pairs
    );
    let single = nodes(None, 1).await?;
    let url = websocket_url(single[0].addr);
    // One pair alone first: the latency of the path itself, which the
    // loaded figures (bounded by the load generator on the same two cores)
    // hide.
    let (_, one_alone) = exchange(&url, &url, 1, load.window / 2).await?;
    let (one_rate, one) = exchange(&url, &url, load.pairs, load.window).await?;
    drop(single);
    let redis = Redis::start().await?;
    let two = nodes(Some(&redis), 2).await?;
    let (a, b) = (websocket_url(two[0].addr), websocket_url(two[1].addr));
    let (_, split_alone) = exchange(&a, &b, 1, load.window / 2).await?;
    let (two_rate, split) = exchange(&a, &b, load.pairs, load.window).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Row::new(
            BENCHMARK,
            format!(
                "offer→answer p50, one pair alone, two nodes, pair split ({} round trips)",
                split_alone.samples
            ),
            Value::ms(split_alone.p50),
            Better::Lower,
        )
        .against("one node", Value::ms(one_alone.p50))
        .note(format!(
            "p99 {:.2} ms vs {:.2} ms; cross-node overhead at p50 {:+.2} ms for two signals, \
             each through Redis",
            ms(split_alone.p99),
            ms(one_alone.p99),
            ms(split_alone.p50) - ms(one_alone.p50)
        )),
        Row::new(
            BENCHMARK,
            format!(
                "signals relayed per second, {} pairs in closed loops, two nodes, pairs split",
                load.pairs
            ),
            Value::new(two_rate, "signals/s"),
            Better::Higher,
        )
        .against("one node", Value::new(one_rate, "signals/s")),
        Row::new(
            BENCHMARK,
            "offer→answer p50, two nodes, pairs split",
            Value::ms(split.p50),
            Better::Lower,
        )
        .against("one node", Value::ms(one.p50))
        .note(format!(
            "{:+.2} ms at p50; under this load the generator, on the same two cores, sets the pace",
            ms(split.p50) - ms(one.p50)
        )),
        Row::new(
            BENCHMARK,
            "offer→answer p99, two nodes, pairs split",
            Value::ms(split.p99),
            Better::Lower,
        )
        .against("one node", Value::ms(one.p99)),
    ])
}

/// One visitor on `url`: connect, fetch (not staying to host, so every
/// visitor meets the same host), verify; the wait.
async fn visit(url: &str, hash: PageHash) -> Result<Duration> {
    let start = Instant::now();
    let visitor = Peer::connect(crate::ttc::peer_config(url, true))
        .await
        .context("a visitor cannot connect")?;
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        visitor.fetch_with(hash, FetchOptions::default()),
    )
    .await
    .context("a fetch took over 30 s")?
    .context("a visitor did not get the page")?;
    let elapsed = start.elapsed();
    visitor.shutdown().await;
    if fetched.transport != Transport::WebRtc {
        bail!(
            "the page came by {}, not WebRTC",
            fetched.transport.as_str()
        );
    }
    Ok(elapsed)
}

async fn time_to_content(load: &Load) -> Result<Vec<Row>> {
    eprintln!(
        "bench: time to content, {} visitors on the host's node and {} on another",
        load.ttc_samples, load.ttc_samples
    );
    let redis = Redis::start().await?;
    let nodes = nodes(Some(&redis), 2).await?;
    let (same, other) = (websocket_url(nodes[0].addr), websocket_url(nodes[1].addr));
    let (page, hash) = load::page(10 * 1024, 11);
    let host = Peer::connect(crate::ttc::peer_config(&same, true))
        .await
        .context("the host cannot connect")?;
    host.share(page.into_bytes())
        .await
        .context("the host cannot share")?;
    let (mut near, mut far) = (Vec::new(), Vec::new());
    // Interleaved, so both see the same machine at the same moments.
    for _ in 0..load.ttc_samples {
        near.push(visit(&same, hash).await?);
        far.push(visit(&other, hash).await?);
    }
    host.shutdown().await;
    let near = Percentiles::of(&near).context("no sample")?;
    let far = Percentiles::of(&far).context("no sample")?;
    Ok(vec![
        Row::new(
            BENCHMARK,
            "time to content, 10 KB page, visitor on another node than the host, p50",
            Value::ms(far.p50),
            Better::Lower,
        )
        .against("visitor on the host's node", Value::ms(near.p50))
        .note(format!(
            "p95 {:.1} ms vs {:.1} ms; cross-node cost at p50 {:.2} ms",
            far.p95.as_secs_f64() * 1e3,
            near.p95.as_secs_f64() * 1e3,
            far.p50.as_secs_f64() * 1e3 - near.p50.as_secs_f64() * 1e3
        )),
    ])
}
