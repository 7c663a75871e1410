//! Headless Chromium driven over WebDriver, for the browser tests and the
//! browser benchmark alike: ChromeDriver on a free loopback port, and
//! Chromium sessions with the flags that work on these machines
//! (docs/webrtc-facts.md).
//!
//! Where the machine allows it (root, as in CI), ChromeDriver runs as the
//! first process of its own PID namespace: everything it and Chromium start
//! lives and dies inside, so killing it on drop leaves nothing behind, and
//! no signal sent in there can reach a process outside.
//!
//! For the NAT lab, [`ChromeDriver::start_in`] runs ChromeDriver (and so
//! Chromium) inside one of the lab's network namespaces, reached from here
//! through a loopback port the lab forwards into it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::natlab::Lab;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long ChromeDriver may take to listen.
const START_WAIT: Duration = Duration::from_secs(30);

/// Why the browser cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .find(|binary| !Path::new(binary).exists())
        .map(|binary| {
            format!(
                "{binary} is missing: install Chromium with `cargo xtask test` \
                 (or `apt-get install chromium chromium-driver`)"
            )
        })
}

/// A running ChromeDriver, accepting loopback only; killed on drop.
pub struct ChromeDriver {
    child: Child,
    url: String,
    /// ChromeDriver's own log, quoted when it fails; removed on drop.
    log: PathBuf,
}

impl ChromeDriver {
    /// Starts ChromeDriver, on a fresh port each try: a port the OS calls
    /// free may be taken before ChromeDriver binds it, or still be held in
    /// TIME_WAIT (ChromeDriver binds without SO_REUSEADDR and exits).
    pub async fn start() -> Result<ChromeDriver> {
        Self::start_where(None).await
    }

    /// Starts ChromeDriver inside `namespace`, one of `lab`'s network
    /// namespaces (`ip netns exec`): Chromium, its child, browses from
    /// there. ChromeDriver listens on 127.0.0.1 in that namespace; this
    /// process reaches it through [`Lab::forward_tcp`]. Every process it
    /// starts dies on drop, and with the lab.
    pub async fn start_in(lab: &Lab, namespace: &str) -> Result<ChromeDriver> {
        Self::start_where(Some((lab, namespace))).await
    }

    async fn start_where(inside: Option<(&Lab, &str)>) -> Result<ChromeDriver> {
        let namespace = own_pid_namespace_works();
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(namespace, inside).await {
                Ok(driver) => return Ok(driver),
                Err(why) => failures.push(format!("{why:#}")),
            }
        }
        bail!("chromedriver would not start: {failures:#?}")
    }

    async fn try_start(namespace: bool, inside: Option<(&Lab, &str)>) -> Result<ChromeDriver> {
        // Free here; inside a lab namespace, where nothing else listens,
        // any port is, and a fresh one per try avoids TIME_WAIT there too.
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("ephemeral-chromedriver-{port}.log"));
        let mut words: Vec<&str> = Vec::new();
        if let Some((_, network)) = inside {
            words.extend(["ip", "netns", "exec", network]);
        }
        if namespace {
            words.extend(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]);
        }
        words.push(CHROMEDRIVER);
        let mut command = Command::new(words[0]);
        command.args(&words[1..]);
        let child = command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {CHROMEDRIVER}"))?;
        let mut driver = ChromeDriver {
            child,
            url: String::new(),
            log,
        };
        // Through a forward, a connection is accepted before ChromeDriver
        // listens: only an HTTP answer says it is up.
        let (local, answers): (u16, fn(u16) -> bool) = match inside {
            None => (port, |port| {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            Some((lab, network)) => (lab.forward_tcp(network, port)?, status_answers),
        };
        driver.url = format!("http://127.0.0.1:{local}");
        let deadline = Instant::now() + START_WAIT;
        while !answers(local) {
            let log_text = || std::fs::read_to_string(&driver.log).unwrap_or_default();
            if let Ok(Some(status)) = driver.child.try_wait() {
                bail!("exited with {status} on port {port}: {}", log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "not listening on {port} after {START_WAIT:?}: {}",
                    log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(driver)
    }

    /// A new headless Chromium whose profile is `profile`, emptied first:
    /// a separate visitor, sharing nothing with other sessions.
    pub async fn session(&self, profile: &Path) -> Result<Client> {
        self.session_with(profile, serde_json::Map::new()).await
    }

    /// [`ChromeDriver::session`] with more W3C capabilities, such as
    /// `unhandledPromptBehavior`.
    pub async fn session_with(
        &self,
        profile: &Path,
        more: serde_json::Map<String, Value>,
    ) -> Result<Client> {
        let _ = std::fs::remove_dir_all(profile);
        std::fs::create_dir_all(profile)
            .with_context(|| format!("cannot create the profile {}", profile.display()))?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1100,900",
            // Real host addresses in ICE candidates instead of mDNS names,
            // so peers on one machine can reach each other.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let Value::Object(mut capabilities) = json!({
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }) else {
            bail!("capabilities are a JSON object");
        };
        capabilities.extend(more);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .context("ChromeDriver cannot start a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // In a namespace, `unshare --kill-child` takes ChromeDriver with it,
        // and the namespace's end takes every Chromium process.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether an HTTP server answers `GET /status` on loopback `port`.
fn status_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn own_pid_namespace_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free loopback port")?
        .port())
}

/// Reads the page with `read` every 100 ms until `ready` holds, and returns
/// that reading; panics after `limit`, with what the page showed last.
pub async fn poll_page<T, F>(
    what: &str,
    limit: Duration,
    mut read: impl FnMut() -> F,
    ready: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(shown) = read().await {
            if ready(&shown) {
                return shown;
            }
            last = Some(shown);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; the page showed {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
