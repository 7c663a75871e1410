//! Benchmark 1, browser part ([`time_to_content`]): how long a person
//! waits in Chromium, from the navigation's start to the verified page in
//! the tab, served by another browser or by a native peer.
//!
//! Benchmark 4, browser ↔ native part: headless Chromium running the wasm
//! client hosts a page, and a native peer (`ephemeral-peer`) fetches it
//! over WebRTC. The rate is timed on the native side, by the peer
//! library's own timings (channel open → verified bytes), which are exact;
//! the browser side could only be timed by polling it over WebDriver.
//!
//! The page is 1 MiB because that is the web client's page limit; the
//! server serves the client it embedded when this binary was built.
//! Chromium runs under ChromeDriver in its own PID namespace where the
//! machine allows it, so that nothing it starts outlives the benchmark.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_peer::{FetchOptions, Peer};
use ephemeral_phoenix_client::websocket_url;
use fantoccini::{Client, Locator};
use serde_json::{Value as Json, json};
use tokio::time::Instant;

use ephemeral_tests::chromium::{self, ChromeDriver};

use crate::peers::webrtc_rate;
use crate::report::{Better, Row, Value};
use crate::ttc::peer_config;
use crate::{children, load};

const BENCHMARK: &str = "4. Data-channel throughput";
/// The page measured: the web client's limit when this was first measured.
const PAGE_BYTES: usize = 1 << 20;
/// Every wait on the browser is bounded.
const WAIT: Duration = Duration::from_secs(30);

pub async fn run(runs: usize, workspace: &Path) -> Result<Row> {
    let metric = "1 MiB, browser→native";
    if let Some(why) = chromium::missing() {
        return Ok(Row::not_measured(BENCHMARK, metric, why));
    }
    if !workspace.join("static/pkg/web_client_bg.wasm").exists() {
        let why = "the web client is not built: run `cargo xtask build` first";
        return Ok(Row::not_measured(BENCHMARK, metric, why));
    }
    let server = children::signal_server(&[]).await?;
    let base = format!("http://{}", server.addr);
    let url = websocket_url(server.addr);
    let driver = ChromeDriver::start().await?;
    let browser = driver.session(&profile_dir()).await?;

    let mut rates = Vec::with_capacity(runs);
    let mut setups = Vec::with_capacity(runs);
    let outcome = async {
        for run in 0..runs {
            let (text, hash) = load::page(PAGE_BYTES, 500 + run as u64);
            share(&browser, &base, &text).await?;
            let mut config = peer_config(&url, true);
            config.fetch.max_page_bytes = 2 * PAGE_BYTES;
            let visitor = Peer::connect(config)
                .await
                .context("the native visitor cannot connect")?;
            let fetched = visitor
                .fetch_with(hash, FetchOptions::default())
                .await
                .context("the native visitor did not get the browser's page")?;
            visitor.shutdown().await;
            let (rate, open) = webrtc_rate(&fetched, PAGE_BYTES).context("the browser's page")?;
            rates.push(rate);
            setups.push(open);
        }
        anyhow::Ok(())
    }
    .await;
    let _ = browser.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(profile_dir());
    server.stop().await;
    outcome?;

    rates.sort_by(f64::total_cmp);
    setups.sort_unstable();
    let median = rates[rates.len() / 2];
    let setup = setups[setups.len() / 2];
    Ok(Row::new(
        BENCHMARK,
        metric,
        Value::new(median, "MB/s"),
        Better::Higher,
    )
    .target("≥ 25 MB/s", median >= 25.0)
    .note(format!(
        "Chromium hosts, webrtc-rs fetches; median of {runs}, range {:.0}–{:.0} MB/s; \
             channel open after {:.0} ms; native→browser not timed",
        rates[0],
        rates[rates.len() - 1],
        setup.as_secs_f64() * 1e3
    )))
}

/// Opens the home page, puts `text` in the editor, shares it, and waits
/// until the tab hosts it.
async fn share(browser: &Client, base: &str, text: &str) -> Result<()> {
    browser
        .goto(&format!("{base}/"))
        .await
        .context("Chromium cannot open the home page")?;
    wait_for_state(browser, "home").await?;
    // Set by script: typing a megabyte over WebDriver would take minutes.
    browser
        .execute(
            "document.getElementById('editor').value = arguments[0];",
            vec![json!(text)],
        )
        .await
        .context("cannot fill the editor")?;
    browser
        .find(Locator::Id("share"))
        .await
        .context("no Share button")?
        .click()
        .await
        .context("cannot click Share")?;
    wait_for_state(browser, "hosting").await
}

