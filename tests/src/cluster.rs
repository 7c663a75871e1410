//! A cluster on loopback for the tests and benchmarks that need one: a
//! real `redis-server` (Debian's package; `cargo xtask` installs it) on a
//! free port, real server nodes (the `signal-server` binary) each on its
//! own port, and a small TCP balancer in front of them that skips nodes
//! that refuse connections, as a load balancer would. Everything is killed
//! when dropped, whatever the test did.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::binaries::{cargo_build, test_profile_dir};

/// How long a process may take to start listening.
const START_WAIT: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
struct Process(Option<Child>);

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback: bound, noted, released.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not listen on {addr} within {START_WAIT:?}")
}

/// A `redis-server` of its own, in memory only.
#[derive(Debug)]
pub struct Redis {
    process: Process,
    port: u16,
}

impl Redis {
    pub async fn start() -> Result<Self> {
        Self::start_on(free_port()?).await
    }

    /// On `port`, e.g. to restart it where the nodes expect it.
    pub async fn start_on(port: u16) -> Result<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot run redis-server (apt-get install redis-server, or `cargo xtask test`)",
            )?;
        let redis = Self {
            process: Process(Some(child)),
            port,
        };
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), "redis-server").await?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: Redis is gone at once, with everything it held.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Builds the server binary once, with the features of `test_target`'s
/// build (see [`cargo_build`]), and returns its path.
pub fn server_binary(test_target: &str) -> Result<PathBuf> {
    cargo_build(&[
        "-p",
        "ephemeral-tests",
        "--test",
        test_target,
        "-p",
        "signal-server",
        "--bin",
        "signal-server",
    ])?;
    Ok(test_profile_dir()?.join("signal-server"))
}

/// One server node, as its own process.
#[derive(Debug)]
pub struct Node {
    process: Process,
    addr: SocketAddr,
}

impl Node {
    /// Starts `binary` on a free loopback port with `--redis redis_url` and
    /// `extra` flags; returns once it listens.
    pub async fn start(binary: &Path, redis_url: &str, extra: &[String]) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1:0", "--turn-port", "0"])
            .args(["--turn-allow-peer", "127.0.0.0/8"])
            .args(["--redis", redis_url])
            .args(extra)
            .env(
                "EPHEMERAL_LOG",
                std::env::var("EPHEMERAL_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let mut process = Process(Some(child));
        let stdout = tokio::process::ChildStdout::from_std(stdout)?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_WAIT, lines.next_line())
            .await
            .context("the node did not start in time")??
            .context("the node exited before listening")?;
        // "Ephemeral is serving on http://127.0.0.1:PORT"
        let addr = first
            .rsplit("http://")
            .next()
            .and_then(|addr| addr.trim().parse().ok())
            .with_context(|| format!("no address in the node's first line: {first:?}"));
        let addr = match addr {
            Ok(addr) => addr,
            Err(error) => {
                process.kill();
                return Err(error);
            }
        };
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { process, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn websocket_url(&self) -> String {
        format!("ws://{}/ws/websocket?vsn=2.0.0", self.addr)
    }

    /// SIGKILL: no goodbye to the cluster; its key in Redis must expire.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `GET path`: the status and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        crate::http::get(self.addr, path).await
    }

    /// A gauge or counter of `/metrics`, unlabelled.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }
}

/// Redis and its nodes.
#[derive(Debug)]
pub struct Cluster {
    /// Before `redis`: fields drop in order, and nodes that lose Redis
    /// before they die log that they did.
    pub nodes: Vec<Node>,
    pub redis: Redis,
}

impl Cluster {
    /// Redis and `n` nodes of `binary`, each started with `extra` flags;
    /// returns once every node sees all the others.
    pub async fn start(binary: &Path, n: usize, extra: &[String]) -> Result<Self> {
        let redis = Redis::start().await?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(Node::start(binary, &redis.url(), extra).await?);
        }
        let cluster = Self { redis, nodes };
        cluster.wait_nodes_alive(n, START_WAIT).await?;
        Ok(cluster)
    }

    /// Waits until every node still running sees `n` live nodes.
    pub async fn wait_nodes_alive(&self, n: usize, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for node in self.nodes.iter().filter(|node| node.process.0.is_some()) {
                let alive = node.metric("ephemeral_cluster_nodes_alive").await?;
                all &= alive == n as f64;
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("the nodes did not all see {n} nodes within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A TCP balancer on loopback: each connection goes to the first backend,
/// in its order, that accepts it. Stops when dropped.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    pub connections: Arc<AtomicUsize>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backends = backends.clone();
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for backend in backends {
                        let connect = TcpStream::connect(backend);
                        let Ok(Ok(mut server)) =
                            tokio::time::timeout(Duration::from_secs(1), connect).await
                        else {
                            continue;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            task,
            connections,
        })
    }

    pub fn websocket_url(&self) -> String {
        format!("ws://{}/ws/websocket?vsn=2.0.0", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
