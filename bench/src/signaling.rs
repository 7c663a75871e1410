//! Benchmark 3, signaling: how many WebRTC offer/answer exchanges a server
//! relays per second, and how long one takes, with many pages and peers —
//! our server, the WebTorrent reference tracker, and a bare echo server as
//! the ceiling, one after the other in the same run, under the same load
//! generator. Then `content_request` → `content` round trips over our relay.
//!
//! One exchange, in each system:
//! - ours: a visitor on `want:<h>` sends an `offer` signal to a host of
//!   `<h>` picked at random; the host sends an `answer` signal back (2
//!   relayed signals; a delivered signal gets no reply).
//! - tracker: a peer announces with one offer; the tracker relays it to a
//!   random peer of the swarm, which announces its answer; the tracker
//!   relays that back (2 relayed messages, plus the announce response).
//! - echo: the visitor sends the same offer text and gets it back, then the
//!   answer text and gets it back (2 messages through the server).
//!
//! Every visitor runs a closed loop (next exchange when the last one is
//! answered); the servers run in their own processes, and their CPU time
//! over the measured window gives a cost per exchange that does not depend
//! on how fast the load generator is. On a 2-core machine the generator and
//! the server share the cores, which caps every rate here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_shared::{Frame, PageHash, Topic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::children::{self, ChildServer};
use crate::phoenix::{self, Endpoint, Phoenix, Ws};
use crate::report::{Better, Percentiles, Row, Value as Measure};
use crate::ttc::relay_host;

const BENCHMARK: &str = "3. Signaling";
/// An exchange not answered within this is counted as lost, so a dropped
/// message cannot stall a visitor's loop for the rest of the run.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the window closes, peers keep answering for this long, so that
/// nobody waits on a peer that already stopped.
const DRAIN: Duration = Duration::from_secs(1);
/// Our server's per-socket rate limit is there against abuse; the load
/// generator concentrates a crowd's traffic on a few sockets, so it is
/// lifted for this benchmark (the other systems have none).
const UNLIMITED: &[&str] = &[
    "--messages-per-second",
    "10000000",
    "--message-burst",
    "10000000",
];

/// [`UNLIMITED`], and the per-address limits lifted too: the load comes
/// from eight loopback addresses, tens of thousands of signals a second,
/// thousands per address against a default of 1,000 messages.
fn unlimited() -> Vec<&'static str> {
    [UNLIMITED, children::NO_PER_ADDRESS_LIMITS].concat()
}

/// The shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub pages: usize,
    pub hosts_per_page: usize,
    pub visitors_per_page: usize,
    pub warm_up: Duration,
    pub measure: Duration,
    /// Turns each system gets; the median one is reported.
    pub rounds: usize,
}

impl Load {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                pages: 50,
                hosts_per_page: 2,
                visitors_per_page: 2,
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(4),
                rounds: 1,
            }
        } else {
            Self {
                pages: 250,
                hosts_per_page: 2,
                visitors_per_page: 2,
                warm_up: Duration::from_secs(2),
                measure: Duration::from_secs(8),
                rounds: 3,
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} pages × ({} hosts + {} visitors)",
            self.pages, self.hosts_per_page, self.visitors_per_page
        )
    }
}

/// When the measured window opens and closes; visitors stop at `end`,
/// everyone at `end + DRAIN`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(load: &Load) -> Self {
        let start = Instant::now() + load.warm_up;
        Self {
            start,
            end: start + load.measure,
        }
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    fn stop(&self) -> Instant {
        self.end + DRAIN
    }
}

/// What one visitor saw in the window.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    lost: u64,
}

/// What one system did over the window.
struct Outcome {
    exchanges_per_second: f64,
    latency: Option<Percentiles>,
    lost: u64,
    /// Server CPU per exchange.
    cpu_per_exchange: Option<Duration>,
}

