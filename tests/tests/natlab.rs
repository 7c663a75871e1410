//! Peer to peer across real NATs: a lab of network namespaces (see
//! `ephemeral_tests::natlab`), the real `signal-server` binary in the
//! "internet" started with nothing but `--bind 0.0.0.0:4000`, and real
//! `ephemeral-peer` processes — and headless Chromium running the real web
//! client — in LANs behind NAT routers. Each case asserts the bytes that
//! arrived and the path they took, as the CLI reports it or as the page
//! shows it (one direction of the browser↔native case excepted: see there).
//!
//! Chromium runs inside its LAN: ChromeDriver is started there (`ip netns
//! exec`), and this process drives it through a loopback port the lab
//! forwards into that namespace ([`Lab::forward_tcp`]).
//!
//! Needs root, like every namespace; without it the tests fail saying so.
//! The browser cases need the web client built (`cargo xtask build`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ephemeral_shared::PageHash;
use ephemeral_tests::binaries::{cargo_build, test_profile_dir};
use ephemeral_tests::chromium::{self, ChromeDriver};
use ephemeral_tests::natlab::{Lab, Nat, SERVER_IP, output_lines, wait_for_line};
use fantoccini::{Client, Locator};
use serde::Deserialize;
use serde_json::json;

const SERVER_URL: &str = "ws://198.18.0.1:4000/ws/websocket?vsn=2.0.0";
/// The visitor's `--rtc-timeout`: what a visitor behind a router that drops
/// UDP waits before the websocket relay.
const RTC_TIMEOUT_SECS: u64 = 5;

/// The debug binaries of the server and the peer, built once.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        cargo_build(&[
            "-p",
            "ephemeral-tests",
            "--test",
            "natlab",
            "-p",
            "signal-server",
            "--bin",
            "signal-server",
            "-p",
            "ephemeral-peer",
            "--bin",
            "ephemeral-peer",
        ])
        .expect("building the server and the peer");
        let profile = test_profile_dir().expect("the target profile directory");
        (
            profile.join("signal-server"),
            profile.join("ephemeral-peer"),
        )
    })
}

/// A lab with the server running in its internet.
struct World {
    /// Taken on drop: the lab goes (and every browser in it) before `dir`.
    lab: Option<Lab>,
    _server: Child,
    dir: PathBuf,
}

