//! `ephemeral-bench`: the numbers Ephemeral competes on, each measured
//! against a baseline in the same run, with the release build, on real
//! loopback sockets, in bounded loops (issue 5).
//!
//! ```text
//!  ephemeral-bench [--quick] [--only NAME,…]
//!      │ spawns (children)                 │ drives (load generator)
//!      ├─ ephemeral-bench serve …   ◄──────┼─ ephemeral-phoenix-client
//!      │   (our server, as its binary)     ├─ ephemeral-peer: native peers
//!      ├─ ephemeral-bench echo-server ◄────┤   (WebRTC, relay)
//!      └─ node js/tracker.mjs  ◄───────────┘
//!  → Markdown table on stdout, target/bench/results.{md,json}
//! ```
//!
//! - [`ttc`]: 1, time to content: WebRTC, relay, seed mode.
//! - [`memory`]: 2, server memory per idle connection, ours vs axum's
//!   default buffers.
//! - [`signaling`]: 3, signal relay rate and latency vs the WebTorrent
//!   tracker and a bare echo; content round trips over relay.
//! - [`peers`]: 4, data-channel throughput native↔native; 5, flash crowd.
//! - [`browser`]: 4, data-channel throughput from headless Chromium.
//! - [`client_size`]: 6, the web client's download size.
//! - [`flood`]: 7, normal clients' signal latency while one address floods.
//! - [`stalled`]: 8, server memory under stalled readers, against the
//!   bound its caps imply.
//! - [`churn`]: 9, a soak of connect/join/leave/disconnect cycles: memory
//!   and gauges before and after.
//! - [`nat`]: 10, time to content across the NAT lab: direct, TURN, relay.
//! - [`cluster`]: 11, the cluster on Redis: idle connections across three
//!   nodes, signals one node vs two, time to content across nodes.
//! - [`responsive`]: 12, the longest main-thread block in Chromium tabs
//!   while a 16 MiB page is shared and fetched.
//! - [`children`]: the servers under test, each its own process.
//! - [`load`]: what the load generator sends, and from which addresses.
//! - [`report`]: rows, percentiles, the table and the JSON.

mod browser;
mod children;
mod churn;
mod client_size;
mod cluster;
mod flood;
mod load;
mod memory;
mod nat;
mod peers;
mod report;
mod responsive;
mod signaling;
mod stalled;
mod ttc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use report::Row;
use tracing_subscriber::EnvFilter;

/// Ephemeral's benchmark suite: each number against a baseline measured in
/// the same run, on loopback.
#[derive(Debug, Parser)]
#[command(name = "ephemeral-bench", version, about)]
struct Cli {
    /// Fewer samples and shorter windows: a few minutes in all.
    #[arg(long)]
    quick: bool,
    /// Run only these benchmarks (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Bench>,
    #[command(subcommand)]
    child: Option<ChildRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// 1. Time to content: WebRTC, relay, seed mode.
    Ttc,
    /// 2. Server memory per idle websocket connection.
    Memory,
    /// 3. Signal relay and content round trips vs tracker and echo.
    Signaling,
    /// 4. Data-channel throughput.
    Datachannel,
    /// 5. Flash crowd.
    Flash,
    /// 6. Web client size.
    Size,
    /// 7. Normal clients' signal latency under a flood from one address.
    Flood,
    /// 8. Server memory under stalled readers.
    Stalled,
    /// 9. Churn soak: memory and gauges after many short-lived clients.
    Churn,
    /// 10. Time to content across NATs: direct, TURN, websocket relay.
    Nat,
    /// 11. The cluster on Redis: idle connections on three nodes, signals
    ///     one node vs two, time to content across nodes.
    Cluster,
    /// 12. The longest main-thread block in Chromium while a 16 MiB page is
    ///     shared and fetched.
    Responsive,
}

