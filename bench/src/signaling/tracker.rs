//! The WebTorrent reference tracker: a swarm per page, visitors announcing
//! one offer at a time and every peer answering the offers relayed to it.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ephemeral_phoenix_client::{Options, Websocket, next_text, send_text, websocket};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::measure::{Outcome, Tally, Window, collect, cpu_over, finish};
use super::{EXCHANGE_TIMEOUT, Load};
use crate::children;
use crate::load;

/// A 20-character id, as the tracker's websocket protocol wants them.
fn tracker_id(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:0width$}", width = 20 - prefix.len())
}

pub(super) async fn tracker(load: &Load) -> Result<Outcome> {
    let server = children::tracker().await?;
    let url = format!("ws://{}/", server.addr);
    let sdp: Arc<str> = load::sdp().into();
    let mut connection = 0;
    let mut hosts = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let info_hash = tracker_id("ephemeral-", page);
        for role in 0..load.hosts_per_page + load.visitors_per_page {
            let is_host = role < load.hosts_per_page;
            let peer_id = tracker_id("-EB0001-", connection);
            let mut ws =
                websocket(&url, Options::default().source(load::source_ip(connection))).await?;
            connection += 1;
            // Join the swarm: a seeder (host) or a leecher (visitor).
            let started = json!({
                "action": "announce", "info_hash": info_hash, "peer_id": peer_id,
                "event": "started", "uploaded": 0, "downloaded": 0,
                "left": if is_host { 0 } else { 1 }, "numwant": 0,
            });
            send_text(&mut ws, started.to_string()).await?;
            loop {
                let reply: Value = serde_json::from_str(&next_text(&mut ws).await?)
                    .context("the tracker sent invalid JSON")?;
                if let Some(why) = reply.get("failure reason") {
                    bail!("the tracker refused an announce: {why}");
                }
                if reply.get("interval").is_some() {
                    break;
                }
            }
            let peer = TrackerPeer {
                ws,
                info_hash: info_hash.clone(),
                peer_id,
            };
            if is_host {
                hosts.push(peer)
            } else {
                visitors.push(peer)
            }
        }
    }
    let window = Window::after(load);
    let host_tasks: Vec<_> = hosts
        .into_iter()
        .map(|peer| tokio::spawn(peer.answer_until(sdp.clone(), window.stop())))
        .collect();
    let visitor_tasks: Vec<_> = visitors
        .into_iter()
        .enumerate()
        .map(|(i, peer)| tokio::spawn(peer.offer_loop(sdp.clone(), window, i)))
        .collect();
    let cpu = cpu_over(&server, window).await;
    let tallies = collect(visitor_tasks).await?;
    finish(host_tasks).await?;
    server.stop().await;
    Ok(Outcome::from(tallies, load.measure, cpu))
}

/// One WebTorrent client's websocket to the tracker. Every member of a
/// swarm may be sent an offer (the tracker picks among all of them), so
/// visitors answer offers too, as real WebTorrent peers do.
struct TrackerPeer {
    ws: Websocket,
    info_hash: String,
    peer_id: String,
}

impl TrackerPeer {
    async fn read(&mut self) -> Result<Value> {
        let text = next_text(&mut self.ws).await?;
        serde_json::from_str(&text).context("the tracker sent invalid JSON")
    }

    /// Answers `message` if it is an offer; whether it was.
    async fn answer(&mut self, message: &Value, sdp: &str) -> Result<bool> {
        let (Some(_), Some(from), Some(offer_id)) = (
            message.get("offer"),
            message.get("peer_id"),
            message.get("offer_id"),
        ) else {
            return Ok(false);
        };
        let answer = json!({
            "action": "announce", "info_hash": self.info_hash, "peer_id": self.peer_id,
            "to_peer_id": from, "offer_id": offer_id,
            "answer": { "type": "answer", "sdp": sdp },
        });
        send_text(&mut self.ws, answer.to_string()).await?;
        Ok(true)
    }

    async fn answer_until(mut self, sdp: Arc<str>, until: Instant) -> Result<()> {
        while let Ok(message) = tokio::time::timeout_at(until, self.read()).await {
            self.answer(&message?, &sdp).await?;
        }
        Ok(())
    }

    async fn offer_loop(mut self, sdp: Arc<str>, window: Window, index: usize) -> Result<Tally> {
        let mut tally = Tally::default();
        let mut offers = 0;
        while Instant::now() < window.end {
            offers += 1;
            let offer_id = tracker_id(&format!("{index:06}-"), offers);
            let sent = Instant::now();
            let announce = json!({
                "action": "announce", "info_hash": self.info_hash, "peer_id": self.peer_id,
                "numwant": 1, "uploaded": 0, "downloaded": 0, "left": 1,
                "offers": [{ "offer": { "type": "offer", "sdp": &*sdp }, "offer_id": offer_id }],
            });
            send_text(&mut self.ws, announce.to_string()).await?;
            let answered = loop {
                let Ok(message) =
                    tokio::time::timeout_at(sent + EXCHANGE_TIMEOUT, self.read()).await
                else {
                    break false;
                };
                let message = message?;
                if let Some(why) = message.get("failure reason") {
                    bail!("the tracker refused an announce: {why}");
                }
                if self.answer(&message, &sdp).await? {
                    continue;
                }
                if message.get("answer").is_some()
                    && message.get("offer_id") == Some(&json!(offer_id))
                {
                    break true;
                }
            };
            tally.record(answered, sent, window);
        }
        // Others may still be waiting on this peer's answers.
        while let Ok(message) = tokio::time::timeout_at(window.stop(), self.read()).await {
            self.answer(&message?, &sdp).await?;
        }
        Ok(tally)
    }
}
