//! The attack's `signal` frames: built to an exact size, and the largest
//! size the server relays, found by probing it before the attack.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ephemeral_phoenix_client::{Client, Reply, peer_id};
use serde_json::json;
use tokio::time::Instant;

use super::{ATTACK_SOURCE, MAX_SIGNAL_BYTES};

/// How long a probe signal may take to arrive or be refused.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// A `signal` frame of `size` bytes exactly (an offer whose SDP is
/// padding), or the smallest such frame if `size` is smaller.
pub(super) fn signal_text(
    join_ref: Option<&str>,
    msg_ref: &str,
    topic: &str,
    to: &str,
    size: usize,
    padding: &str,
) -> String {
    let frame = |sdp: &str| {
        json!([join_ref, msg_ref, topic, "signal", { "to": to, "type": "offer", "sdp": sdp }])
            .to_string()
    };
    let empty = frame("").len();
    let pad = size.saturating_sub(empty).min(padding.len());
    frame(&padding[..pad])
}

/// SDP padding: bytes JSON writes as they are.
pub(super) fn padding(bytes: usize) -> String {
    "a".repeat(bytes)
}

/// The largest signal the server relays, found by asking it: the first of
/// a few sizes, from `--max-signal-bytes` down, that reaches a reading
/// visitor. Also the refusals of the larger ones.
pub(super) async fn largest_accepted_signal(
    url: &str,
    sender: &mut Client,
    have: &str,
    want: &str,
    deadline: Instant,
) -> Result<(usize, Vec<String>)> {
    let mut probe = Client::connect_from(url, ATTACK_SOURCE).await?;
    let response = probe.join_patiently(want, deadline).await?;
    let probe_id = peer_id(&response)?;
    let padding = padding(MAX_SIGNAL_BYTES);
    let sizes = [
        MAX_SIGNAL_BYTES,
        MAX_SIGNAL_BYTES - 64,
        MAX_SIGNAL_BYTES * 15 / 16,
        MAX_SIGNAL_BYTES * 3 / 4,
        MAX_SIGNAL_BYTES / 2,
    ];
    let mut refusals = Vec::new();
    for size in sizes {
        let (join_ref, msg_ref) = sender.next_refs(have);
        let text = signal_text(
            join_ref.as_deref(),
            &msg_ref,
            have,
            &probe_id,
            size,
            &padding,
        );
        sender.send_text(text).await?;
        let give_up = Instant::now() + PROBE_WAIT;
        let refused = loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(give_up) => {
                    break Some(format!("neither relayed nor refused in {PROBE_WAIT:?}"));
                }
                frame = probe.next_frame() => {
                    if frame.context("the probe visitor was cut off")?.event == "signal" {
                        break None;
                    }
                }
                frame = sender.next_frame() => {
                    let frame = frame.context("the probing sender was cut off")?;
                    if frame.msg_ref.as_deref() == Some(msg_ref.as_str())
                        && let Some(reply) = Reply::of(&frame)
                        && let Some(reason) = reply.refusal()
                    {
                        break Some(reason.to_string());
                    }
                }
            }
        };
        match refused {
            None => {
                let _ = probe.close().await;
                return Ok((size, refusals));
            }
            Some(why) => refusals.push(format!("{size} B: {why}")),
        }
    }
    bail!(
        "the server relayed no signal of up to {MAX_SIGNAL_BYTES} bytes: {}",
        refusals.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_the_size_asked() {
        let to = "0123456789abcdef0123456789abcdef";
        let padding = padding(MAX_SIGNAL_BYTES);
        for size in [MAX_SIGNAL_BYTES, 1000] {
            let text = signal_text(Some("3"), "123", "have:x", to, size, &padding);
            assert_eq!(text.len(), size);
            let frame: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(frame[4]["to"], to);
        }
        let smallest = signal_text(None, "1", "have:x", to, 10, &padding);
        assert!(smallest.len() > 10);
    }
}
