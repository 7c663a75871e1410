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
/// The web client refuses pages over 1 MiB (web-client/src/app.rs).
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
async fn wait_for_state(browser: &Client, state: &str) -> Result<()> {
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
