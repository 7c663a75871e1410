//! What every browser test needs: the real server in-process on a free
//! loopback port serving the built `static/`, ChromeDriver on a free
//! loopback port, headless Chromium sessions each with a fresh profile, a
//! snapshot of the page's test hooks, and a bound on every wait.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ephemeral_tests::chromium::{self, ChromeDriver};
use fantoccini::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

/// A wait that takes longer than this is a failure, not a stuck run.
pub const WAIT: Duration = Duration::from_secs(30);

/// Chromium is heavy and the machine has two cores: one browser test at a
/// time keeps timings honest.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A test's world: the server, the driver, and the exclusive turn.
pub struct World {
    /// `None` while stopped by [`World::stop_server`].
    server: Option<signal_server::RunningServer>,
    /// The address the server keeps across restarts.
    addr: std::net::SocketAddr,
    config: signal_server::Config,
    pub base: String,
    driver: ChromeDriver,
    profiles: Vec<PathBuf>,
    _turn: MutexGuard<'static, ()>,
}

impl World {
    /// Starts the server and ChromeDriver. Fails with a clear message if the
    /// wasm client or the browser is missing.
    pub async fn start() -> World {
        Self::start_with(signal_server::Config::default()).await
    }

    pub async fn start_with(config: signal_server::Config) -> World {
        let turn = ONE_AT_A_TIME.lock().await;
        require_client_built();
        if let Some(why) = chromium::missing() {
            panic!("{why}");
        }
        let config = signal_server::Config {
            bind: "127.0.0.1:0".parse().expect("a literal address"),
            // Any free UDP port for STUN/TURN.
            turn_port: 0,
            ..config
        };
        let server = signal_server::start(config.clone())
            .await
            .expect("the signaling server starts");
        let addr = server.local_addr();
        let base = format!("http://{addr}");
        let driver = ChromeDriver::start().await.expect("ChromeDriver starts");
        World {
            server: Some(server),
            addr,
            config,
            base,
            driver,
            profiles: Vec::new(),
            _turn: turn,
        }
    }

    /// A new headless Chromium with its own fresh profile: a separate
    /// visitor, sharing nothing with the others.
    pub async fn browser(&mut self) -> Browser {
        self.browser_with(serde_json::Map::new()).await
    }

    /// [`World::browser`] with more W3C capabilities.
    pub async fn browser_with(&mut self, capabilities: serde_json::Map<String, Value>) -> Browser {
        let profile = fresh_profile();
        let client = self
            .driver
            .session_with(&profile, capabilities)
            .await
            .expect("ChromeDriver starts a Chromium session");
        self.profiles.push(profile);
        Browser {
            client,
            base: self.base.clone(),
        }
    }

    /// `ws://…` of the server, for native peers.
    pub fn websocket_url(&self) -> String {
        format!("ws://{}/ws/websocket?vsn=2.0.0", self.addr)
    }

    /// Stops the server, closing every websocket as a restart would.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Starts the server again on the same address.
    pub async fn restart_server(&mut self) {
        self.stop_server().await;
        let config = signal_server::Config {
            bind: self.addr,
            ..self.config.clone()
        };
        let server = signal_server::start(config)
            .await
            .expect("the signaling server starts again on its address");
        self.server = Some(server);
    }

    pub async fn finish(mut self) {
        self.stop_server().await;
        for profile in &self.profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

/// The wasm client must have been built into static/pkg/.
fn require_client_built() {
    let wasm = repo_root().join("static/pkg/web_client_bg.wasm");
    assert!(
        wasm.exists(),
        "the browser client is not built ({} is missing): run `cargo xtask build` \
         or `cargo xtask test`, which builds it before the tests",
        wasm.display()
    );
}

pub fn repo_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests.parent().map(Path::to_path_buf).unwrap_or(tests)
}

/// A profile directory no other session uses ([`ChromeDriver::session`]
/// empties it).
fn fresh_profile() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "ephemeral-browser-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// One browser (one Chromium, one profile, one tab).
pub struct Browser {
    pub client: Client,
    base: String,
}

/// The page's test hooks (see web-client/src/view.rs), read in one call.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    pub state: Option<String>,
    pub connection: Option<String>,
    pub status: String,
    pub count: Option<String>,
    pub transport: Option<String>,
    pub transport_text: String,
    /// The shown text, cut at 4096 characters (see [`Browser::content`]).
    pub content: String,
    /// Characters of the shown text, in full.
    pub content_length: usize,
    pub content_visible: bool,
    pub content_children: u32,
    /// Whether a long page is still going into the DOM (`aria-busy`).
    pub content_busy: bool,
    pub gone_visible: bool,
    /// Whether the progress bar is showing.
    pub progress_shown: bool,
    pub path: String,
    pub pwned: Value,
    /// `#app[data-format]`: text, markdown or html.
    pub format: Option<String>,
    /// Whether the sandboxed frame shows the page.
    pub frame_visible: bool,
    pub title: String,
    /// What the live region last said.
    pub announce: String,
}

