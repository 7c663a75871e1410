//! The stalled readers: opening one (joined, then never read again), and
//! the roster the senders take their targets from, round-robin, and strike
//! off the ones they find closed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use ephemeral_phoenix_client::{Client, Options, peer_id};
use tokio::time::Instant;

use super::ATTACK_SOURCE;

/// `SO_RCVBUF` of a stalled socket (Linux doubles it).
const STALLED_RECEIVE_BUFFER: u32 = 4096;

/// The stalled sockets as the senders see them.
#[derive(Debug, Default)]
pub(super) struct Stalled {
    /// Peer ids of the stalled sockets not known to be closed.
    pub(super) live: Vec<String>,
    /// When each was first sent a signal.
    first_signal: HashMap<String, Instant>,
    /// When a refusal first said it was gone.
    gone: HashMap<String, Instant>,
    /// Round-robin position in `live`.
    next: usize,
}

impl Stalled {
    /// The next target, round-robin.
    pub(super) fn pick(&mut self, now: Instant) -> Option<String> {
        if self.live.is_empty() {
            return None;
        }
        let target = self.live[self.next % self.live.len()].clone();
        self.next = self.next.wrapping_add(1);
        self.first_signal.entry(target.clone()).or_insert(now);
        Some(target)
    }

    /// Marks `target` gone; whether this is news.
    pub(super) fn mark_gone(&mut self, target: &str, now: Instant) -> bool {
        let Some(at) = self.live.iter().position(|t| t == target) else {
            return false;
        };
        self.live.swap_remove(at);
        self.gone.insert(target.to_string(), now);
        true
    }

    /// From first signal to known gone, for each gone socket.
    pub(super) fn lifetimes(&self) -> Vec<Duration> {
        self.gone
            .iter()
            .filter_map(|(id, gone)| Some(*gone - *self.first_signal.get(id)?))
            .collect()
    }
}

/// A stalled visitor: connected with a tiny receive buffer, joined, and
/// from then on never read. Returns the socket (to keep it open) and its
/// peer id.
pub(super) async fn open_stalled(
    url: &str,
    want: &str,
    deadline: Instant,
) -> Result<(Client, String)> {
    let options = Options::default()
        .source(ATTACK_SOURCE)
        .receive_buffer(STALLED_RECEIVE_BUFFER);
    let mut socket = Client::connect_with(url, options).await?;
    let response = socket.join_patiently(want, deadline).await?;
    let id = peer_id(&response)?;
    Ok((socket, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_go_round_and_gone_ones_leave() {
        let now = Instant::now();
        let mut stalled = Stalled {
            live: vec!["a".into(), "b".into()],
            ..Stalled::default()
        };
        assert_eq!(stalled.pick(now).as_deref(), Some("a"));
        assert_eq!(stalled.pick(now).as_deref(), Some("b"));
        assert!(stalled.mark_gone("a", now + Duration::from_secs(3)));
        assert!(!stalled.mark_gone("a", now));
        assert_eq!(stalled.pick(now).as_deref(), Some("b"));
        assert_eq!(stalled.lifetimes(), vec![Duration::from_secs(3)]);
    }
}