impl World {
    fn start(lab: Lab) -> Self {
        let (server_bin, _) = binaries();
        let mut server = lab
            .spawn(&lab.internet(), server_bin, &["--bind", "0.0.0.0:4000"])
            .expect("the server starts");
        let out = output_lines(&mut server);
        if let Err(seen) =
            wait_for_line(&out, Duration::from_secs(30), |l| l.contains("serving on"))
        {
            panic!("the server did not start: {seen:#?}");
        }
        let dir = std::env::temp_dir().join(format!("ephemeral-natlab-{}", lab.prefix()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self {
            lab: Some(lab),
            _server: server,
            dir,
        }
    }

    fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("the lab lives as long as the world")
    }

    /// `ephemeral-peer share` in `host`; returns the page's link once the
    /// page is hosted, and the process (killed with the lab).
    fn share(&self, host: &(String, String), text: &str) -> (String, Child) {
        let (_, peer_bin) = binaries();
        let file = self.dir.join(format!("page-{}.txt", host.0));
        std::fs::write(&file, text).expect("the page file");
        let file = file.to_string_lossy().into_owned();
        let mut child = self
            .lab()
            .spawn(
                &host.0,
                peer_bin,
                &["--server", SERVER_URL, "--bind", &host.1, "share", &file],
            )
            .expect("share starts");
        let out = output_lines(&mut child);
        let prefix = format!("http://{SERVER_IP}:4000/");
        match wait_for_line(&out, Duration::from_secs(30), |l| l.starts_with(&prefix)) {
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
            .lab()
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
        drop(self.lab.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Native cases share the machine; a browser case has it to itself.
/// Chromium is heavy and paces its ICE checks by its own timers: on two
/// busy cores they come late, and a direct pair can lose to a relayed one
/// that answered first. The browser tests' harness runs them one at a time
/// for the same reason.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A native case's share of the machine.
fn shared_machine() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.blocking_read()
}

fn lab() -> Lab {
    match Lab::new() {
        Ok(lab) => lab,
        Err(error) => panic!("the NAT lab cannot be built here: {error:#}"),
    }
}

fn fetch_across(left: Nat, right: Nat) -> (String, Duration) {
    let _machine = shared_machine();
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
    let _machine = shared_machine();
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

// Browsers in the lab.

/// How long a browser may take to show what is awaited.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// The browser cases need the wasm client in static/pkg/, which the
/// server (a debug build) serves from disk.
fn require_client_built() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let wasm = root.join("static/pkg/web_client_bg.wasm");
    assert!(
        wasm.exists(),
        "the browser client is not built ({} is missing): run `cargo xtask build` \
         or `cargo xtask test`, which builds it before the tests",
        wasm.display()
    );
    if let Some(why) = chromium::missing() {
        panic!("{why}");
    }
}

/// Headless Chromium in a lab host: its ChromeDriver (killed on drop and
/// with the lab) and one session.
struct Browser {
    client: Client,
    _driver: ChromeDriver,
}

/// What the page shows (see web-client/src/view.rs).
#[derive(Debug, Deserialize)]
struct Shown {
    state: Option<String>,
    count: Option<String>,
    transport: Option<String>,
    /// `data-path`: direct, turn, relay, webrtc (not yet known) or author.
    path: Option<String>,
    transport_text: String,
    status: String,
    content: String,
    location: String,
}

const SHOWN_JS: &str = r#"
const $ = (id) => document.getElementById(id);
if (!$("app") || !$("content") || !$("transport")) { return null; }
return {
  state: $("app").dataset.state ?? null,
  count: $("host-count").dataset.count ?? null,
  transport: $("transport").dataset.transport ?? null,
  path: $("transport").dataset.path ?? null,
  transport_text: $("transport").textContent,
  status: $("status").textContent,
  content: $("content").textContent,
  location: location.pathname,
};
"#;

impl Browser {
    /// Starts ChromeDriver inside `host`'s namespace and a Chromium session
    /// with a fresh profile under the world's scratch directory.
    async fn start(world: &World, host: &(String, String)) -> Browser {
        let driver = ChromeDriver::start_in(world.lab(), &host.0)
            .await
            .unwrap_or_else(|e| panic!("ChromeDriver starts in {}: {e:#}", host.0));
        let profile = world.dir.join(format!("profile-{}", host.0));
        let client = driver
            .session(&profile)
            .await
            .unwrap_or_else(|e| panic!("Chromium starts in {}: {e:#}", host.0));
        Browser {
            client,
            _driver: driver,
        }
    }

    /// Opens `http://198.18.0.1:4000{path}`.
    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("http://{SERVER_IP}:4000{path}"))
            .await
            .expect("the page loads from the server in the lab");
    }

    async fn shown(&self) -> Option<Shown> {
        let value = self.client.execute(SHOWN_JS, vec![]).await.ok()?;
        serde_json::from_value(value).ok()
    }

    /// Polls the page until `ready` holds; fails after [`BROWSER_WAIT`]
    /// with what it showed last.
    async fn wait_for(&self, what: &str, ready: impl Fn(&Shown) -> bool) -> Shown {
        chromium::poll_page(what, BROWSER_WAIT, || self.shown(), ready).await
    }

    /// Writes `text` on the home page and presses Share; returns once the
    /// page is hosted.
    async fn share(&self, text: &str) -> Shown {
        self.open("/").await;
        self.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
            .await;
        self.client
            .execute(
                "document.getElementById('editor').value = arguments[0];",
                vec![json!(text)],
            )
            .await
            .expect("the editor takes text");
        self.client
            .find(Locator::Id("share"))
            .await
            .expect("a Share button")
            .click()
            .await
            .expect("Share clicks");
        self.wait_for("the shared page to be hosted", |s| {
            s.state.as_deref() == Some("hosting") && s.count.as_deref() == Some("1")
        })
        .await
    }

    /// Opens a page's address and waits until the tab hosts it and knows
    /// the path the page took.
    async fn visit(&self, path: &str) -> Shown {
        self.open(path).await;
        self.wait_for("the page to arrive, and its path", |s| {
            s.state.as_deref() == Some("hosting")
                && matches!(s.path.as_deref(), Some("direct" | "turn" | "relay"))
        })
        .await
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Runs blocking lab work (starting the server, native peers) without
/// stalling the browser's WebDriver connection.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// Chromium in one LAN, `ephemeral-peer` in the other, both behind cone
/// NATs: each gets the page the other hosts, peer to peer, and the browser
/// gets the native peer's page directly (`data-path="direct"`).
///
/// Where the browser hosts, the path is not asserted. The host offers, so
/// Chromium is the ICE-controlling side, and it nominates the first pair
/// that answers: one through TURN, which needs no hole punched, while its
/// first check towards the native peer's public address is still dropped
/// by the far router. The page (one message) is across before Chromium
/// would switch to the direct pair, and the CLI says `via webrtc (turn)`.
/// A native host (controlling) holds relay pairs back for 300 ms, which
/// lets the direct pair win — if Chromium's paced checks come in time,
/// hence [`MACHINE`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_native_peer_behind_cone_nats_serve_each_other_peer_to_peer() {
    let _machine = MACHINE.write().await;
    require_client_built();
    let (world, browser_host, native_host) = blocking(|| {
        let mut lab = lab();
        let mut lan1 = lab.add_lan(Nat::Cone).expect("LAN 1");
        let in_lan1 = lab.add_host(&mut lan1).expect("a host in LAN 1");
        let mut lan2 = lab.add_lan(Nat::Cone).expect("LAN 2");
        let in_lan2 = lab.add_host(&mut lan2).expect("a host in LAN 2");
        (World::start(lab), in_lan1, in_lan2)
    });
    let browser = Browser::start(&world, &browser_host).await;

    // The browser writes and hosts; the native peer gets it.
    let written = "written in Chromium behind a cone NAT ✓";
    let hash = PageHash::of(written.as_bytes());
    let shared = browser.share(written).await;
    assert_eq!(shared.location, format!("/{hash}"), "{shared:#?}");
    let link = format!("http://{SERVER_IP}:4000/{hash}");
    let (bytes, said, _) = blocking(|| world.get(&native_host, &link));
    assert_eq!(bytes, written.as_bytes(), "the page arrived intact: {said}");
    assert!(said.contains("via webrtc ("), "peer to peer: {said}");

    // The native peer shares; the browser visits, and shows the path.
    let native_text = "shared by ephemeral-peer behind a cone NAT 👋";
    let (native_link, _host) = blocking(|| world.share(&native_host, native_text));
    let native_hash = PageHash::of(native_text.as_bytes());
    assert_eq!(
        native_link,
        format!("http://{SERVER_IP}:4000/{native_hash}")
    );
    let seen = browser.visit(&format!("/{native_hash}")).await;
    assert_eq!(seen.content, native_text, "{seen:#?}");
    assert_eq!(seen.transport.as_deref(), Some("webrtc"), "{seen:#?}");
    assert_eq!(seen.path.as_deref(), Some("direct"), "{seen:#?}");
    assert!(seen.transport_text.contains("WebRTC, direct"), "{seen:#?}");
    assert!(seen.status.contains("Verified"), "{seen:#?}");
    browser.close().await;
}

/// Two Chromiums, each behind its own symmetric NAT: no direct pair can
/// form, and the visitor's page says the page came through the server's
/// built-in TURN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_behind_symmetric_nats_go_through_the_built_in_turn() {
    let _machine = MACHINE.write().await;
    require_client_built();
    let (world, author_host, visitor_host) = blocking(|| {
        let mut lab = lab();
        let mut lan1 = lab.add_lan(Nat::Symmetric).expect("LAN 1");
        let in_lan1 = lab.add_host(&mut lan1).expect("a host in LAN 1");
        let mut lan2 = lab.add_lan(Nat::Symmetric).expect("LAN 2");
        let in_lan2 = lab.add_host(&mut lan2).expect("a host in LAN 2");
        (World::start(lab), in_lan1, in_lan2)
    });
    let author = Browser::start(&world, &author_host).await;
    let visitor = Browser::start(&world, &visitor_host).await;

    let text = "between two browsers behind symmetric NATs, through TURN ✓";
    let hash = PageHash::of(text.as_bytes());
    author.share(text).await;
    let seen = visitor.visit(&format!("/{hash}")).await;
    assert_eq!(seen.content, text, "{seen:#?}");
    assert_eq!(seen.transport.as_deref(), Some("webrtc"), "{seen:#?}");
    assert_eq!(seen.path.as_deref(), Some("turn"), "{seen:#?}");
    assert!(seen.transport_text.contains("through TURN"), "{seen:#?}");
    assert!(seen.status.contains("Verified"), "{seen:#?}");
    author
        .wait_for("the author to count the visitor", |s| {
            s.count.as_deref() == Some("2")
        })
        .await;
    visitor.close().await;
    author.close().await;
}