const SNAPSHOT_JS: &str = r#"
const $ = (id) => document.getElementById(id);
const app = $("app");
if (!app || !$("content")) { return null; }
return {
  state: app.dataset.state ?? null,
  connection: app.dataset.connection ?? null,
  status: $("status").textContent,
  count: $("host-count").dataset.count ?? null,
  transport: $("transport").dataset.transport ?? null,
  transport_text: $("transport").textContent,
  content: $("content").textContent.slice(0, 4096),
  content_length: $("content").textContent.length,
  progress_shown: !$("progress-row").hidden,
  format: app.dataset.format ?? null,
  frame_visible: !$("frame").hidden,
  title: document.title,
  announce: $("announce").textContent,
  content_visible: !$("content").hidden,
  content_children: $("content").children.length,
  content_busy: $("content").getAttribute("aria-busy") === "true",
  gone_visible: !$("gone").hidden,
  path: location.pathname,
  pwned: window.__pwned ?? null,
};
"#;

impl Browser {
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("the page loads");
    }

    pub async fn snapshot(&self) -> Option<Snapshot> {
        let value = self.client.execute(SNAPSHOT_JS, vec![]).await.ok()?;
        serde_json::from_value(value).ok()
    }

    /// The whole text the page shows.
    pub async fn content(&self) -> String {
        let value = self
            .client
            .execute(
                "return document.getElementById('content').textContent;",
                vec![],
            )
            .await
            .expect("the content element is readable");
        value.as_str().map(str::to_string).unwrap_or_default()
    }

    /// Polls the page until `ready` holds, or fails after [`WAIT`] saying
    /// what was awaited and what the page showed last.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&Snapshot) -> bool) -> Snapshot {
        self.wait_for_within(what, WAIT, ready).await
    }

    pub async fn wait_for_within(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        // A long page is shown in stages: what is awaited holds once all
        // of it is in.
        let ready = |s: &Snapshot| !s.content_busy && ready(s);
        chromium::poll_page(what, limit, || self.snapshot(), ready).await
    }

    /// On the home page, writes `text` and presses Share; returns once the
    /// page is hosted.
    pub async fn share(&self, text: &str) -> Snapshot {
        self.share_as(text, "text").await
    }

    /// On the home page, picks `format` (text, markdown, html), writes
    /// `text` and presses Share; returns once the page is hosted.
    pub async fn share_as(&self, text: &str, format: &str) -> Snapshot {
        self.open("/").await;
        self.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
            .await;
        self.write(text, format).await;
        self.click("share").await;
        self.wait_for("the shared page to be hosted", |s| {
            s.state.as_deref() == Some("hosting") && s.count.as_deref() == Some("1")
        })
        .await
    }

    /// Picks `format` and puts `text` in the editor, as typing would.
    pub async fn write(&self, text: &str, format: &str) {
        self.click(&format!("format-{format}")).await;
        // Set through script: WebDriver typing cannot enter characters
        // outside the BMP (emoji), and is slow for long pages.
        self.client
            .execute(
                "const e = document.getElementById('editor'); e.value = arguments[0]; \
                 e.dispatchEvent(new Event('input'));",
                vec![json!(text)],
            )
            .await
            .expect("the editor takes text");
    }

    /// Clicks the element with id `id`, as a person would.
    pub async fn click(&self, id: &str) {
        self.client
            .find(fantoccini::Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("#{id} does not click: {e}"));
    }

    /// Runs `script` with `arguments[0]` the page frame's document (or
    /// `null`) and returns its value: the frame is same-origin with the
    /// app, so its rendered DOM can be read from outside.
    pub async fn in_frame(&self, frame: &str, script: &str) -> Value {
        let wrapped = format!(
            "const doc = document.getElementById({frame:?}).contentDocument; \
             return ((doc) => {{ {script} }})(doc);"
        );
        self.client
            .execute(&wrapped, vec![])
            .await
            .expect("the frame's document is readable")
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Records uncaught errors and rejections of this document in
    /// `window.__errors`, from now on.
    pub async fn record_errors(&self) {
        self.eval(
            "window.__errors = []; \
             addEventListener('error', (e) => window.__errors.push(String(e.message))); \
             addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));",
        )
        .await;
    }

    /// Opens the home page and records its errors from then on: a visitor
    /// who then moves to a page within the tab ([`Browser::go_in_app`])
    /// is watched through the whole fetch.
    pub async fn record_errors_on_load(&self) {
        self.open("/").await;
        self.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
            .await;
        self.record_errors().await;
    }

    /// Moves to `path` within the tab, as the app's own links do, so what
    /// the page recorded so far stays.
    pub async fn go_in_app(&self, path: &str) {
        self.client
            .execute(
                "history.pushState(null, '', arguments[0]); \
                 dispatchEvent(new PopStateEvent('popstate'));",
                vec![json!(path)],
            )
            .await
            .expect("the page navigates");
    }

    /// Whether leaving now asks "leave page?", as the browser's own dialog
    /// says: reloads the tab as a person would and waits for either the
    /// dialog, which it dismisses so the tab stays as it was, or the new
    /// document, which means the tab left without asking. Needs a session
    /// with [`real_prompts`]. Browsers ask only in a tab the person has
    /// used, so it clicks the status line first.
    pub async fn asks_before_leaving(&self) -> bool {
        self.click("status").await;
        self.eval("window.__leaving = true; return null;").await;
        tokio::time::timeout(WAIT, self.client.refresh())
            .await
            .expect("the reload returns once asked or done")
            .expect("a reload");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if self.client.get_alert_text().await.is_ok() {
                self.client
                    .dismiss_alert()
                    .await
                    .expect("the dialog is dismissed");
                let stayed = self.eval("return window.__leaving === true;").await;
                assert_eq!(stayed, Value::Bool(true), "dismissed, the tab stays");
                return true;
            }
            let same = self
                .client
                .execute("return window.__leaving === true;", vec![])
                .await;
            if matches!(same, Ok(Value::Bool(false))) {
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "neither a dialog nor a new document after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What this browser's origin keeps in IndexedDB (web-client's
    /// `idb.rs`): the `[tab, name]` keys of `kept` and the ids in `tabs`;
    /// both empty when the database does not exist (it is not created).
    pub async fn on_disk(&self) -> OnDisk {
        let value = self
            .client
            .execute_async(ON_DISK_JS, vec![])
            .await
            .expect("IndexedDB is readable");
        serde_json::from_value(value).expect("keys and ids")
    }

    /// Saves a screenshot under tests/artifacts/ for a person to look at.
    pub async fn screenshot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .expect("Chromium takes a screenshot");
        let dir = repo_root().join("tests/artifacts");
        std::fs::create_dir_all(&dir).expect("tests/artifacts/");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("the screenshot is written");
        eprintln!("screenshot: {}", path.display());
    }

    /// Closes the browser, as a visitor closing the tab.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Capabilities under which Chromium shows its own "leave page?" dialog
/// and leaves it to the test ([`Browser::asks_before_leaving`]).
/// ChromeDriver accepts that dialog itself unless the session speaks
/// WebDriver BiDi (`webSocketUrl`) and the prompt handler names
/// `beforeUnload`: a plain `"ignore"` does not cover it (WebDriver's
/// "get the prompt handler" gives beforeunload "accept" then).
pub fn real_prompts() -> serde_json::Map<String, Value> {
    serde_json::Map::from_iter([
        (
            "unhandledPromptBehavior".to_string(),
            json!({ "beforeUnload": "ignore", "default": "ignore" }),
        ),
        ("webSocketUrl".to_string(), json!(true)),
    ])
}

/// What an origin keeps in IndexedDB (see [`Browser::on_disk`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OnDisk {
    /// `[tab id, name]`: a page's hash, or `draft`.
    pub kept: Vec<(String, String)>,
    pub tabs: Vec<String>,
}

const ON_DISK_JS: &str = r#"
const done = arguments[arguments.length - 1];
const open = indexedDB.open("ephemeral");
// Absent: do not create it, which the upgrade would.
open.onupgradeneeded = () => open.transaction.abort();
open.onerror = () => done({ kept: [], tabs: [] });
open.onsuccess = () => {
  const db = open.result;
  const tx = db.transaction(["kept", "tabs"]);
  const kept = tx.objectStore("kept").getAllKeys();
  const tabs = tx.objectStore("tabs").getAllKeys();
  tx.oncomplete = () => { db.close(); done({ kept: kept.result, tabs: tabs.result }); };
  tx.onabort = () => { db.close(); done(null); };
};
"#;

/// Whether the snapshot shows `count` hosts.
pub fn hosts(snapshot: &Snapshot, count: usize) -> bool {
    snapshot.count.as_deref() == Some(count.to_string().as_str())
}