/// What this binary is when the harness re-executes it as a server.
#[derive(Debug, Subcommand)]
enum ChildRole {
    /// Our signaling server, exactly as the `signal-server` binary runs it
    /// (takes the same flags).
    #[command(hide = true)]
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
    /// The bare tokio-tungstenite echo server (the signaling ceiling).
    #[command(hide = true)]
    EchoServer,
    /// Idle connections for the cluster benchmark, held until stdin closes.
    #[command(hide = true)]
    IdleClients {
        url: String,
        first: usize,
        count: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the tokio runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = match cli.child {
        Some(ChildRole::Serve { flags }) => runtime.block_on(serve(flags)),
        Some(ChildRole::EchoServer) => runtime.block_on(children::run_echo_server()),
        Some(ChildRole::IdleClients { url, first, count }) => {
            runtime.block_on(cluster::run_idle_clients(url, first, count))
        }
        None => runtime.block_on(bench(cli.quick, &cli.only)),
    };
    if let Err(error) = result {
        eprintln!("bench: error: {error:#}");
        std::process::exit(1);
    }
}

/// The `signal-server` binary's `main`, verbatim in effect.
async fn serve(flags: Vec<String>) -> Result<()> {
    use clap::Parser as _;
    let args = std::iter::once("signal-server".to_string()).chain(flags);
    let config = signal_server::Config::try_parse_from(args).context("bad server flags")?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    signal_server::run(config).await
}

async fn bench(quick: bool, only: &[Bench]) -> Result<()> {
    let wanted = |b: Bench| only.is_empty() || only.contains(&b);
    let fd_limit = memory::raise_fd_limit()?;
    let workspace = workspace_root();
    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = Vec::new();

    // Each benchmark on its own: one that fails is reported as such and
    // the others still run.
    let mut record = |name: &'static str, outcome: Result<Vec<Row>>| match outcome {
        Ok(new) => rows.extend(new),
        Err(error) => {
            eprintln!("bench: {name} failed: {error:#}");
            rows.push(Row::not_measured(name, "all", format!("failed: {error:#}")));
            failed.push(name);
        }
    };
    if wanted(Bench::Ttc) {
        record(
            "1. Time to content",
            ttc::run(&ttc::Samples::new(quick)).await,
        );
        record(
            "1. Time to content",
            browser::time_to_content(quick, &workspace).await,
        );
    }
    if wanted(Bench::Memory) {
        let sizes: &[usize] = if quick { &[10_000] } else { &[10_000, 50_000] };
        record(
            "2. Memory per idle connection",
            memory::run(sizes, fd_limit).await,
        );
    }
    if wanted(Bench::Signaling) {
        record(
            "3. Signaling",
            signaling::run(&signaling::Load::new(quick)).await,
        );
    }
    if wanted(Bench::Datachannel) {
        let mut outcome = peers::data_channel(&peers::transfers(quick)).await;
        if let Ok(rows) = &mut outcome {
            let runs = if quick { 3 } else { 5 };
            rows.push(
                browser::run(runs, &workspace)
                    .await
                    .unwrap_or_else(|error| {
                        eprintln!("bench: browser→native failed: {error:#}");
                        Row::not_measured(
                            "4. Data-channel throughput",
                            "1 MiB, browser→native",
                            format!("failed: {error:#}"),
                        )
                    }),
            );
        }
        record("4. Data-channel throughput", outcome);
    }
    if wanted(Bench::Flash) {
        record(
            "5. Flash crowd",
            peers::flash_crowd(200, Duration::ZERO).await,
        );
        let staggered = peers::flash_crowd(200, peers::STAGGER).await;
        record("5. Flash crowd, staggered", staggered);
    }
    if wanted(Bench::Size) {
        record("6. Web client size", client_size::run(&workspace));
    }
    if wanted(Bench::Flood) {
        record(
            "7. Flood from one address",
            flood::run(&flood::Plan::new(quick)).await,
        );
    }
    if wanted(Bench::Stalled) {
        record(
            "8. Stalled readers",
            stalled::run(&stalled::Plan::new(quick)).await,
        );
    }
    if wanted(Bench::Churn) {
        record("9. Churn soak", churn::run(&churn::Plan::new(quick)).await);
    }
    if wanted(Bench::Nat) {
        record(
            "10. Time to content across NATs",
            nat::run(&nat::Samples::new(quick), &workspace).await,
        );
    }
    if wanted(Bench::Cluster) {
        record(
            "11. Cluster",
            cluster::run(&cluster::Load::new(quick), fd_limit).await,
        );
    }
    if wanted(Bench::Responsive) {
        record(
            "12. Responsiveness",
            responsive::run(quick, &workspace).await,
        );
    }

    let table = report::markdown(&rows);
    println!("{table}");
    let elapsed = started.elapsed();
    write_results(&workspace, quick, &rows, &table, elapsed)?;
    if !failed.is_empty() {
        anyhow::bail!(
            "{} benchmark(s) failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The workspace root: this crate lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// `target/bench/results.md` and `results.json`, with when, where and how.
fn write_results(
    workspace: &Path,
    quick: bool,
    rows: &[Row],
    table: &str,
    elapsed: Duration,
) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let machine = Machine::here();
    let command = std::iter::once("cargo run --release -p ephemeral-bench --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let date = date();
    let markdown = format!(
        "# Benchmark results\n\n- Date: {date}\n- Machine: {} cores, {}, {:.1} GiB RAM\n- Command: `{command}`\n- Mode: {}, {:.0} s\n\n{table}",
        machine.cores,
        machine.cpu,
        machine.ram_gib,
        if quick { "quick" } else { "full" },
        elapsed.as_secs_f64()
    );
    std::fs::write(dir.join("results.md"), markdown).context("cannot write results.md")?;
    let json = serde_json::json!({
        "date": date,
        "machine": { "cores": machine.cores, "cpu": machine.cpu, "ram_gib": machine.ram_gib },
        "command": command,
        "quick": quick,
        "seconds": elapsed.as_secs_f64(),
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&json).context("cannot encode results")?;
    std::fs::write(dir.join("results.json"), text).context("cannot write results.json")?;
    eprintln!("bench: wrote {}", dir.join("results.{md,json}").display());
    Ok(())
}

/// The machine the numbers come from.
struct Machine {
    cores: usize,
    cpu: String,
    ram_gib: f64,
}

impl Machine {
    fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            ram_gib: ram_kib / 1024.0 / 1024.0,
        }
    }
}

/// Today in UTC, as `date -u` writes it.
fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}
