//! Peer to peer across real NATs: a lab of network namespaces (see
//! `ephemeral_tests::natlab`), the real `signal-server` binary in the
//! "internet" started with nothing but `--bind 0.0.0.0:4000`, and real
//! `ephemeral-peer` processes in LANs behind NAT routers. Each case asserts
//! the bytes that arrived and the path they took, as the CLI reports it.
//!
//! Needs root, like every namespace; without it the tests fail saying so.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ephemeral_tests::natlab::{Lab, Nat, SERVER_IP};

const SERVER_URL: &str = "ws://198.18.0.1:4000/ws/websocket?vsn=2.0.0";
/// The visitor's `--rtc-timeout`: what a visitor behind a router that drops
/// UDP waits before the websocket relay.
const RTC_TIMEOUT_SECS: u64 = 5;

/// The debug binaries of the server and the peer, built once.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The variables cargo sets for this test would make the nested
        // build see a different configuration and rebuild everything.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                cargo.env_remove(key);
            }
        }
        let status = cargo
            .args([
                "build",
                "--quiet",
                "-p",
                "signal-server",
                "--bin",
                "signal-server",
                "-p",
                "ephemeral-peer",
                "--bin",
                "ephemeral-peer",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the server and the peer");
        let exe = std::env::current_exe().expect("the test's own path");
        let profile = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the target profile directory");
        (
            profile.join("signal-server"),
            profile.join("ephemeral-peer"),
        )
    })
}

/// Lines a child prints on stdout and stderr, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Read to the end even when nobody listens any more: a closed
            // pipe would fail the child's next write.
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// The first line matching `wanted` within `limit`; every line read.
fn wait_for(
    lines: &mpsc::Receiver<String>,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<String, Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    Err(seen)
}

/// A lab with the server running in its internet.
struct World {
    lab: Lab,
    _server: Child,
    dir: PathBuf,
}

