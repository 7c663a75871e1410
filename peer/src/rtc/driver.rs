//! Where webrtc-rs needs help from outside: nudging its connection driver
//! so queued packets go out at once instead of at its next ~200 ms tick
//! (docs/nat-traversal.md has the upstream causes), and telling from the
//! selected candidate pair which way a connection's bytes go.

use super::*;

/// Pokes the connection's driver every [`NUDGE_INTERVAL`] while packets
/// would otherwise sit in its queues: until the channel opens, and for the
/// connection's whole life when our end of the selected pair is a TURN
/// relay.
///
/// webrtc-rs 0.21 queues the SCTP INIT (after DTLS) and the DCEP open (after
/// SCTP) from inside its event handling without waking its own loop, so each
/// waits for the next timer, ~200 ms apiece: 0.4–1.5 s per connection on
/// loopback. Any call that touches the channel wakes the driver, which then
/// flushes both at once; measured set-up fell to ~35 ms.
///
/// Over TURN it is worse, on both sides and for every packet (upstream:
/// webrtc 0.21.1 `src/peer_connection/driver.rs`). `poll_writes` flushes the
/// TURN relayer (step "1.b") *before* it drains the core (1.c), whose
/// relayed packets `handle_write` merely queues in the TURN client; and
/// relayed input reaches the core only in `poll_reads` (3.a), after that
/// iteration's writes. Nothing re-wakes the loop for either, so each
/// relayed packet waits for one or two more wake-ups, ~200 ms apiece (the
/// ICE agent's connected-state tick) when nothing else happens: DTLS, SCTP
/// and the channel open took 1.8 s through coturn on loopback, and an
/// 8 MiB page crawled at 0.25 MB/s, the receiver's SACKs waiting out the
/// ticks. Nudged, the same set-up takes 0.1–0.3 s and the page moves at
/// ~20 MB/s (release). The 0.3 s cases, about one in three, are a stall no
/// nudge reaches: rtc 0.21.1 (`src/peer_connection/handler/dtls.rs`,
/// `handle_event`) queues the DTLS ClientHello when ICE selects a pair but
/// hands it out only from `handle_timeout`; when the relayed nomination
/// answer lands in the same driver iteration as an ICE tick, the next
/// timeout is the 200 ms connected-state tick.
///
/// The offerer wakes the driver through its channel. The answerer has no
/// channel before it is open, so until then it re-applies its own
/// configuration, the one public call that wakes the driver without
/// changing anything (the pending ICE configuration it leaves behind is
/// the one in force). Only answerers that may be relayed nudge at all.
pub(super) async fn nudge_driver(pc: Arc<dyn PeerConnection>, shared: Arc<Shared>) {
    let configuration = pc.get_configuration().await;
    let started = tokio::time::Instant::now();
    let mut relay_checked = false;
    loop {
        tokio::time::sleep(NUDGE_INTERVAL).await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if shared.settled.load(Ordering::Acquire) {
            if !relay_checked {
                relay_checked = true;
                let relayed = local_end_is_relayed(&*pc).await;
                tracing::debug!(relayed, "channel open; nudging on if relayed");
                if !relayed {
                    return;
                }
            }
        } else if started.elapsed() >= NUDGE_FOR {
            return;
        }
        // Re-setting the default low-water mark (or the configuration)
        // changes nothing but wakes the driver; an error means the
        // connection is gone.
        let woken = match shared.channel.get() {
            Some(channel) => channel.set_buffered_amount_low_threshold(0).await,
            None => pc.set_configuration(configuration.clone()).await,
        };
        if woken.is_err() {
            return;
        }
    }
}

/// Whether our end of the selected candidate pair is a TURN relay, so that
/// everything we send goes through webrtc-rs's TURN client.
async fn local_end_is_relayed(pc: &dyn PeerConnection) -> bool {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let Some(transport) = report.transport() else {
        return false;
    };
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) =
        report.get(&transport.selected_candidate_pair_id)
    else {
        return false;
    };
    // rtc 0.21 names the candidate `candidate:…` in the pair but
    // `RTCLocalIceCandidate_candidate:…` in its own entry.
    report.iter().any(|entry| {
        matches!(
            entry,
            RTCStatsReportEntry::LocalCandidate(local)
                if local.stats.id.ends_with(pair.local_candidate_id.as_str())
                    && local.candidate_type == RTCIceCandidateType::Relay
        )
    })
}

/// Which way the connection's bytes go, from the types of the selected
/// candidate pair's two ends; `None` before ICE selected a pair.
pub(super) async fn selected_path(pc: &dyn PeerConnection) -> Option<Path> {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let transport = report.transport()?;
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) =
        report.get(&transport.selected_candidate_pair_id)
    else {
        return None;
    };
    // As in `local_end_is_relayed`: entries are named with a prefix the
    // pair's ids lack.
    let mut local = None;
    let mut remote = None;
    for entry in report.iter() {
        match entry {
            RTCStatsReportEntry::LocalCandidate(candidate)
                if candidate
                    .stats
                    .id
                    .ends_with(pair.local_candidate_id.as_str()) =>
            {
                local = Some(candidate.candidate_type.to_string());
            }
            RTCStatsReportEntry::RemoteCandidate(candidate)
                if candidate
                    .stats
                    .id
                    .ends_with(pair.remote_candidate_id.as_str()) =>
            {
                remote = Some(candidate.candidate_type.to_string());
            }
            _ => {}
        }
    }
    // A remote end that is not among the remote candidates was learned from
    // a connectivity check: peer reflexive.
    let remote = remote.unwrap_or_else(|| "prflx".to_string());
    Some(Path::of_candidate_pair(&local?, &remote))
}

/// Whether any of `servers` is a TURN server, which may give ICE a relayed
/// candidate pair.
pub(super) fn has_turn_server(servers: &[IceServer]) -> bool {
    servers
        .iter()
        .flat_map(|server| &server.urls)
        .any(|url| url.starts_with("turn:") || url.starts_with("turns:"))
}
