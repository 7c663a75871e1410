//! Content over our relay: per page one host serving a 10 KB page, and
//! one visitor asking for it with `relay: true` in a closed loop.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use ephemeral_phoenix_client::{Client, websocket_url};
use ephemeral_shared::{PageHash, Topic};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::measure::{Outcome, Tally, Window, collect, cpu_over};
use super::ours::exchange_done;
use super::{Load, unlimited};
use crate::children;
use crate::load;
use crate::ttc::relay_host;

/// One host and one visitor per page; the visitor asks with `relay: true`
/// and waits for the 10 KB page to be broadcast back, again and again.
pub(super) async fn content_round_trips(load: &Load) -> Result<Outcome> {
    let server = children::signal_server(&unlimited()).await?;
    let url = websocket_url(server.addr);
    let mut host_tasks = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let (text, hash) = load::page(10 * 1024, 10_000 + page as u64);
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut host = Client::connect_from(&url, load::source_ip(2 * page)).await?;
        host.join(&have).await?;
        let texts = Arc::new(HashMap::from([(have, text)]));
        host_tasks.push(tokio::spawn(relay_host(host, texts)));
        let mut visitor = Client::connect_from(&url, load::source_ip(2 * page + 1)).await?;
        visitor.join(&want).await?;
        visitors.push((visitor, want, hash));
    }
    let window = Window::after(load);
    let tasks: Vec<_> = visitors
        .into_iter()
        .map(|(visitor, want, hash)| tokio::spawn(request_loop(visitor, want, hash, window)))
        .collect();
    let cpu = cpu_over(&server, window).await;
    let tallies = collect(tasks).await?;
    for task in host_tasks {
        task.abort();
    }
    server.stop().await;
    Ok(Outcome::from(tallies, load.measure, cpu))
}

async fn request_loop(
    mut visitor: Client,
    want: String,
    hash: PageHash,
    window: Window,
) -> Result<Tally> {
    let mut tally = Tally::default();
    while Instant::now() < window.end {
        let sent = Instant::now();
        visitor
            .push(&want, "content_request", json!({ "relay": true }))
            .await?;
        let answered = exchange_done(&mut visitor, sent, "request", |frame| {
            if frame.event != "content" {
                return Ok(false);
            }
            let content = frame.payload.get("content").and_then(Value::as_str);
            if !content.is_some_and(|c| hash.matches(c.as_bytes())) {
                bail!("a relayed page did not match its hash");
            }
            Ok(true)
        })
        .await?;
        tally.record(answered, sent, window);
    }
    Ok(tally)
}
