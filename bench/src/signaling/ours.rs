//! Our server: hosts on `have:<h>` answer every offer signal, visitors on
//! `want:<h>` offer to a random host of their page in a closed loop.

use std::sync::Arc;

use anyhow::{Result, bail};
use ephemeral_phoenix_client::{Client, Reply, websocket_url};
use ephemeral_shared::{Frame, PageHash, Topic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::measure::{Outcome, Tally, Window, collect, cpu_over, finish};
use super::{EXCHANGE_TIMEOUT, Load, unlimited};
use crate::children;
use crate::load;

pub(super) async fn ours(load: &Load) -> Result<Outcome> {
    let server = children::signal_server(&unlimited()).await?;
    let url = websocket_url(server.addr);
    let sdp: Arc<str> = load::sdp().into();
    let mut connection = 0;
    let mut hosts = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let hash = PageHash::of(format!("signal page {page}").as_bytes());
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut ids = Vec::new();
        for _ in 0..load.hosts_per_page {
            let mut host = Client::connect_from(&url, load::source_ip(connection)).await?;
            connection += 1;
            ids.push(host.join_for_id(&have).await?);
            hosts.push((host, have.clone()));
        }
        let ids = Arc::new(ids);
        for _ in 0..load.visitors_per_page {
            let mut visitor = Client::connect_from(&url, load::source_ip(connection)).await?;
            connection += 1;
            visitor.join(&want).await?;
            visitors.push((visitor, want.clone(), ids.clone()));
        }
    }
    let window = Window::after(load);
    let host_tasks: Vec<_> = hosts
        .into_iter()
        .map(|(host, have)| tokio::spawn(answer_offers(host, have, sdp.clone(), window.stop())))
        .collect();
    let visitor_tasks: Vec<_> = visitors
        .into_iter()
        .enumerate()
        .map(|(i, (visitor, want, ids))| {
            tokio::spawn(offer_loop(
                visitor,
                want,
                ids,
                sdp.clone(),
                window,
                i as u64,
            ))
        })
        .collect();
    let cpu = cpu_over(&server, window).await;
    let tallies = collect(visitor_tasks).await?;
    finish(host_tasks).await?;
    server.stop().await;
    Ok(Outcome::from(tallies, load.measure, cpu))
}

/// A host: answers every offer signal until `until`.
pub async fn answer_offers(
    mut host: Client,
    have: String,
    sdp: Arc<str>,
    until: Instant,
) -> Result<()> {
    while let Ok(frame) = tokio::time::timeout_at(until, host.next_frame()).await {
        let frame = frame?;
        if frame.event != "signal" || frame.payload.get("type") != Some(&json!("offer")) {
            continue;
        }
        let Some(from) = frame.payload.get("from").and_then(Value::as_str) else {
            bail!("a signal came without from: {:?}", frame.payload);
        };
        let answer = json!({ "to": from, "type": "answer", "sdp": &*sdp });
        host.push(&have, "signal", answer).await?;
    }
    Ok(())
}

/// Reads frames until `done` says one ends the exchange started at `sent`
/// (true), or [`EXCHANGE_TIMEOUT`] passes (false). An error reply from the
/// server aborts the benchmark: a refused `what` means a broken harness.
pub(super) async fn exchange_done(
    visitor: &mut Client,
    sent: Instant,
    what: &str,
    done: impl Fn(&Frame) -> Result<bool>,
) -> Result<bool> {
    loop {
        let Ok(frame) =
            tokio::time::timeout_at(sent + EXCHANGE_TIMEOUT, visitor.next_frame()).await
        else {
            return Ok(false);
        };
        let frame = frame?;
        if let Some(reply) = Reply::of(&frame).filter(|reply| !reply.is_ok()) {
            bail!("the server refused a {what}: {reply}");
        }
        if done(&frame)? {
            return Ok(true);
        }
    }
}

/// A visitor: offers to a random host of its page, waits for the answer,
/// and again, until the window closes.
async fn offer_loop(
    mut visitor: Client,
    want: String,
    hosts: Arc<Vec<String>>,
    sdp: Arc<str>,
    window: Window,
    seed: u64,
) -> Result<Tally> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    while Instant::now() < window.end {
        let host = &hosts[rng.random_range(0..hosts.len())];
        let sent = Instant::now();
        let offer = json!({ "to": host, "type": "offer", "sdp": &*sdp });
        visitor.push(&want, "signal", offer).await?;
        let answered = exchange_done(&mut visitor, sent, "signal", |frame| {
            Ok(frame.event == "signal" && frame.payload.get("type") == Some(&json!("answer")))
        })
        .await?;
        tally.record(answered, sent, window);
    }
    Ok(tally)
}
