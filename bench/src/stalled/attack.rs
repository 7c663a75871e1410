//! The attack itself, once its sockets are open: the senders send until
//! the attack's time is up while the stalled readers the server closes are
//! replaced, then the server is given time to close the ones left, and
//! then every attacker socket goes. What it found is an [`Outcome`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ephemeral_phoenix_client::Client;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::readers::{Stalled, open_stalled};
use super::sender::send_signals;
use super::{Plan, WRITE_TIMEOUT};
use crate::children::ChildServer;
use crate::memory::settle;

/// Stalled sockets opened over a whole run, at most, as a multiple of K:
/// replacements are bounded in count as well as by the attack's time.
const MAX_STALLED_OPENED_PER_SLOT: usize = 4;
/// After the attack, how long the server has to close the stalled sockets
/// that are left: their writes stall for the write timeout, then a margin.
pub(super) const AFTER_LIMIT: Duration = Duration::from_secs(WRITE_TIMEOUT.as_secs() + 10);
/// How long the server has to notice that every attacker socket is gone.
const GONE_LIMIT: Duration = Duration::from_secs(10);
const GAUGE_EVERY: Duration = Duration::from_millis(250);

/// What the attack sets out with.
pub(super) struct Attack {
    pub(super) senders: Vec<Client>,
    pub(super) stalled_sockets: Vec<Client>,
    pub(super) stalled: Stalled,
    pub(super) have: String,
    pub(super) want: String,
    pub(super) signal_bytes: usize,
}

/// What the attack found.
pub(super) struct Outcome {
    /// Stalled sockets opened over the run, the first K included.
    pub(super) opened: usize,
    /// Of those, the ones the server had closed by the end.
    pub(super) closed: Option<usize>,
    /// For the ones the senders saw closed during the attack: from their
    /// first signal to the first refusal that named them gone.
    pub(super) lifetimes: Vec<Duration>,
    /// When the server had closed every stalled socket, from the attack's
    /// start and from its end, if it did within [`AFTER_LIMIT`] of the end.
    pub(super) all_closed: Option<(Duration, Duration)>,
    pub(super) signals_sent: u64,
    pub(super) refused: BTreeMap<String, u64>,
    pub(super) senders_closed: Vec<String>,
    pub(super) replacements_failed: Vec<String>,
    pub(super) seconds: f64,
}

pub(super) async fn attack(
    server: &ChildServer,
    url: &str,
    plan: &Plan,
    attack: Attack,
) -> Result<Outcome> {
    let Attack {
        senders,
        stalled_sockets,
        stalled,
        have,
        want,
        signal_bytes,
    } = attack;
    let started = Instant::now();
    let until = started + plan.attack;
    let stalled = Arc::new(Mutex::new(stalled));
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let sender_tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            tokio::spawn(send_signals(
                sender,
                have.clone(),
                signal_bytes,
                stalled.clone(),
                gone_tx.clone(),
                until,
            ))
        })
        .collect();
    drop(gone_tx);
    let replacer = tokio::spawn(replace_closed(
        url.to_string(),
        want,
        stalled.clone(),
        gone_rx,
        stalled_sockets,
        until,
        plan.stalled * MAX_STALLED_OPENED_PER_SLOT,
    ));

    let mut signals_sent = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut senders_closed = Vec::new();
    let mut senders = Vec::new();
    for task in sender_tasks {
        let tally = task.await.context("a sender panicked")?;
        signals_sent += tally.sent;
        for (reason, n) in tally.refused {
            *refused.entry(reason).or_default() += n;
        }
        match tally.outcome {
            Ok(sender) => senders.push(sender),
            Err(why) => senders_closed.push(why),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let replaced = replacer.await.context("the replacer panicked")?;
    // The senders go now: from here on the connection count is the stalled
    // sockets the server has not closed yet.
    for sender in senders {
        let _ = sender.close().await;
    }

    let attack_over = Instant::now();
    let mut open_now = None;
    let mut all_closed = None;
    while attack_over.elapsed() < AFTER_LIMIT {
        if let Some(open) = server.scrape().await?.get("ephemeral_connections") {
            open_now = Some(open as usize);
            if open == 0.0 {
                all_closed = Some((started.elapsed(), attack_over.elapsed()));
                break;
            }
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
    let opened = replaced.sockets.len();
    let closed = open_now.map(|open| opened.saturating_sub(open));
    drop(replaced.sockets);
    let gone_by = Instant::now() + GONE_LIMIT;
    while Instant::now() < gone_by {
        if server.scrape().await?.get("ephemeral_connections") == Some(0.0) {
            break;
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
    settle(server).await;

    let lifetimes = {
        let stalled = stalled.lock().unwrap_or_else(|p| p.into_inner());
        stalled.lifetimes()
    };
    Ok(Outcome {
        opened,
        closed,
        lifetimes,
        all_closed,
        signals_sent,
        refused,
        senders_closed,
        replacements_failed: replaced.failures,
        seconds,
    })
}

/// What [`replace_closed`] leaves: every stalled socket opened (to be
/// dropped when the caller is done) and the replacements that failed.
struct Replaced {
    sockets: Vec<Client>,
    failures: Vec<String>,
}

/// Opens a new stalled socket for every one the senders found closed,
/// until `until` or until `budget` sockets were opened in all.
async fn replace_closed(
    url: String,
    want: String,
    stalled: Arc<Mutex<Stalled>>,
    mut gone: mpsc::UnboundedReceiver<()>,
    mut sockets: Vec<Client>,
    until: Instant,
    budget: usize,
) -> Replaced {
    let mut failures = Vec::new();
    while let Ok(Some(())) = tokio::time::timeout_at(until, gone.recv()).await {
        if sockets.len() >= budget {
            continue;
        }
        match open_stalled(&url, &want, until).await {
            Ok((socket, id)) => {
                sockets.push(socket);
                stalled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .live
                    .push(id);
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    Replaced { sockets, failures }
}