/// Polls `#app[data-state]` until it is `state`, within [`WAIT`].
pub(crate) async fn wait_for_state(browser: &Client, state: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut last = Json::Null;
    while Instant::now() < deadline {
        let script = "const app = document.getElementById('app'); return app ? (app.dataset.state ?? null) : null;";
        if let Ok(seen) = browser.execute(script, vec![]).await {
            if seen == json!(state) {
                return Ok(());
            }
            last = seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the page did not reach state {state:?} within {WAIT:?} (last: {last})")
}

/// The benchmark's Chromium profile, fresh each run.
fn profile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ephemeral-bench-chromium-{}", std::process::id()))
}

const TIME_TO_CONTENT: &str = "1. Time to content";

/// Page sizes the browser's time to content is measured at.
const TTC_SIZES: [(&str, usize); 2] = [("10 KB", 10_000), ("8 MiB", 8 << 20)];

/// Benchmark 1 in the browser: a fresh tab of headless Chromium opens a
/// page's link; timed from the navigation's start to the verified page in
/// the DOM, by the `ephemeral:page-shown` mark the client sets
/// (web-client/src/ui.rs). The page is hosted by another Chromium, then by
/// a native peer; p50 and p95 of `runs` visits each, at 10 KB and 8 MiB.
pub async fn time_to_content(quick: bool, workspace: &Path) -> Result<Vec<Row>> {
    let runs = if quick { 5 } else { 20 };
    let skip = |why: &str| {
        let mut rows = Vec::new();
        for (size, _) in TTC_SIZES {
            for from in ["browser→browser", "native→browser"] {
                let metric = format!("{size}, {from}, p50");
                rows.push(Row::not_measured(TIME_TO_CONTENT, metric, why));
            }
        }
        rows
    };
    if let Some(why) = cannot_run(workspace) {
        return Ok(skip(&why));
    }
    let server = children::signal_server(&[]).await?;
    let base = format!("http://{}", server.addr);
    let url = websocket_url(server.addr);
    let driver = ChromeDriver::start().await?;
    let host = driver.session(&profile_named("ttc-host")).await?;
    let visitor = driver.session(&profile_named("ttc-visitor")).await?;
    let mut config = peer_config(&url, true);
    config.fetch.max_page_bytes = 16 << 20;
    let native = Peer::connect(config).await;
    let outcome = async {
        let native = native.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut rows = Vec::new();
        for (n, (size, bytes)) in TTC_SIZES.into_iter().enumerate() {
            let (text, hash) = load::page(bytes, 700 + n as u64);
            share(&host, &base, &text).await?;
            let waits = visits(&visitor, &base, hash, runs).await?;
            rows.extend(ttc_rows(&format!("{size}, browser→browser"), &waits));
            let (text, hash) = load::page(bytes, 800 + n as u64);
            native
                .share(text.into_bytes())
                .await
                .context("the native peer cannot host")?;
            let waits = visits(&visitor, &base, hash, runs).await?;
            rows.extend(ttc_rows(&format!("{size}, native→browser"), &waits));
        }
        anyhow::Ok(rows)
    }
    .await;
    let _ = visitor.close().await;
    let _ = host.close().await;
    if let Ok(native) = native {
        native.shutdown().await;
    }
    drop(driver);
    for name in ["ttc-host", "ttc-visitor"] {
        let _ = std::fs::remove_dir_all(profile_named(name));
    }
    server.stop().await;
    outcome
}

/// Why the browser benchmarks cannot run here, if they cannot: no
/// Chromium, or no web client built for the server to serve.
pub(crate) fn cannot_run(workspace: &std::path::Path) -> Option<String> {
    if let Some(why) = chromium::missing() {
        return Some(why);
    }
    if !workspace.join("static/pkg/web_client_bg.wasm").exists() {
        return Some("the web client is not built: run `cargo xtask build` first".into());
    }
    None
}

/// Makes `visitor` a new visitor of `url`: what the tab kept is forgotten
/// and the page it was on left first.
pub(crate) async fn open_as_new_visitor(visitor: &Client, url: &str) -> Result<()> {
    let forget = "try { sessionStorage.clear(); } catch (e) {} return null;";
    let _ = visitor.execute(forget, vec![]).await;
    visitor
        .goto("about:blank")
        .await
        .context("Chromium cannot leave the page")?;
    visitor
        .goto(url)
        .await
        .with_context(|| format!("Chromium cannot open {url}"))?;
    Ok(())
}

/// `runs` first visits of `hash` by the same Chromium, each as a new
/// visitor: what the tab kept is forgotten and it leaves before the next.
async fn visits(
    visitor: &Client,
    base: &str,
    hash: ephemeral_shared::PageHash,
    runs: usize,
) -> Result<Vec<Duration>> {
    let mut waits = Vec::with_capacity(runs);
    for _ in 0..runs {
        open_as_new_visitor(visitor, &format!("{base}/{hash}")).await?;
        wait_for_state(visitor, "hosting").await?;
        let shown = visitor
            .execute(
                "const m = performance.getEntriesByName('ephemeral:page-shown')[0]; \
                 return m ? m.startTime : null;",
                vec![],
            )
            .await
            .context("cannot read the page-shown mark")?;
        let Some(ms) = shown.as_f64() else {
            bail!("the client set no page-shown mark");
        };
        waits.push(Duration::from_secs_f64(ms / 1e3));
    }
    Ok(waits)
}

fn ttc_rows(what: &str, waits: &[Duration]) -> Vec<Row> {
    let Some(p) = crate::report::Percentiles::of(waits) else {
        return vec![Row::not_measured(TIME_TO_CONTENT, what, "no samples")];
    };
    let note = format!(
        "headless Chromium, navigation start → verified page in the tab; {} runs",
        p.samples
    );
    vec![
        Row::new(
            TIME_TO_CONTENT,
            format!("{what}, p50"),
            Value::ms(p.p50),
            Better::Lower,
        )
        .note(note),
        Row::new(
            TIME_TO_CONTENT,
            format!("{what}, p95"),
            Value::ms(p.p95),
            Better::Lower,
        ),
    ]
}

/// A Chromium profile of this run, by name.
fn profile_named(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ephemeral-bench-{name}-{}", std::process::id()))
}
