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
/// Descriptors each process keeps for itself (listener, Redis, runtime).
const SPARE_FDS: u64 = 100;
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

async fn idle(fd_limit: u64) -> Result<Vec<Row>> {
    let per_node = usize::try_from(fd_limit.saturating_sub(SPARE_FDS))
        .unwrap_or(usize::MAX)
        .saturating_sub(WARM_UP);
    eprintln!(
        "bench: {} idle connections across three nodes",
        3 * per_node
    );
    let redis = Redis::start().await?;
    let nodes = nodes(Some(&redis), 3).await?;
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
    let mut held = 0usize;
    for (_, lines) in &mut generators {
        let line = tokio::time::timeout(OPEN_WAIT, lines.next_line())
            .await
            .context("a generator took too long to open its connections")??
            .context("a generator exited before it was ready")?;
        let n: usize = line
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected generator line {line:?}"))?;
        held += n;
    }
    let opening = started.elapsed();
    let mut per_connection = Vec::new();
    for (node, before) in nodes.iter().zip(&before) {
        settle(node).await;
        let after = node.rss_kib()?;
        per_connection.push(after.saturating_sub(*before) as f64 * 1024.0 / per_node as f64);
    }
    let connections: f64 = {
        let mut total = 0.0;
        for node in &nodes {
            total += node
                .scrape()
                .await?
                .get("ephemeral_connections")
                .unwrap_or(0.0);
        }
        total
    };
    drop(generators);
    drop(warm);
    let worst = per_connection.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = per_connection
        .iter()
        .map(|b| format!("{:.1}", b / 1024.0))
        .collect();
    Ok(vec![
        Row::new(
            BENCHMARK,
            "idle connections held across three nodes",
            Value::new(connections, "connections"),
            Better::Higher,
        )
        .note(format!(
            "{held} opened by three generator processes in {:.1} s; each node and each generator \
             is under this machine's {fd_limit}-descriptor limit per process",
            opening.as_secs_f64()
        )),
        Row::new(
            BENCHMARK,
            format!("memory per idle connection per node, {per_node} per node"),
            Value::new(worst / 1024.0, "KiB"),
            Better::Lower,
        )
        .target("≤ 4 KiB", worst <= TARGET_BYTES)
        .note(format!("nodes: {} KiB; worst shown", each.join(" / "))),
    ])
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
