//! The normal clients: where they connect from, the visitors' offers to
//! their hosts, timed, and what they saw in each phase.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ephemeral_phoenix_client::{Client, Reply};
use serde_json::json;
use tokio::time::Instant;

use super::EXCHANGE_TIMEOUT;
use super::timeline::Window;
use crate::report::Percentiles;

/// A visitor sends its next offer this long after its last one. 50
/// visitors at 5 offers/s and their hosts' answers are 500 messages/s
/// (~350 KB/s) over 50 addresses, far below the server's default
/// per-address rates, so the normal clients stay clear of their own
/// addresses' limits and any slowdown is the flood's doing.
const OFFER_EVERY: Duration = Duration::from_millis(200);

/// Where the normal clients connect from: each page's host and visitor
/// from an address of their own (127.0.1.1 …), as 50 households would,
/// so that no per-address limit falls on them.
pub(super) fn normal_source(page: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, (page % 250) as u8 + 1)
}

/// What one normal visitor saw.
#[derive(Debug, Default)]
pub(super) struct VisitorTally {
    /// Each exchange: when its offer went out, and how long the answer
    /// took (`None`: lost).
    exchanges: Vec<(Instant, Option<Duration>)>,
    /// Offers the server refused, by reason.
    pub(super) refused: BTreeMap<String, u64>,
    /// Why the visitor stopped early, if the server cut it off.
    pub(super) closed: Option<String>,
}

/// The normal visitors' exchanges whose offers went out in one window.
pub(super) struct Phase {
    pub(super) latency: Option<Percentiles>,
    pub(super) answered: usize,
    pub(super) lost: usize,
}

impl Phase {
    pub(super) fn of(tallies: &[VisitorTally], window: Window) -> Self {
        let exchanges = tallies
            .iter()
            .flat_map(|t| &t.exchanges)
            .filter(|(sent, _)| window.contains(*sent));
        let mut latencies = Vec::new();
        let mut lost = 0;
        for (_, latency) in exchanges {
            match latency {
                Some(latency) => latencies.push(*latency),
                None => lost += 1,
            }
        }
        Self {
            latency: Percentiles::of(&latencies),
            answered: latencies.len(),
            lost,
        }
    }
}

/// A normal visitor: an offer to its host every [`OFFER_EVERY`], timing
/// each answer, until `until`.
pub(super) async fn visit(
    mut visitor: Client,
    want: String,
    host: String,
    sdp: Arc<str>,
    until: Instant,
) -> VisitorTally {
    let mut tally = VisitorTally::default();
    while Instant::now() < until {
        let sent = Instant::now();
        let offer = json!({ "to": host, "type": "offer", "sdp": &*sdp });
        let answered = match visitor.push(&want, "signal", offer).await {
            Ok(_) => await_answer(&mut visitor, sent, &mut tally.refused).await,
            Err(error) => Err(error.into()),
        };
        match answered {
            Ok(answered) => tally
                .exchanges
                .push((sent, answered.then(|| sent.elapsed()))),
            Err(error) => {
                tally.closed = Some(format!("{error:#}"));
                break;
            }
        }
        tokio::time::sleep_until(sent + OFFER_EVERY).await;
    }
    tally
}

/// Whether the answer to the offer sent at `sent` came within
/// [`EXCHANGE_TIMEOUT`]; a refused offer is counted by its reason and is
/// not answered. An error only when the server cut the visitor off.
async fn await_answer(
    visitor: &mut Client,
    sent: Instant,
    refused: &mut BTreeMap<String, u64>,
) -> Result<bool> {
    loop {
        let Ok(frame) =
            tokio::time::timeout_at(sent + EXCHANGE_TIMEOUT, visitor.next_frame()).await
        else {
            return Ok(false);
        };
        let frame = frame?;
        if let Some(reply) = Reply::of(&frame)
            && let Some(reason) = reply.refusal()
        {
            *refused.entry(reason.to_string()).or_default() += 1;
            return Ok(false);
        }
        if frame.event == "signal" && frame.payload.get("type") == Some(&json!("answer")) {
            return Ok(true);
        }
    }
}
