//! Benchmark 12: whether a tab stays responsive while a 16 MiB page is
//! hashed, sent, received, verified and shown. Measured by Chromium itself:
//! the longest task on the tab's main thread (the Long Tasks API reports
//! every task of 50 ms or more), and the longest gap between animation
//! frames, which also counts rendering.
//!
//! Two tabs of headless Chromium: the author puts a 16 MiB page in the
//! editor and presses Share (its tab is watched from the click until it
//! hosts), then a visitor already on the home page follows the link inside
//! the app (watched from the click until a second after the page is shown,
//! so its layout counts too). The baseline is the same two steps with a
//! 10 KB page in the same run: what those tabs block for anyway. Loading
//! the client is outside both windows, so neither counts compiling wasm.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fantoccini::{Client, Locator};
use serde_json::{Value as Json, json};

use ephemeral_tests::chromium::ChromeDriver;

use crate::browser::{cannot_run, open_as_new_visitor, wait_for_state};
use crate::children;
use crate::report::{Better, Row, Value};

const BENCHMARK: &str = "12. Responsiveness";
const LARGE: usize = 16 << 20;
const SMALL: usize = 10_000;
/// After the page is shown, how long its layout and paint may still block.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts recording long tasks and frame gaps in the tab; read by
/// [`READ`].
const WATCH: &str = r#"
    window.__long = []; window.__gap = 0;
    new PerformanceObserver((list) => {
        for (const task of list.getEntries()) window.__long.push(task.duration);
    }).observe({ type: "longtask" });
    let last = performance.now();
    const frame = (t) => { window.__gap = Math.max(window.__gap, t - last); last = t; requestAnimationFrame(frame); };
    requestAnimationFrame(frame);
    return PerformanceObserver.supportedEntryTypes.includes("longtask");
"#;

/// The longest task (0 when none reached 50 ms), the number of long tasks
/// and the longest frame gap, in ms.
const READ: &str = "return [Math.max(0, ...window.__long), window.__long.length, window.__gap];";

/// What one watched window saw.
#[derive(Debug, Clone, Copy, Default)]
struct Blocked {
    longest_task_ms: f64,
    long_tasks: usize,
    longest_gap_ms: f64,
}

impl Blocked {
    fn worst(samples: &[Blocked]) -> Blocked {
        samples.iter().fold(Blocked::default(), |worst, s| Blocked {
            longest_task_ms: worst.longest_task_ms.max(s.longest_task_ms),
            long_tasks: worst.long_tasks.max(s.long_tasks),
            longest_gap_ms: worst.longest_gap_ms.max(s.longest_gap_ms),
        })
    }

    fn median_task(samples: &[Blocked]) -> f64 {
        let mut tasks: Vec<f64> = samples.iter().map(|s| s.longest_task_ms).collect();
        tasks.sort_by(f64::total_cmp);
        tasks.get(tasks.len() / 2).copied().unwrap_or(0.0)
    }
}

pub async fn run(quick: bool, workspace: &Path) -> Result<Vec<Row>> {
    let runs = if quick { 3 } else { 10 };
    let metrics = [
        "16 MiB, browser→browser: longest main-thread task, visitor",
        "16 MiB: longest main-thread task, author's Share",
    ];
    let skip = |why: &str| {
        metrics
            .iter()
            .map(|metric| Row::not_measured(BENCHMARK, *metric, why))
            .collect()
    };
    if let Some(why) = cannot_run(workspace) {
        return Ok(skip(&why));
    }
    let server = children::signal_server(&[]).await?;
    let base = format!("http://{}", server.addr);
    let driver = ChromeDriver::start().await?;
    let author = driver.session(&profile_named("author")).await?;
    let visitor = driver.session(&profile_named("visitor")).await?;
    let outcome = async {
        let mut samples = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
        // Alternating sizes, so that whatever else the machine does falls
        // on both alike.
        for run in 0..runs {
            for (n, size) in [SMALL, LARGE].into_iter().enumerate() {
                let (hash, shared) = share(&author, &base, size, run).await?;
                let fetched = fetch(&visitor, &base, &hash).await?;
                samples[n].0.push(fetched);
                samples[n].1.push(shared);
            }
        }
        anyhow::Ok(samples)
    }
    .await;
    let _ = visitor.close().await;
    let _ = author.close().await;
    drop(driver);
    for name in ["author", "visitor"] {
        let _ = std::fs::remove_dir_all(profile_named(name));
    }
    server.stop().await;
    let [(small_fetch, small_share), (large_fetch, large_share)] = outcome?;
    Ok(vec![
        row(metrics[0], &large_fetch, &small_fetch, runs),
        row(metrics[1], &large_share, &small_share, runs),
    ])
}