impl Outcome {
    fn from(tallies: Vec<Tally>, measure: Duration, cpu: Option<Duration>) -> Self {
        let lost = tallies.iter().map(|t| t.lost).sum();
        let latencies: Vec<Duration> = tallies.into_iter().flat_map(|t| t.latencies).collect();
        let count = latencies.len();
        Self {
            exchanges_per_second: count as f64 / measure.as_secs_f64(),
            latency: Percentiles::of(&latencies),
            lost,
            cpu_per_exchange: cpu
                .filter(|_| count > 0)
                .map(|cpu| cpu / u32::try_from(count).unwrap_or(u32::MAX)),
        }
    }
}

pub async fn run(load: &Load) -> Result<Vec<Row>> {
    // The three systems take turns, round after round, and each is
    // reported by its median round: a burst of other work on this shared
    // machine then skews one round, not one system.
    let mut ours_rounds = Vec::new();
    let mut tracker_rounds = Vec::new();
    let mut tracker_error = None;
    let mut echo_rounds = Vec::new();
    for round in 1..=load.rounds {
        eprintln!(
            "bench: signal relay round {round}/{}: ours, WebTorrent tracker, bare echo ({})",
            load.rounds,
            load.describe()
        );
        ours_rounds.push(ours(load).await?);
        if tracker_error.is_none() {
            match tracker(load).await {
                Ok(outcome) => tracker_rounds.push(outcome),
                Err(error) => {
                    eprintln!("bench: tracker baseline failed: {error:#}");
                    tracker_error = Some(format!("{error:#}"));
                }
            }
        }
        echo_rounds.push(echo(load).await?);
    }
    let ours = median_round(ours_rounds).context("no round of ours")?;
    let tracker = match tracker_error {
        Some(error) => Err(error),
        None => median_round(tracker_rounds)
            .context("no tracker round")
            .map_err(|e| e.to_string()),
    };
    let echo = median_round(echo_rounds).context("no echo round")?;
    eprintln!("bench: content_request → content over relay");
    let content = content_round_trips(load).await?;

    let mut rows = Vec::new();
    let shape = load.describe();
    let signals = |o: &Outcome| Measure::new(2.0 * o.exchanges_per_second, "signals/s");
    let rounds = if load.rounds > 1 {
        format!(", median of {} rounds", load.rounds)
    } else {
        String::new()
    };
    let mut vs_tracker = Row::new(
        BENCHMARK,
        format!("relayed signals/s, {shape}{rounds}"),
        signals(&ours),
        Better::Higher,
    );
    match &tracker {
        Ok(tracker) => {
            vs_tracker = vs_tracker.against("WebTorrent tracker", signals(tracker));
            let met = vs_tracker.advantage.is_some_and(|a| a >= 5.0);
            vs_tracker = vs_tracker.target("≥ 5× tracker", met);
        }
        Err(why) => vs_tracker = vs_tracker.note(format!("tracker not measured: {why}")),
    }
    rows.push(vs_tracker);
    let vs_echo = Row::new(
        BENCHMARK,
        "relayed signals/s vs ceiling",
        signals(&ours),
        Better::Higher,
    )
    .against("bare echo (messages/s)", signals(&echo));
    let met = vs_echo.advantage.is_some_and(|a| a >= 0.5);
    rows.push(vs_echo.target("within 2× of echo", met));

    for (q, pick) in [
        (
            "p50",
            (|p: &Percentiles| p.p50) as fn(&Percentiles) -> Duration,
        ),
        ("p99", |p: &Percentiles| p.p99),
    ] {
        let Some(latency) = ours.latency else {
            continue;
        };
        let mut row = Row::new(
            BENCHMARK,
            format!("offer→answer exchange {q} under that load"),
            Measure::ms(pick(&latency)),
            Better::Lower,
        );
        if let Ok(Some(tracker)) = tracker.as_ref().map(|t| t.latency) {
            row = row.against("WebTorrent tracker", Measure::ms(pick(&tracker)));
        }
        rows.push(row);
    }
    if let Some(cpu) = ours.cpu_per_exchange {
        let mut row = Row::new(
            BENCHMARK,
            "server CPU per exchange",
            Measure::new(cpu.as_secs_f64() * 1e6, "µs"),
            Better::Lower,
        );
        if let Ok(Some(tracker_cpu)) = tracker.as_ref().map(|t| t.cpu_per_exchange) {
            row = row.against(
                "WebTorrent tracker",
                Measure::new(tracker_cpu.as_secs_f64() * 1e6, "µs"),
            );
        }
        if let Some(echo_cpu) = echo.cpu_per_exchange {
            row = row.note(format!(
                "echo ceiling: {:.0} µs",
                echo_cpu.as_secs_f64() * 1e6
            ));
        }
        rows.push(row);
    }
    let lost: Vec<String> = [
        ("ours", Some(&ours)),
        ("tracker", tracker.as_ref().ok()),
        ("echo", Some(&echo)),
    ]
    .into_iter()
    .filter_map(|(name, o)| {
        o.filter(|o| o.lost > 0)
            .map(|o| format!("{name}: {}", o.lost))
    })
    .collect();
    if !lost.is_empty()
        && let Some(row) = rows.first_mut()
    {
        let lost = format!("exchanges lost (no answer in 5 s): {}", lost.join(", "));
        row.note = Some(match row.note.take() {
            Some(note) => format!("{note}; {lost}"),
            None => lost,
        });
    }

    let content_rate = Measure::new(content.exchanges_per_second, "round trips/s");
    let mut content_row = Row::new(
        BENCHMARK,
        format!(
            "content_request→content (10 KB) over relay, {} pages",
            load.pages
        ),
        content_rate,
        Better::Higher,
    );
    if let Some(latency) = content.latency {
        content_row = content_row.note(format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            latency.p50.as_secs_f64() * 1e3,
            latency.p99.as_secs_f64() * 1e3
        ));
    }
    rows.push(content_row);
    Ok(rows)
}

