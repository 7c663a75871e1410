//! The senders: attacker sockets that host the page and send signals to
//! the stalled readers, round-robin, paced just under the rates the server
//! allows, and tell which readers the server closed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemeral_phoenix_client::{Client, Error as ClientError, Reply};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::readers::Stalled;
use super::signal::{padding, signal_text};
use super::{
    BYTES_PER_SECOND_PER_ADDRESS, MESSAGES_PER_SECOND_PER_ADDRESS, MESSAGES_PER_SECOND_PER_SOCKET,
    SENDERS,
};

/// Senders pace themselves at this share of the rate the server allows.
const RATE_MARGIN: f64 = 0.95;
/// A rate refusal lengthens a sender's gap by a quarter, at most once per
/// this interval (refusals come back a round trip after the signals they
/// refuse, several at a time).
const ADJUST_EVERY: Duration = Duration::from_millis(100);
/// Signals a sender remembers the target of, so that an `unknown_peer`
/// refusal (its target was closed) can be traced to the target.
const REMEMBERED_SIGNALS: usize = 4096;
/// When no target is open, a sender looks again this often.
const NO_TARGET_PAUSE: Duration = Duration::from_millis(20);

/// What one sender did.
pub(super) struct SenderTally {
    pub(super) sent: u64,
    pub(super) refused: BTreeMap<String, u64>,
    /// The sender, still open, or why the server cut it off.
    pub(super) outcome: std::result::Result<Client, String>,
}

/// Signals per second one sender may send of `size` bytes, sustained:
/// the least of its socket's message rate and its share of the address's
/// message and byte rates.
fn allowed_rate(size: usize) -> f64 {
    let senders = SENDERS as f64;
    let per_socket = MESSAGES_PER_SECOND_PER_SOCKET as f64;
    let messages = MESSAGES_PER_SECOND_PER_ADDRESS as f64 / senders;
    let bytes = BYTES_PER_SECOND_PER_ADDRESS as f64 / size.max(1) as f64 / senders;
    per_socket.min(messages).min(bytes)
}

/// When a sender sends: every `gap`, on a fixed schedule (a late signal
/// does not make the next one early); the gap is the allowed rate less
/// [`RATE_MARGIN`], and a quarter longer after each interval of
/// [`ADJUST_EVERY`] in which the server refused one for a rate.
#[derive(Debug)]
struct Pace {
    gap: Duration,
    next: Instant,
    refused_since: bool,
    adjusted_at: Instant,
}

impl Pace {
    fn new(size: usize, now: Instant) -> Self {
        Self {
            gap: Duration::from_secs_f64(1.0 / (allowed_rate(size) * RATE_MARGIN)),
            next: now,
            refused_since: false,
            adjusted_at: now,
        }
    }

    fn refused(&mut self) {
        self.refused_since = true;
    }

    /// When the next signal may go, given that one went at `now`.
    fn after_send(&mut self, now: Instant) -> Instant {
        if now - self.adjusted_at >= ADJUST_EVERY {
            if self.refused_since {
                self.gap = self.gap * 5 / 4;
            }
            self.refused_since = false;
            self.adjusted_at = now;
        }
        self.next = (self.next + self.gap).max(now);
        self.next
    }
}

/// A sender: signals of `size` bytes to the stalled sockets, round-robin,
/// as fast as the server takes them, until `until`. Tells `gone` of every
/// stalled socket it finds closed.
pub(super) async fn send_signals(
    mut sender: Client,
    have: String,
    size: usize,
    stalled: Arc<Mutex<Stalled>>,
    gone: mpsc::UnboundedSender<()>,
    until: Instant,
) -> SenderTally {
    let padding = padding(size);
    let mut sent = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut targets: VecDeque<(String, String)> = VecDeque::with_capacity(REMEMBERED_SIGNALS);
    let mut pace = Pace::new(size, Instant::now());
    let cut_off = |why: ClientError, sent: u64, refused: BTreeMap<String, u64>| SenderTally {
        sent,
        refused,
        outcome: Err(format!("{why:#}")),
    };
    while Instant::now() < until {
        let target = stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pick(Instant::now());
        let idle = target.is_none();
        if let Some(target) = target {
            let (join_ref, msg_ref) = sender.next_refs(&have);
            let text = signal_text(
                join_ref.as_deref(),
                &msg_ref,
                &have,
                &target,
                size,
                &padding,
            );
            match tokio::time::timeout_at(until, sender.send_text(text)).await {
                Err(_) => break,
                Ok(Err(error)) => return cut_off(error, sent, refused),
                Ok(Ok(())) => sent += 1,
            }
            if targets.len() == REMEMBERED_SIGNALS {
                targets.pop_front();
            }
            targets.push_back((msg_ref, target));
        }
        // What the server answered so far, without waiting: a delivered
        // signal gets no reply, a refused one an error.
        while let Some(frame) = sender.next_frame().now_or_never() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => return cut_off(error, sent, refused),
            };
            let Some(reply) = Reply::of(&frame) else {
                continue;
            };
            let Some(reason) = reply.refusal() else {
                continue;
            };
            *refused.entry(reason.to_string()).or_default() += 1;
            if reply.is_rate_refusal() {
                pace.refused();
            } else if reason == "unknown_peer"
                && let Some((_, target)) = targets
                    .iter()
                    .find(|(msg_ref, _)| frame.msg_ref.as_deref() == Some(msg_ref.as_str()))
            {
                let news = stalled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mark_gone(target, Instant::now());
                if news {
                    let _ = gone.send(());
                }
            }
        }
        let next = if idle {
            Instant::now() + NO_TARGET_PAUSE
        } else {
            pace.after_send(Instant::now())
        };
        tokio::time::sleep_until(next.min(until)).await;
    }
    SenderTally {
        sent,
        refused,
        outcome: Ok(sender),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_keep_to_their_share_of_the_rates() {
        // 64 KiB signals: the address's 8 MiB/s over 4 senders.
        assert_eq!(allowed_rate(65536), 32.0);
        // Small signals: the socket's own 100 messages/s.
        assert_eq!(allowed_rate(100), 100.0);
    }

    #[test]
    fn the_pace_keeps_a_schedule_and_backs_off_on_refusals() {
        let start = Instant::now();
        let mut pace = Pace::new(65536, start);
        let gap = pace.gap;
        assert_eq!(pace.after_send(start), start + gap);
        // Late: the next one is not made early to catch up.
        let late = start + 10 * gap;
        assert_eq!(pace.after_send(late), late);
        pace.refused();
        let later = late + ADJUST_EVERY;
        assert_eq!(pace.after_send(later), later);
        assert_eq!(pace.after_send(later), later + gap * 5 / 4);
    }
}
