//! Applying the remote side's signals to a peer connection, strictly in
//! arrival order: its description, then its candidates (those that arrive
//! first wait for the description), mDNS candidates recognised.

use super::*;

/// Applies remote signals one at a time, in arrival order. Candidates that
/// arrive before the remote description wait for it.
pub(super) async fn apply_signals(
    pc: Arc<dyn PeerConnection>,
    role: Role,
    mut signals: mpsc::UnboundedReceiver<SignalBody>,
    shared: Arc<Shared>,
) {
    let mut remote_set = false;
    let mut early_candidates = Vec::new();
    while let Some(body) = signals.recv().await {
        let outcome = match body {
            SignalBody::Offer { sdp } if role == Role::Answerer && !remote_set => {
                remote_set = true;
                let accepted = accept_offer(&*pc, sdp, &shared).await;
                if accepted.is_ok() && shared.nudge_answerer {
                    tokio::spawn(nudge_driver(pc.clone(), shared.clone()));
                }
                accepted
            }
            SignalBody::Answer { sdp } if role == Role::Offerer && !remote_set => {
                remote_set = true;
                accept_answer(&*pc, sdp, &shared).await
            }
            SignalBody::Candidate { .. } if !remote_set => {
                early_candidates.push(body);
                Ok(())
            }
            SignalBody::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => add_candidate(&*pc, candidate, sdp_mid, sdp_mline_index).await,
            other => {
                tracing::debug!(?other, "ignoring an out-of-turn signal");
                Ok(())
            }
        };
        if let Err(error) = outcome {
            shared.emit(SessionEvent::Closed {
                reason: format!("negotiation failed: {error}"),
            });
            return;
        }
        if remote_set {
            for early in std::mem::take(&mut early_candidates) {
                if let SignalBody::Candidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                } = early
                {
                    let _ = add_candidate(&*pc, candidate, sdp_mid, sdp_mline_index).await;
                }
            }
        }
    }
}

async fn accept_offer(
    pc: &dyn PeerConnection,
    sdp: String,
    shared: &Shared,
) -> Result<(), RtcError> {
    shared
        .message_size
        .store(message_size_for(&sdp), Ordering::Release);
    pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    let sdp = answer.sdp.clone();
    pc.set_local_description(answer).await?;
    shared.emit_description(SignalBody::Answer { sdp });
    Ok(())
}

async fn accept_answer(
    pc: &dyn PeerConnection,
    sdp: String,
    shared: &Shared,
) -> Result<(), RtcError> {
    shared
        .message_size
        .store(message_size_for(&sdp), Ordering::Release);
    pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
        .await?;
    Ok(())
}

/// Adds a remote candidate. A bad candidate is not a failed negotiation:
/// others may work, so it is logged and skipped.
async fn add_candidate(
    pc: &dyn PeerConnection,
    candidate: String,
    sdp_mid: Option<String>,
    sdp_mline_index: Option<u16>,
) -> Result<(), RtcError> {
    // An empty candidate ends the trickle; `.local` names are browsers'
    // mDNS aliases, which we do not resolve (see `RtcSettings`).
    if candidate.trim().is_empty() || is_mdns_candidate(&candidate) {
        return Ok(());
    }
    let init = RTCIceCandidateInit {
        candidate,
        sdp_mid,
        sdp_mline_index,
        ..Default::default()
    };
    if let Err(error) = pc.add_ice_candidate(init).await {
        tracing::debug!(%error, "skipping a remote candidate");
    }
    Ok(())
}

/// Whether a candidate line names its address by an mDNS `.local` name.
pub fn is_mdns_candidate(candidate: &str) -> bool {
    // candidate:<foundation> <component> <transport> <priority> <address> ...
    candidate
        .split_whitespace()
        .nth(4)
        .is_some_and(|address| address.ends_with(".local"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_mdns_candidates() {
        assert!(is_mdns_candidate(
            "candidate:1 1 udp 2122260223 0c3a5e1b-1d2f-4b7e-9a55-7f7e4a6c1d2e.local 54321 typ host"
        ));
        assert!(!is_mdns_candidate(
            "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host"
        ));
        assert!(!is_mdns_candidate(""));
    }
}