impl World {
    fn start(mut lab: Lab) -> Self {
        let (server_bin, _) = binaries();
        let mut server = lab
            .spawn(&lab.internet(), server_bin, &["--bind", "0.0.0.0:4000"])
            .expect("the server starts");
        let out = lines(&mut server);
        if let Err(seen) = wait_for(&out, Duration::from_secs(30), |l| l.contains("serving on")) {
            panic!("the server did not start: {seen:#?}");
        }
        let dir = std::env::temp_dir().join(format!("ephemeral-natlab-{}", lab.prefix()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let _ = &mut lab;
        Self {
            lab,
            _server: server,
            dir,
        }
    }

    /// `ephemeral-peer share` in `host`; returns the page's link once the
    /// page is hosted, and the process (killed with the lab).
    fn share(&self, host: &(String, String), text: &str) -> (String, Child) {
        let (_, peer_bin) = binaries();
        let file = self.dir.join(format!("page-{}.txt", host.0));
        std::fs::write(&file, text).expect("the page file");
        let file = file.to_string_lossy().into_owned();
        let mut child = self
            .lab
            .spawn(
                &host.0,
                peer_bin,
                &["--server", SERVER_URL, "--bind", &host.1, "share", &file],
            )
            .expect("share starts");
        let out = lines(&mut child);
        let prefix = format!("http://{SERVER_IP}:4000/");
        match wait_for(&out, Duration::from_secs(30), |l| l.starts_with(&prefix)) {
            Ok(link) => (link.trim().to_string(), child),
            Err(seen) => panic!("share printed no link: {seen:#?}"),
        }
    }

    /// `ephemeral-peer get <link>` in `host`: the bytes and what it printed.
    fn get(&self, host: &(String, String), link: &str) -> (Vec<u8>, String, Duration) {
        let (_, peer_bin) = binaries();
        let out = self.dir.join(format!("got-{}.txt", host.0));
        let out_arg = out.to_string_lossy().into_owned();
        let timeout = RTC_TIMEOUT_SECS.to_string();
        let started = Instant::now();
        let output = self
            .lab
            .output(
                &host.0,
                peer_bin,
                &[
                    "--server",
                    SERVER_URL,
                    "--bind",
                    &host.1,
                    "--rtc-timeout",
                    &timeout,
                    "get",
                    link,
                    "-o",
                    &out_arg,
                ],
            )
            .expect("get runs");
        let took = started.elapsed();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "get failed: {said}");
        (std::fs::read(&out).expect("the fetched page"), said, took)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lab() -> Lab {
    match Lab::new() {
        Ok(lab) => lab,
        Err(error) => panic!("the NAT lab cannot be built here: {error:#}"),
    }
}

fn fetch_across(left: Nat, right: Nat) -> (String, Duration) {
    let mut lab = lab();
    let mut lan1 = lab.add_lan(left).expect("LAN 1");
    let author = lab.add_host(&mut lan1).expect("a host in LAN 1");
    let mut lan2 = lab.add_lan(right).expect("LAN 2");
    let visitor = lab.add_host(&mut lan2).expect("a host in LAN 2");
    let world = World::start(lab);
    let text = format!("across {left:?} and {right:?} NATs ✓");
    let (link, _host) = world.share(&author, &text);
    let (bytes, said, took) = world.get(&visitor, &link);
    assert_eq!(bytes, text.as_bytes(), "the page arrived intact");
    (said, took)
}

#[test]
fn cone_to_cone_goes_direct_through_the_built_in_stun() {
    let (said, _) = fetch_across(Nat::Cone, Nat::Cone);
    assert!(said.contains("via webrtc (direct)"), "{said}");
}

#[test]
fn symmetric_to_symmetric_goes_through_the_built_in_turn() {
    let (said, _) = fetch_across(Nat::Symmetric, Nat::Symmetric);
    assert!(said.contains("via webrtc (turn)"), "{said}");
}

#[test]
fn udp_blocked_on_one_side_falls_back_within_the_rtc_timeout() {
    let (said, took) = fetch_across(Nat::Cone, Nat::NoUdp);
    assert!(said.contains("via relay"), "{said}");
    let bound = Duration::from_secs(RTC_TIMEOUT_SECS + 5);
    assert!(took < bound, "took {took:?}, more than {bound:?}");
}

#[test]
fn two_peers_on_one_lan_go_direct_over_host_candidates() {
    let mut lab = lab();
    let mut lan = lab.add_lan(Nat::Symmetric).expect("a LAN");
    let author = lab.add_host(&mut lan).expect("host 1");
    let visitor = lab.add_host(&mut lan).expect("host 2");
    let world = World::start(lab);
    let text = "neighbours";
    let (link, _host) = world.share(&author, text);
    let (bytes, said, _) = world.get(&visitor, &link);
    assert_eq!(bytes, text.as_bytes());
    assert!(said.contains("via webrtc (direct)"), "{said}");
}

#[test]
fn the_lab_leaves_nothing_behind() {
    let (prefix, pids, mut sleeper) = {
        let mut lab = lab();
        let mut lan = lab.add_lan(Nat::Cone).expect("a LAN");
        let host = lab.add_host(&mut lan).expect("a host");
        let sleeper = lab
            .spawn(&host.0, std::path::Path::new("/bin/sleep"), &["600"])
            .expect("a process in the lab");
        assert_eq!(namespaces(lab.prefix()).len(), 3, "internet, router, host");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pids = Vec::new();
        while pids.is_empty() && Instant::now() < deadline {
            let listed = Command::new("ip").args(["netns", "pids", &host.0]).output();
            pids = listed
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
        }
        assert!(!pids.is_empty(), "the process runs in the lab");
        (lab.prefix().to_string(), pids, sleeper)
    };
    assert_eq!(
        namespaces(&prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    // Killed with the lab: it exits (and is reaped here) at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeper.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sleeper.try_wait().ok().flatten().is_some(),
        "a process started in the lab outlived it"
    );
    for pid in pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(&pid), "process {pid} outlived the lab");
    }
}

/// Whether `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

fn namespaces(prefix: &str) -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}
