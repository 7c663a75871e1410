//! Benchmark 10, time to content across NATs. In the NAT lab of the test
//! suite (`ephemeral_tests::natlab`: network namespaces, iptables routers,
//! addresses in 198.18.0.0/15), the release `signal-server` runs in the
//! "internet" with nothing but `--bind 0.0.0.0:4000`, a native host shares
//! a 10 KB page from one LAN, and native visitors in another LAN fetch it,
//! one after another, each a fresh `ephemeral-peer get`:
//!
//! - cone ↔ cone: direct, through the built-in STUN;
//! - symmetric ↔ symmetric: through the built-in TURN;
//! - the visitor's router drops UDP: the websocket relay, after the
//!   visitor's WebRTC timeout (5 s).
//!
//! Time to content is what the CLI reports: from the start of the fetch to
//! the verified page. The relay path, measured in the same run, is the
//! baseline. A fetch that took another path than its network should give
//! is reported as such, not counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_tests::binaries::cargo_build;
use ephemeral_tests::natlab::{Lab, Nat, SERVER_IP, output_lines, wait_for_line};

use crate::report::{Better, Percentiles, Row, Value};

const BENCHMARK: &str = "10. Time to content across NATs";
const SERVER_URL: &str = "ws://198.18.0.1:4000/ws/websocket?vsn=2.0.0";
const PAGE_BYTES: usize = 10_000;

/// Fetches per network.
pub struct Samples {
    webrtc: usize,
    relay: usize,
}

impl Samples {
    pub fn new(quick: bool) -> Self {
        // The relay case waits out the WebRTC timeout on every fetch.
        if quick {
            Self {
                webrtc: 8,
                relay: 2,
            }
        } else {
            Self {
                webrtc: 30,
                relay: 5,
            }
        }
    }
}

