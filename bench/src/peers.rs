//! Benchmarks 4 and 5, native peers (`ephemeral-peer`, webrtc-rs) on
//! loopback against our server:
//!
//! - data-channel throughput: one host, one visitor at a time, pages of
//!   1, 8 and 64 MiB; the rate is the page size over the time from the
//!   channel opening to verified bytes (the peer library's own timings),
//!   so connection set-up is reported separately and not averaged in;
//! - flash crowd: one host, then a crowd of visitors that all connect and
//!   ask at the same moment, each staying on to host as a real visitor
//!   does: how long until the last is served, and how evenly the uploads
//!   fell on the hosts. The same crowd arriving evenly over two seconds
//!   is run too, to show whether the swarm spreads load once there are
//!   hosts to spread it over (at once, there is one host only).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_peer::{FetchOptions, Fetched, Peer, Transport};
use ephemeral_phoenix_client::websocket_url;
use tokio::time::Instant;

use crate::report::{Better, Row, Value};
use crate::ttc::peer_config;
use crate::{children, load};

const DATA_CHANNEL: &str = "4. Data-channel throughput";
const FLASH_CROWD: &str = "5. Flash crowd";
const MIB: usize = 1024 * 1024;

/// Page sizes in MiB and how many visitors fetch each.
/// A WebRTC fetch's data-channel rate in MB/s (page bytes over the time
/// from the channel opening to verified bytes, so set-up is not averaged
/// in), and when the channel opened.
pub fn webrtc_rate(fetched: &Fetched, bytes: usize) -> Result<(f64, Duration)> {
    if fetched.transport != Transport::WebRtc {
        bail!("came by {}, not WebRTC", fetched.transport.as_str());
    }
    let open = fetched
        .timings
        .channel_open
        .context("a WebRTC fetch without a channel-open time")?;
    let transfer = fetched.timings.total.saturating_sub(open);
    Ok((bytes as f64 / transfer.as_secs_f64().max(1e-6) / 1e6, open))
}

pub fn transfers(quick: bool) -> Vec<(usize, usize)> {
    if quick {
        vec![(1, 3), (8, 2), (64, 1)]
    } else {
        vec![(1, 10), (8, 5), (64, 3)]
    }
}

pub async fn data_channel(transfers: &[(usize, usize)]) -> Result<Vec<Row>> {
    let server = children::signal_server(&[]).await?;
    let url = websocket_url(server.addr);
    let host = Peer::connect(peer_config(&url, true))
        .await
        .context("the host cannot connect")?;
    let mut rows = Vec::new();
    for &(mib, runs) in transfers {
        eprintln!("bench: data channel, {mib} MiB × {runs}");
        let (text, hash) = load::page(mib * MIB, mib as u64);
        host.share(text.into_bytes())
            .await
            .context("the host cannot share a large page")?;
        let mut rates = Vec::with_capacity(runs);
        let mut setups = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut config = peer_config(&url, true);
            // The default cap (1 MiB) is a visitor's safety limit, not a
            // transport one.
            config.fetch.max_page_bytes = 2 * mib * MIB;
            config.fetch.stall_timeout = Duration::from_secs(30);
            let visitor = Peer::connect(config)
                .await
                .context("a visitor cannot connect")?;
            let fetched = visitor
                .fetch_with(hash, FetchOptions::default())
                .await
                .with_context(|| format!("a visitor did not get the {mib} MiB page"))?;
            visitor.shutdown().await;
            let (rate, open) =
                webrtc_rate(&fetched, mib * MIB).with_context(|| format!("the {mib} MiB page"))?;
            rates.push(rate);
            setups.push(open);
        }
        host.unshare(hash)
            .await
            .context("the host cannot unshare")?;
        rates.sort_by(f64::total_cmp);
        setups.sort_unstable();
        let median = rates[rates.len() / 2];
        let setup = setups[setups.len() / 2];
        rows.push(
            Row::new(
                DATA_CHANNEL,
                format!("{mib} MiB, native↔native"),
                Value::new(median, "MB/s"),
                Better::Higher,
            )
            .target("≥ 100 MB/s", median >= 100.0)
            .note(format!(
                "median of {runs}; range {:.0}–{:.0} MB/s; channel open after {:.0} ms",
                rates[0],
                rates[rates.len() - 1],
                setup.as_secs_f64() * 1e3
            )),
        );
    }
    host.shutdown().await;
    server.stop().await;
    Ok(rows)
}

