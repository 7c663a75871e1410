//! The servers under test, each in its own process so that its memory can
//! be read from `/proc/<pid>/status` and its CPU is not the load
//! generator's:
//!
//! - our signaling server: this binary re-executed as `ephemeral-bench
//!   serve [signal-server flags]`, which does exactly what the
//!   `signal-server` binary's `main` does, from the same library, so the
//!   numbers are for the code in this checkout and no separate build can
//!   be stale;
//! - the bare echo ceiling: `ephemeral-bench echo-server`;
//! - the WebTorrent tracker: `node bench/js/tracker.mjs`, its npm packages
//!   installed into `bench/js/` on first use.
//!
//! Every child listens on a port the OS picks on 127.0.0.1, prints it on
//! its first line of stdout, and is killed when its handle is dropped.
//! Our server's `/metrics` can be read while it runs ([`Scrape`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `/metrics` request may take; a server too busy to answer
/// within it is itself a finding, reported as an error.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/metrics` response read: the text is a few KiB.
const SCRAPE_MAX_BYTES: u64 = 1024 * 1024;

/// Per-address limits high enough never to bind. The server's defaults
/// (256 connections, 1000 messages, 50 joins per second per address, …)
/// are there against one abusive address; the benchmarks that load the
/// server from a handful of loopback addresses (or all from 127.0.0.1,
/// as the native peers do) would otherwise measure those limits instead
/// of what they are about. The flood, stalled-reader and churn
/// benchmarks keep the defaults: the limits are what they test.
pub const NO_PER_ADDRESS_LIMITS: &[&str] = &[
    "--max-connections-per-address",
    "100000",
    "--connections-per-second-per-address",
    "1000000",
    "--messages-per-second-per-address",
    "1000000",
    "--joins-per-second-per-address",
    "1000000",
    "--bytes-per-second-per-address",
    "1000000000",
    "--relay-bytes-per-second-per-address",
    "1000000000",
];

/// A server running in a child process.
pub struct ChildServer {
    name: &'static str,
    /// Killed on drop (`kill_on_drop`), so a failed benchmark leaves no
    /// server behind.
    child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// The server's process id, while it runs.
    fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
    }

    /// Descriptors the server has open now.
    pub fn open_fds(&self) -> Result<u64> {
        let pid = self.pid()?;
        let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("cannot list /proc/{pid}/fd"))?;
        Ok(dir.count() as u64)
    }

    /// CPU time the server has used so far, user plus system, from
    /// `/proc/<pid>/stat` (clock-tick resolution: 10 ms here).
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks =
            parse_cpu_ticks(&stat).with_context(|| format!("unexpected /proc/{pid}/stat"))?;
        let per_second = u64::try_from(ticks_per_second)
            .ok()
            .filter(|&t| t > 0)
            .unwrap_or(100);
        Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// Kills the server and waits for it to go.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// The server's `/metrics`, read over HTTP/1.1 from 127.0.0.1 (not
    /// from any address a benchmark loads the server from, so per-address
    /// limits never refuse the reading).
    pub async fn scrape(&self) -> Result<Scrape> {
        tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch_metrics())
            .await
            .with_context(|| {
                format!(
                    "{} did not answer /metrics within {SCRAPE_TIMEOUT:?}",
                    self.name
                )
            })?
    }

    async fn fetch_metrics(&self) -> Result<Scrape> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {} for /metrics", self.addr))?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .context("cannot send the /metrics request")?;
        let mut response = Vec::new();
        stream
            .take(SCRAPE_MAX_BYTES)
            .read_to_end(&mut response)
            .await
            .context("cannot read the /metrics response")?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("a /metrics response without a header end")?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("/metrics answered {status:?}");
        }
        Ok(Scrape::parse(body))
    }
}