/// The round with the median rate (the upper one of an even count).
fn median_round(mut rounds: Vec<Outcome>) -> Option<Outcome> {
    rounds.sort_by(|a, b| a.exchanges_per_second.total_cmp(&b.exchanges_per_second));
    let middle = rounds.len() / 2;
    rounds.into_iter().nth(middle)
}

/// Server CPU used while `window` was open: read at its edges.
async fn cpu_over(server: &ChildServer, window: Window) -> Option<Duration> {
    tokio::time::sleep_until(window.start).await;
    let before = server.cpu_time().ok()?;
    tokio::time::sleep_until(window.end).await;
    let after = server.cpu_time().ok()?;
    Some(after.saturating_sub(before))
}

async fn collect(tasks: Vec<JoinHandle<Result<Tally>>>) -> Result<Vec<Tally>> {
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.context("a load task panicked")??);
    }
    Ok(tallies)
}

async fn finish(tasks: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await.context("a load task panicked")??;
    }
    Ok(())
}

// ---- ours -------------------------------------------------------------

async fn ours(load: &Load) -> Result<Outcome> {
    let server = children::signal_server(&unlimited()).await?;
    let endpoint = Endpoint::phoenix(server.addr);
    let sdp: Arc<str> = phoenix::sdp().into();
    let mut connection = 0;
    let mut hosts = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let hash = PageHash::of(format!("signal page {page}").as_bytes());
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut ids = Vec::new();
        for _ in 0..load.hosts_per_page {
            let mut host = Phoenix::connect(&endpoint, phoenix::source_ip(connection)).await?;
            connection += 1;
            ids.push(host.join_for_id(&have).await?);
            hosts.push((host, have.clone()));
        }
        let ids = Arc::new(ids);
        for _ in 0..load.visitors_per_page {
            let mut visitor = Phoenix::connect(&endpoint, phoenix::source_ip(connection)).await?;
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
    mut host: Phoenix,
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
async fn exchange_done(
    visitor: &mut Phoenix,
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
        if let Some(("error", response)) = frame.as_reply() {
            bail!(
                "the server refused a {what}: {}",
                Value::Object(response.clone())
            );
        }
        if done(&frame)? {
            return Ok(true);
        }
    }
}

/// A visitor: offers to a random host of its page, waits for the answer,
/// and again, until the window closes.
async fn offer_loop(
    mut visitor: Phoenix,
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

impl Tally {
    fn record(&mut self, answered: bool, sent: Instant, window: Window) {
        let done = Instant::now();
        if !window.contains(done) {
            return;
        }
        if answered {
            self.latencies.push(done - sent);
        } else {
            self.lost += 1;
        }
    }
}

// ---- WebTorrent tracker ----------------------------------------------

/// A 20-character id, as the tracker's websocket protocol wants them.
fn tracker_id(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:0width$}", width = 20 - prefix.len())
}

async fn tracker(load: &Load) -> Result<Outcome> {
    let server = children::tracker().await?;
    let endpoint = Endpoint::root(server.addr);
    let sdp: Arc<str> = phoenix::sdp().into();
    let mut connection = 0;
    let mut hosts = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let info_hash = tracker_id("ephemeral-", page);
        for role in 0..load.hosts_per_page + load.visitors_per_page {
            let is_host = role < load.hosts_per_page;
            let peer_id = tracker_id("-EB0001-", connection);
            let mut ws = phoenix::connect(&endpoint, phoenix::source_ip(connection)).await?;
            connection += 1;
            // Join the swarm: a seeder (host) or a leecher (visitor).
            let started = json!({
                "action": "announce", "info_hash": info_hash, "peer_id": peer_id,
                "event": "started", "uploaded": 0, "downloaded": 0,
                "left": if is_host { 0 } else { 1 }, "numwant": 0,
            });
            phoenix::send_text(&mut ws, started.to_string()).await?;
            loop {
                let reply: Value = serde_json::from_str(&phoenix::next_text(&mut ws).await?)
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
    ws: Ws,
    info_hash: String,
    peer_id: String,
}

impl TrackerPeer {
    async fn read(&mut self) -> Result<Value> {
        let text = phoenix::next_text(&mut self.ws).await?;
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
        phoenix::send_text(&mut self.ws, answer.to_string()).await?;
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
            phoenix::send_text(&mut self.ws, announce.to_string()).await?;
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

// ---- echo ceiling ----------------------------------------------------

async fn echo(load: &Load) -> Result<Outcome> {
    let server = children::echo_server().await?;
    let endpoint = Endpoint::root(server.addr);
    // The exact texts our visitors and hosts send, so sizes match.
    let sdp = phoenix::sdp();
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
        clients.push(phoenix::connect(&endpoint, phoenix::source_ip(i)).await?);
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

async fn echo_loop(mut ws: Ws, offer: Arc<str>, answer: Arc<str>, window: Window) -> Result<Tally> {
    let mut tally = Tally::default();
    while Instant::now() < window.end {
        let sent = Instant::now();
        for text in [&offer, &answer] {
            phoenix::send_text(&mut ws, text.to_string()).await?;
            let echoed = phoenix::next_text(&mut ws).await?;
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

// ---- content over relay ------------------------------------------------

/// One host and one visitor per page; the visitor asks with `relay: true`
/// and waits for the 10 KB page to be broadcast back, again and again.
async fn content_round_trips(load: &Load) -> Result<Outcome> {
    let server = children::signal_server(&unlimited()).await?;
    let endpoint = Endpoint::phoenix(server.addr);
    let mut host_tasks = Vec::new();
    let mut visitors = Vec::new();
    for page in 0..load.pages {
        let (text, hash) = phoenix::page(10 * 1024, 10_000 + page as u64);
        let have = Topic::have(hash).to_string();
        let want = Topic::want(hash).to_string();
        let mut host = Phoenix::connect(&endpoint, phoenix::source_ip(2 * page)).await?;
        host.join(&have).await?;
        let texts = Arc::new(HashMap::from([(have, text)]));
        host_tasks.push(tokio::spawn(relay_host(host, texts)));
        let mut visitor = Phoenix::connect(&endpoint, phoenix::source_ip(2 * page + 1)).await?;
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
    mut visitor: Phoenix,
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
