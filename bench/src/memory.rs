//! Benchmark 2, memory per idle websocket connection: the server's
//! resident memory growth (`VmRSS` of its process) divided by the number
//! of idle connections, with our buffer settings (256-byte read buffer, no
//! write buffer) against the websocket library's defaults (128 KiB each,
//! which axum passed on when the server used its upgrade), in two server
//! processes of the same build in the same run.
//!
//! Each connection is a realistic idle host: it joins one `have:` topic of
//! its own page (so the registry holds one page entry per connection, the
//! costlier case) and then sits silent. The server's idle timeout is raised
//! for the run so that nobody is dropped for silence while the others are
//! still connecting.
//!
//! Limits of this machine, reported rather than hidden: a process may hold
//! at most `RLIMIT_NOFILE` descriptors, and the hard limit can only be
//! raised with CAP_SYS_RESOURCE. The harness raises the soft limit to the
//! hard one (the server child inherits it) and runs at most that many
//! connections, saying so when a size was cut.

use anyhow::{Context, Result};
use ephemeral_phoenix_client::{Client, websocket_url};
use ephemeral_shared::Topic;
use futures_util::StreamExt;

use crate::children::{self, ChildServer};
use crate::load;
use crate::report::{Better, Row, Value};

const BENCHMARK: &str = "2. Memory per idle connection";
/// Connections made before the first reading, so the runtime's lazily
/// grown structures (worker queues, allocator arenas, the registry's
/// first table) count as baseline and not as per-connection cost.
const WARM_UP: usize = 200;
/// Descriptors kept free in each process for everything else (listener,
/// pipes, runtime).
const SPARE_FDS: u64 = 300;
/// Handshakes in flight at once: under the listen backlog, so no SYN is
/// dropped and retried (which would stall the run for a second each).
const CONNECTING_AT_ONCE: usize = 128;
/// The budget in bytes per idle connection (issue 5).
const TARGET_BYTES: f64 = 4096.0;

/// What one server process measured.
struct Reading {
    connections: usize,
    bytes_per_connection: f64,
}

pub async fn run(sizes: &[usize], fd_limit: u64) -> Result<Vec<Row>> {
    let most = usize::try_from(fd_limit.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX) - WARM_UP;
    let mut rows = Vec::new();
    for &size in sizes {
        let connections = size.min(most);
        eprintln!("bench: {connections} idle connections, ours then the library defaults");
        let ours = measure(&[], connections).await?;
        let defaults = measure(
            &[
                "--read-buffer-bytes",
                "131072",
                "--write-buffer-bytes",
                "131072",
            ],
            connections,
        )
        .await?;
        let metric = format!("{} connections", ours.connections);
        let mut row = Row::new(
            BENCHMARK,
            metric,
            Value::new(ours.bytes_per_connection / 1024.0, "KiB"),
            Better::Lower,
        )
        .against(
            "128 KiB buffers (the library's defaults)",
            Value::new(defaults.bytes_per_connection / 1024.0, "KiB"),
        );
        if size == 50_000 || connections < size {
            row = row.target("≤ 4 KiB at 50k", ours.bytes_per_connection <= TARGET_BYTES);
        }
        if connections < size {
            row = row.note(format!(
                "{size} asked; this machine's hard RLIMIT_NOFILE is {fd_limit}, so one process holds at most ~{connections}"
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One server process with `flags`: RSS before and after `connections`
/// idle hosts joined.
async fn measure(flags: &[&str], connections: usize) -> Result<Reading> {
    let mut all_flags = vec![
        "--idle-timeout-secs",
        "3600",
        "--max-connections",
        "1000000",
        // Idle websockets do not use it, and its fixed UDP port would
        // collide with any other server on this machine.
        "--no-stun",
    ];
    // Tens of thousands of connections from eight loopback addresses are
    // thousands per address, far past the default 256.
    all_flags.extend_from_slice(children::NO_PER_ADDRESS_LIMITS);
    all_flags.extend_from_slice(flags);
    let server = children::signal_server(&all_flags).await?;
    let url = websocket_url(server.addr);

    let mut clients = open_idle(&url, 0, WARM_UP).await?;
    settle(&server).await;
    let before = server.rss_kib()?;
    clients.extend(open_idle(&url, WARM_UP, connections).await?);
    settle(&server).await;
    let after = server.rss_kib()?;

    // The server goes first: its sockets then take the TIME_WAITs, and the
    // next run's fresh port is not affected.
    server.stop().await;
    drop(clients);
    let growth = after.saturating_sub(before) as f64 * 1024.0;
    Ok(Reading {
        connections,
        bytes_per_connection: growth / connections as f64,
    })
}

/// Opens `count` idle connections, numbered from `first`, each joined to
/// the `have:` topic of its own page; the cluster benchmark's idle clients
/// are these too.
pub async fn open_idle(url: &str, first: usize, count: usize) -> Result<Vec<Client>> {
    futures_util::stream::iter(first..first + count)
        .map(|i| async move {
            let mut client = Client::connect_from(url, load::source_ip(i)).await?;
            let hash = ephemeral_shared::PageHash::of(format!("idle page {i}").as_bytes());
            client
                .join(&Topic::have(hash).to_string())
                .await
                .with_context(|| format!("idle connection {i} cannot join"))?;
            anyhow::Ok(client)
        })
        .buffer_unordered(CONNECTING_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Waits until the server's RSS stops moving (coalesced count broadcasts
/// and freed handshake buffers), at most a few seconds.
pub async fn settle(server: &ChildServer) {
    let mut last = server.rss_kib().unwrap_or(0);
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = server.rss_kib().unwrap_or(0);
        if now.abs_diff(last) < 256 {
            return;
        }
        last = now;
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children
/// inherit it) and returns the limit now in force.
pub fn raise_fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if got != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE) failed");
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if set != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE) failed");
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