/// One reading of the server's Prometheus text: each sample's name (with
/// its labels, as written) and value.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.trim().rsplit_once(' ')?;
                Some((name.trim().to_string(), value.parse().ok()?))
            })
            .collect();
        Self { samples }
    }

    /// A sample by its full name, e.g. `ephemeral_connections` or
    /// `ephemeral_rejected_total{reason="slow_consumer"}`; `None` when the
    /// server does not export it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// Every sample of a labelled family, e.g. `ephemeral_rejected_total`,
    /// by its label set (`reason="slow_consumer"`).
    pub fn family<'a>(&'a self, family: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples.iter().filter_map(move |(name, value)| {
            let labels = name.strip_prefix(family)?.strip_prefix('{')?;
            Some((labels.strip_suffix('}').unwrap_or(labels), *value))
        })
    }
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces, so fields count from its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Our signaling server on `127.0.0.1:0`, with `flags` on top of the
/// defaults (its logging kept to errors, so a benchmark's output stays
/// readable).
pub async fn signal_server(flags: &[&str]) -> Result<ChildServer> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = Command::new(exe);
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--log", "error"])
        .args(flags);
    // `run` prints "Ephemeral is serving on http://127.0.0.1:PORT".
    start("signal-server", command, |line| {
        line.rsplit_once("http://")?.1.trim().parse().ok()
    })
    .await
}

/// The bare tokio-tungstenite echo server.
pub async fn echo_server() -> Result<ChildServer> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = Command::new(exe);
    command.arg("echo-server");
    start("echo server", command, |line| {
        line.strip_prefix("listening on ")?.trim().parse().ok()
    })
    .await
}

/// The WebTorrent reference tracker, under Node.
pub async fn tracker() -> Result<ChildServer> {
    let dir = js_dir();
    install_js(&dir).await?;
    let mut command = Command::new("node");
    command.arg("tracker.mjs").arg("0").current_dir(&dir);
    start("bittorrent-tracker", command, |line| {
        let port = serde_json::from_str::<serde_json::Value>(line).ok()?["port"].as_u64()?;
        Some(SocketAddr::from((
            [127, 0, 0, 1],
            u16::try_from(port).ok()?,
        )))
    })
    .await
}

/// `bench/js/`: the tracker's driver script and its npm packages.
fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Installs the tracker's packages from the committed lock file when they
/// are missing. `--ignore-scripts`: only the tracker's server module is
/// used, and the WebRTC client stack it also depends on would try to build
/// native code.
async fn install_js(dir: &Path) -> Result<()> {
    if dir
        .join("node_modules/bittorrent-tracker/server.js")
        .exists()
    {
        return Ok(());
    }
    eprintln!("bench: installing the WebTorrent tracker (npm ci) into bench/js");
    let status = Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .current_dir(dir)
        .status()
        .await
        .context("cannot run npm (Node.js and npm are needed for the tracker baseline)")?;
    if !status.success() {
        bail!("npm ci failed in {} ({status})", dir.display());
    }
    Ok(())
}

/// Spawns `command`, reads its first stdout line with `parse`, and keeps
/// draining stdout so the child never blocks on a full pipe.
async fn start(
    name: &'static str,
    mut command: Command,
    parse: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<ChildServer> {
    let mut child = command
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{name} has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{name} did not start within {START_TIMEOUT:?}"))?
        .with_context(|| format!("cannot read {name}'s output"))?
        .with_context(|| format!("{name} exited before it listened"))?;
    let addr = parse(&first)
        .with_context(|| format!("cannot find {name}'s address in its output: {first:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("{name} listens on {addr}, not on loopback");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ChildServer { name, child, addr })
}

/// The body of `ephemeral-bench echo-server`: accepts websockets on
/// 127.0.0.1 and sends every text or binary message back. Library defaults
/// throughout: this is the ceiling a websocket server on tokio-tungstenite
/// reaches when it does no work at all.
pub async fn run_echo_server() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("echo server cannot listen")?;
    let addr = listener
        .local_addr()
        .context("echo server has no address")?;
    println!("listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await.context("accept failed")?;
        tokio::spawn(async move {
            // A ceiling does not wait for Nagle: small replies go out at once.
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                let echo = match message {
                    Message::Text(_) | Message::Binary(_) => message,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(echo).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP ephemeral_connections Open websockets.\n\
                    # TYPE ephemeral_connections gauge\n\
                    ephemeral_connections 3\n\
                    ephemeral_rejected_total{reason=\"slow_consumer\"} 2\n\
                    ephemeral_rejected_total{reason=\"idle_timeout\"} 0\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.get("ephemeral_connections"), Some(3.0));
        assert_eq!(scrape.get("ephemeral_pages"), None);
        let rejected: Vec<_> = scrape.family("ephemeral_rejected_total").collect();
        assert_eq!(
            rejected,
            vec![
                ("reason=\"idle_timeout\"", 0.0),
                ("reason=\"slow_consumer\"", 2.0)
            ]
        );
    }

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(280));
    }
}