fn row(metric: &str, large: &[Blocked], small: &[Blocked], runs: usize) -> Row {
    let worst = Blocked::worst(large);
    let floor = Blocked::worst(small);
    Row::new(
        BENCHMARK,
        format!(
            "{metric} (median of {runs}; worst {:.0} ms)",
            worst.longest_task_ms
        ),
        Value::new(Blocked::median_task(large), "ms"),
        Better::Lower,
    )
    .against(
        "10 KB, same tabs",
        Value::new(Blocked::median_task(small), "ms"),
    )
    .target(
        "< 100 ms (a response people see as instant)",
        worst.longest_task_ms < 100.0,
    )
    .note(format!(
        "headless Chromium, Long Tasks API (tasks ≥ 50 ms; 0 = none); at most {} long tasks \
         in one window; longest gap between frames {:.0} ms (10 KB: {:.0} ms)",
        worst.long_tasks, worst.longest_gap_ms, floor.longest_gap_ms
    ))
}

/// Puts a page of `size` bytes in the author's editor (made in the tab:
/// 16 MiB over WebDriver would be slow; while the editor shows Preview,
/// since Chromium takes some 25 s to lay out 16 MiB in a visible textarea),
/// presses Share and waits until the tab hosts it. Returns the page's
/// address and what the tab's main thread went through from the click.
async fn share(author: &Client, base: &str, size: usize, run: usize) -> Result<(String, Blocked)> {
    author
        .goto(&format!("{base}/"))
        .await
        .context("Chromium cannot open the home page")?;
    wait_for_state(author, "home").await?;
    click(author, "preview-tab").await?;
    author
        .execute(
            r#"const line = `run ${arguments[1]}: the quick brown fox jumps over the lazy dog 0123456789\n`;
               const text = line.repeat(Math.ceil(arguments[0] / line.length)).slice(0, arguments[0]);
               const editor = document.getElementById("editor");
               editor.value = text;
               editor.dispatchEvent(new Event("input"));"#,
            vec![json!(size), json!(run)],
        )
        .await
        .context("cannot fill the editor")?;
    watch(author).await?;
    click(author, "share").await?;
    wait_for_state(author, "hosting").await?;
    tokio::time::sleep(SETTLE).await;
    let blocked = read(author).await?;
    let path = author
        .execute("return location.pathname;", vec![])
        .await
        .context("cannot read the page's address")?;
    let Some(hash) = path.as_str().map(|p| p.trim_start_matches('/').to_string()) else {
        bail!("no address after Share: {path}");
    };
    Ok((hash, blocked))
}

/// A visitor that forgot what it held opens the home page, then follows
/// the link to `hash` inside the app, as a click on a link does.
async fn fetch(visitor: &Client, base: &str, hash: &str) -> Result<Blocked> {
    open_as_new_visitor(visitor, &format!("{base}/")).await?;
    wait_for_state(visitor, "home").await?;
    watch(visitor).await?;
    visitor
        .execute(
            "history.pushState(null, '', arguments[0]); dispatchEvent(new PopStateEvent('popstate'));",
            vec![json!(format!("/{hash}"))],
        )
        .await
        .context("cannot follow the link")?;
    wait_for_state(visitor, "hosting").await?;
    tokio::time::sleep(SETTLE).await;
    read(visitor).await
}

async fn watch(tab: &Client) -> Result<()> {
    let supported = tab
        .execute(WATCH, vec![])
        .await
        .context("cannot watch the tab")?;
    if supported != Json::Bool(true) {
        bail!("this Chromium does not report long tasks");
    }
    Ok(())
}

async fn read(tab: &Client) -> Result<Blocked> {
    let seen = tab
        .execute(READ, vec![])
        .await
        .context("cannot read the tab")?;
    let number = |i: usize| seen.get(i).and_then(Json::as_f64).unwrap_or(0.0);
    Ok(Blocked {
        longest_task_ms: number(0),
        long_tasks: number(1) as usize,
        longest_gap_ms: number(2),
    })
}

async fn click(tab: &Client, id: &str) -> Result<()> {
    tab.find(Locator::Id(id))
        .await
        .with_context(|| format!("no #{id}"))?
        .click()
        .await
        .with_context(|| format!("cannot click #{id}"))?;
    Ok(())
}

/// A Chromium profile of this run, by name.
fn profile_named(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ephemeral-bench-responsive-{name}-{}",
        std::process::id()
    ))
}