pub async fn run(samples: &Samples, workspace: &Path) -> Result<Vec<Row>> {
    let (server, peer) = build_binaries(workspace)?;
    let cases = [
        (
            Nat::Cone,
            Nat::Cone,
            "webrtc (direct)",
            "cone ↔ cone, direct",
            samples.webrtc,
        ),
        (
            Nat::Symmetric,
            Nat::Symmetric,
            "webrtc (turn)",
            "symmetric ↔ symmetric, TURN",
            samples.webrtc,
        ),
        (
            Nat::Cone,
            Nat::NoUdp,
            "relay",
            "UDP blocked, websocket relay",
            samples.relay,
        ),
    ];
    let mut measured = Vec::new();
    for (host_nat, visitor_nat, via, label, n) in cases {
        let (server, peer) = (server.clone(), peer.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            fetch_times(&server, &peer, host_nat, visitor_nat, via, n)
        })
        .await
        .context("the lab task")?;
        measured.push((label, outcome));
    }
    let relay_p50 = match &measured[2].1 {
        Ok((times, _)) => Percentiles::of(times).map(|p| p.p50),
        Err(_) => None,
    };
    let mut rows = Vec::new();
    for (label, outcome) in measured {
        let (times, other_paths) = match outcome {
            Ok(found) => found,
            Err(error) => {
                rows.push(Row::not_measured(
                    BENCHMARK,
                    label,
                    format!("failed: {error:#}"),
                ));
                continue;
            }
        };
        let Some(p) = Percentiles::of(&times) else {
            rows.push(Row::not_measured(
                BENCHMARK,
                label,
                format!("no fetch took the expected path ({other_paths} took another)"),
            ));
            continue;
        };
        let mut row = Row::new(
            BENCHMARK,
            format!(
                "{label}: p50 (p95 {:.0} ms, {} fetches)",
                p.p95.as_secs_f64() * 1e3,
                p.samples
            ),
            Value::ms(p.p50),
            Better::Lower,
        );
        if let Some(relay) = relay_p50
            && !label.contains("relay")
        {
            row = row.against("websocket relay p50", Value::ms(relay));
        }
        if other_paths > 0 {
            row = row.note(format!("{other_paths} fetches took another path"));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Builds the release server and peer binaries; their paths.
fn build_binaries(workspace: &Path) -> Result<(PathBuf, PathBuf)> {
    cargo_build(&[
        "--release",
        "-p",
        "signal-server",
        "--bin",
        "signal-server",
        "-p",
        "ephemeral-peer",
        "--bin",
        "ephemeral-peer",
    ])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let release = target.join("release");
    Ok((
        release.join("signal-server"),
        release.join("ephemeral-peer"),
    ))
}

/// `n` fetches across one kind of network: the times of those that took
/// `via`, and how many took another path.
fn fetch_times(
    server: &Path,
    peer: &Path,
    host_nat: Nat,
    visitor_nat: Nat,
    via: &str,
    n: usize,
) -> Result<(Vec<Duration>, usize)> {
    let mut lab = Lab::new()?;
    let mut host_lan = lab.add_lan(host_nat)?;
    let (host_ns, host_ip) = lab.add_host(&mut host_lan)?;
    let mut visitor_lan = lab.add_lan(visitor_nat)?;
    let (visitor_ns, visitor_ip) = lab.add_host(&mut visitor_lan)?;
    let dir = std::env::temp_dir().join(format!("ephemeral-bench-{}", lab.prefix()));
    std::fs::create_dir_all(&dir).context("a scratch directory")?;
    let outcome = (|| {
        let mut server_child = lab.spawn(&lab.internet(), server, &["--bind", "0.0.0.0:4000"])?;
        let server_lines = output_lines(&mut server_child);
        wait_for_line(&server_lines, Duration::from_secs(30), |l| {
            l.contains("serving on")
        })
        .map_err(|seen| anyhow::anyhow!("the server did not start: {seen:?}"))?;

        let page: String = "natlab ".repeat(PAGE_BYTES / 7 + 1)[..PAGE_BYTES].to_string();
        let file = dir.join("page.txt");
        std::fs::write(&file, &page).context("the page file")?;
        let file = file.to_string_lossy().into_owned();
        let mut host = lab.spawn(
            &host_ns,
            peer,
            &["--server", SERVER_URL, "--bind", &host_ip, "share", &file],
        )?;
        let host_lines = output_lines(&mut host);
        let prefix = format!("http://{SERVER_IP}:4000/");
        let link = wait_for_line(&host_lines, Duration::from_secs(30), |l| {
            l.starts_with(&prefix)
        })
        .map_err(|seen| anyhow::anyhow!("share printed no link: {seen:?}"))?;

        let out = dir.join("got.txt").to_string_lossy().into_owned();
        let mut times = Vec::new();
        let mut other = 0;
        for _ in 0..n {
            let output = lab.output(
                &visitor_ns,
                peer,
                &[
                    "--server",
                    SERVER_URL,
                    "--bind",
                    &visitor_ip,
                    "get",
                    link.trim(),
                    "-o",
                    &out,
                ],
            )?;
            let said = String::from_utf8_lossy(&output.stderr).into_owned();
            if !output.status.success() {
                bail!("get failed: {said}");
            }
            match reported(&said) {
                Some((path, took)) if path == via => times.push(took),
                Some(_) => other += 1,
                None => bail!("get said no time: {said}"),
            }
        }
        let _ = (server_child.kill(), host.kill());
        let _ = (server_child.wait(), host.wait());
        Ok((times, other))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// `got N bytes via <path> in T ms` → (path, T).
fn reported(said: &str) -> Option<(String, Duration)> {
    let line = said.lines().find(|l| l.starts_with("got "))?;
    let (_, rest) = line.split_once(" via ")?;
    let (path, ms) = rest.rsplit_once(" in ")?;
    let ms: u64 = ms.strip_suffix(" ms")?.trim().parse().ok()?;
    Some((path.to_string(), Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cli_report() {
        let said = "note: …\ngot 10000 bytes via webrtc (turn) in 412 ms\n";
        assert_eq!(
            reported(said),
            Some(("webrtc (turn)".to_string(), Duration::from_millis(412)))
        );
        assert_eq!(
            reported("got 5 bytes via relay in 5120 ms"),
            Some(("relay".to_string(), Duration::from_millis(5120)))
        );
        assert_eq!(reported("error: gone"), None);
    }
}