/// How long the second, staggered crowd takes to arrive.
pub const STAGGER: Duration = Duration::from_secs(2);

/// One crowd of `visitors`, arriving evenly over `spread` (zero: at once).
pub async fn flash_crowd(visitors: usize, spread: Duration) -> Result<Vec<Row>> {
    // All 200 native peers connect from 127.0.0.1 within two seconds at
    // most: the default per-address join limit (50/s) would spread the
    // crowd out, and the benchmark is about the server's selection.
    let server = children::signal_server(children::NO_PER_ADDRESS_LIMITS).await?;
    let url = websocket_url(server.addr);
    let (text, hash) = load::page(10 * 1024, 7);
    let host = Peer::connect(peer_config(&url, true))
        .await
        .context("the host cannot connect")?;
    host.share(text.into_bytes())
        .await
        .context("the host cannot share")?;
    let arrival = if spread.is_zero() {
        "at once".to_string()
    } else {
        format!("over {} s", spread.as_secs_f64())
    };
    eprintln!("bench: flash crowd, {visitors} visitors {arrival}");
    let start = Instant::now();
    let crowd: Vec<_> = (0..visitors)
        .map(|i| {
            let url = url.clone();
            let arrives = start + spread.mul_f64(i as f64 / visitors as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(arrives).await;
                let visitor = Peer::connect(peer_config(&url, true)).await?;
                let fetched = visitor.fetch_with(hash, FetchOptions::hosting()).await;
                let served_at = start.elapsed();
                anyhow::Ok((visitor, fetched.map(|f| (f.transport, served_at))))
            })
        })
        .collect();
    let mut peers = vec![host];
    let mut served = Vec::new();
    let mut failures = Vec::new();
    let mut webrtc = 0;
    for visitor in crowd {
        let (peer, outcome) = visitor.await.context("a visitor panicked")??;
        match outcome {
            Ok((transport, at)) => {
                webrtc += usize::from(transport == Transport::WebRtc);
                served.push(at);
            }
            Err(error) => failures.push(error.to_string()),
        }
        peers.push(peer);
    }
    // Uploads finish just before the visitor holds the bytes; give the
    // counters a moment to catch up with the last ones.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let uploads: Vec<u64> = peers.iter().map(|p| p.served().total()).collect();
    let relayed: u64 = peers.iter().map(|p| p.served().relay()).sum();
    for peer in peers {
        peer.shutdown().await;
    }
    server.stop().await;

    let total: u64 = uploads.iter().sum();
    let max = uploads.iter().copied().max().unwrap_or(0);
    let uploaders = uploads.iter().filter(|&&u| u > 0).count();
    let mean = total as f64 / uploads.len() as f64;
    let all_served = served.iter().copied().max().unwrap_or_default();
    // The targets are for the crowd that arrives at once (issue 5); the
    // staggered one is a diagnostic.
    let at_once = spread.is_zero();
    let mut served_row = Row::new(
        FLASH_CROWD,
        format!("{visitors} visitors {arrival}: all served after"),
        Value::ms(all_served),
        Better::Lower,
    );
    if at_once {
        served_row = served_row.target(format!("all {visitors} served"), failures.is_empty());
    }
    let mut rows = vec![served_row.note(format!(
            "{} served ({webrtc} over WebRTC), {} failed{}",
            served.len(),
            failures.len(),
            failures
                .first()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ))];
    let ratio = if mean > 0.0 { max as f64 / mean } else { 0.0 };
    let mut spread_row = Row::new(
        FLASH_CROWD,
        format!("{arrival}: uploads per host, max ÷ mean"),
        Value::new(ratio, "×"),
        Better::Lower,
    );
    if at_once {
        spread_row = spread_row.target("≤ 3×", ratio <= 3.0);
    }
    rows.push(
        spread_row.note(format!(
            "max {max}, mean {mean:.2} over {} peers; {uploaders} peers uploaded; {relayed} of {total} uploads by relay",
            uploads.len()
        )),
    );
    Ok(rows)
}
