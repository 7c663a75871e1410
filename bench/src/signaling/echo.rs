//! The ceiling: a bare echo server, sent the same offer and answer texts
//! our visitors and hosts send, and timed for both to come back.

use std::sync::Arc;

use anyhow::{Result, bail};
use ephemeral_phoenix_client::{Options, Websocket, next_text, send_text, websocket};
use serde_json::json;
use tokio::time::Instant;

use super::Load;
use super::measure::{Outcome, Tally, Window, collect, cpu_over};
use crate::children;
use crate::load;

pub(super) async fn echo(load: &Load) -> Result<Outcome> {
    let server = children::echo_server().await?;
    let url = format!("ws://{}/", server.addr);
    // The exact texts our visitors and hosts send, so sizes match.
    let sdp = load::sdp();
    let peer = "0123456789abcdef0123456789abcdef";
    let offer: Arc<str> =
        json!(["2", "5", "want:x", "signal", { "to": peer, "type": "offer", "sdp": sdp }])
            .to_string()
            .into();
    let answer: Arc<str> =
        json!(["1", "5", "have:x", "signal", { "to": peer, "type": "answer", "sdp": sdp }])
            .to_string()
            .into();
    let mut clients = Vec::new();
    for i in 0..load.pages * load.visitors_per_page {
        clients.push(websocket(&url, Options::default().source(load::source_ip(i))).await?);
    }
    let window = Window::after(load);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(echo_loop(ws, offer.clone(), answer.clone(), window)))
        .collect();
    let cpu = cpu_over(&server, window).await;
    let tallies = collect(tasks).await?;
    server.stop().await;
    Ok(Outcome::from(tallies, load.measure, cpu))
}

async fn echo_loop(
    mut ws: Websocket,
    offer: Arc<str>,
    answer: Arc<str>,
    window: Window,
) -> Result<Tally> {
    let mut tally = Tally::default();
    while Instant::now() < window.end {
        let sent = Instant::now();
        for text in [&offer, &answer] {
            send_text(&mut ws, text.to_string()).await?;
            let echoed = next_text(&mut ws).await?;
            if echoed.len() != text.len() {
                bail!(
                    "the echo server sent back {} bytes for {}",
                    echoed.len(),
                    text.len()
                );
            }
        }
        tally.record(true, sent, window);
    }
    Ok(tally)
}
