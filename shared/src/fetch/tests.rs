//! The fetch machine driven by hand: every path, with time as a number.

use super::*;
use crate::transfer::TransferSender;

const PAGE: &[u8] = "a page ✓".as_bytes();
const MS: Duration = Duration::from_millis(1);

fn page() -> Page {
    Page::new(PAGE.to_vec())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn host(n: u128) -> PeerId {
    PeerId::from_random(n)
}

fn drain(fetch: &mut Fetch) -> Vec<FetchAction> {
    std::iter::from_fn(|| fetch.poll()).collect()
}

fn request(relay: bool, exclude: &[PeerId]) -> FetchAction {
    FetchAction::Request(ContentRequest {
        relay,
        exclude: exclude.to_vec(),
    })
}

fn start() -> Fetch {
    let mut fetch = Fetch::new(PageHash::of(PAGE), FetchConfig::default(), Duration::ZERO);
    assert_eq!(drain(&mut fetch), [request(false, &[])]);
    fetch
}

/// Every part of `text`, as the server relays it.
fn relay(fetch: &mut Fetch, text: &str, now: Duration) {
    for part in crate::relay::parts(text) {
        fetch.on_relay_part(&part, None, now);
    }
}

fn send_page(fetch: &mut Fetch, page: &[u8], now: Duration) {
    let page = Page::new(page.to_vec());
    let sender = TransferSender::new(&page, 5);
    fetch.on_channel_text(&sender.header(), now);
    for chunk in sender.chunks() {
        fetch.on_channel_binary(&chunk, now);
    }
}

#[test]
fn happy_path_over_webrtc() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    assert!(fetch.accepts_signal_from(host(1)));
    assert!(!fetch.accepts_signal_from(host(2)));
    fetch.on_channel_open(2 * MS);
    send_page(&mut fetch, PAGE, 3 * MS);
    assert_eq!(
        drain(&mut fetch),
        [
            FetchAction::CloseRtc(host(1)),
            FetchAction::Delivered {
                page: page(),
                transport: Transport::WebRtc,
                host: Some(host(1)),
            },
        ]
    );
    assert_eq!(fetch.phase(), Phase::Delivered(Transport::WebRtc));
    assert_eq!(fetch.next_deadline(), None);
}

#[test]
fn no_hosts_is_gone_at_once() {
    let mut fetch = start();
    fetch.on_no_hosts();
    assert_eq!(drain(&mut fetch), [FetchAction::Gone]);
    assert_eq!(fetch.phase(), Phase::Gone);
}

#[test]
fn rtc_timeout_falls_back_to_relay_from_the_same_host() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_tick(secs(2));
    assert!(drain(&mut fetch).is_empty(), "nothing before the timeout");
    fetch.on_tick(secs(6));
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(true, &[])]
    );
    fetch.on_routed(host(1), secs(6));
    assert_eq!(fetch.phase(), Phase::Relaying(host(1)));
    relay(&mut fetch, std::str::from_utf8(PAGE).unwrap(), secs(6));
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Delivered {
            page: page(),
            transport: Transport::Relay,
            host: Some(host(1)),
        }]
    );
}

#[test]
fn ice_failure_falls_back_to_relay() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_rtc_failed(2 * MS);
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(true, &[])]
    );
}

#[test]
fn wrong_bytes_exclude_the_host_and_ask_another() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_channel_open(MS);
    let mut forged = PAGE.to_vec();
    forged[0] ^= 0x20;
    // The forger claims the right hash in its header.
    let forged = Page::new(forged);
    let sender = TransferSender::new(&forged, 5);
    let header = format!(
        r#"{{"hash":"{}","size":{}}}"#,
        PageHash::of(PAGE),
        forged.len()
    );
    fetch.on_channel_text(&header, MS);
    for chunk in sender.chunks() {
        fetch.on_channel_binary(&chunk, MS);
    }
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(false, &[host(1)])]
    );
    fetch.on_routed(host(2), 2 * MS);
    fetch.on_channel_open(2 * MS);
    send_page(&mut fetch, PAGE, 3 * MS);
    assert!(matches!(
        drain(&mut fetch).last(),
        Some(FetchAction::Delivered { host: Some(h), .. }) if *h == host(2)
    ));
}

#[test]
fn wrong_bytes_from_every_host_is_a_failure_not_gone() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_channel_open(MS);
    fetch.on_channel_text("garbage", MS);
    drain(&mut fetch);
    fetch.on_no_hosts();
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Failed(FetchFailure::WrongBytesFromEveryHost {
            bad_hosts: 1
        })]
    );
}

#[test]
fn host_vanishing_mid_transfer_is_replaced() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_channel_open(MS);
    let page = page();
    let sender = TransferSender::new(&page, 5);
    fetch.on_channel_text(&sender.header(), MS);
    fetch.on_channel_binary(&sender.chunks().next().unwrap(), MS);
    assert_eq!(fetch.progress(), Some((1, PAGE.len())));
    fetch.on_rtc_failed(2 * MS);
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(false, &[host(1)])]
    );
}

#[test]
fn a_stalled_transfer_times_out_but_a_flowing_one_does_not() {
    let mut fetch = start();
    fetch.on_routed(host(1), Duration::ZERO);
    fetch.on_channel_open(Duration::ZERO);
    let page = page();
    let sender = TransferSender::new(&page, 5);
    fetch.on_channel_text(&sender.header(), secs(4));
    fetch.on_tick(secs(8));
    assert!(
        drain(&mut fetch).is_empty(),
        "a message renews the stall timer"
    );
    fetch.on_tick(secs(9));
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(false, &[host(1)])]
    );
}

#[test]
fn relay_timeout_excludes_the_silent_host() {
    let config = FetchConfig {
        webrtc: false,
        ..FetchConfig::default()
    };
    let mut fetch = Fetch::new(PageHash::of(PAGE), config, Duration::ZERO);
    assert_eq!(drain(&mut fetch), [request(true, &[])]);
    fetch.on_routed(host(1), Duration::ZERO);
    fetch.on_tick(secs(5));
    assert_eq!(drain(&mut fetch), [request(true, &[host(1)])]);
    fetch.on_no_hosts();
    assert_eq!(drain(&mut fetch), [FetchAction::Gone]);
}

#[test]
fn relayed_content_is_verified() {
    let config = FetchConfig {
        webrtc: false,
        ..FetchConfig::default()
    };
    let mut fetch = Fetch::new(PageHash::of(PAGE), config, Duration::ZERO);
    drain(&mut fetch);
    fetch.on_routed(host(1), Duration::ZERO);
    relay(&mut fetch, "not the page", MS);
    assert_eq!(drain(&mut fetch), [request(true, &[host(1)])]);
    assert_eq!(fetch.phase(), Phase::Asking);
}

#[test]
fn someone_elses_relay_completes_a_webrtc_fetch() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    relay(&mut fetch, "unrelated", MS);
    assert!(drain(&mut fetch).is_empty(), "a wrong broadcast is ignored");
    relay(&mut fetch, std::str::from_utf8(PAGE).unwrap(), MS);
    assert_eq!(
        drain(&mut fetch),
        [
            FetchAction::CloseRtc(host(1)),
            FetchAction::Delivered {
                page: page(),
                transport: Transport::Relay,
                host: Some(host(1)),
            },
        ]
    );
}

#[test]
fn an_unanswered_request_is_sent_again_then_given_up() {
    let config = FetchConfig {
        max_attempts: 3,
        ..FetchConfig::default()
    };
    let mut fetch = Fetch::new(PageHash::of(PAGE), config, Duration::ZERO);
    for t in 1..=2 {
        fetch.on_tick(secs(5 * t));
    }
    assert_eq!(drain(&mut fetch).len(), 3);
    fetch.on_tick(secs(15));
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Failed(FetchFailure::TooManyAttempts(3))]
    );
}

#[test]
fn messages_from_a_dropped_host_are_ignored() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_channel_open(MS);
    fetch.on_rtc_failed(MS);
    drain(&mut fetch);
    send_page(&mut fetch, PAGE, MS);
    fetch.on_channel_open(MS);
    assert!(drain(&mut fetch).is_empty());
    assert_eq!(fetch.phase(), Phase::Asking);
}

#[test]
fn a_reconnect_asks_again() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_reconnected(secs(1));
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::CloseRtc(host(1)), request(false, &[])]
    );
}

fn relaying_after_rtc_failed(config: FetchConfig) -> Fetch {
    let webrtc = config.webrtc;
    let mut fetch = Fetch::new(PageHash::of(PAGE), config, Duration::ZERO);
    if webrtc {
        fetch.on_routed(host(1), MS);
        fetch.on_rtc_failed(2 * MS);
    }
    drain(&mut fetch);
    fetch.on_routed(host(1), 3 * MS);
    assert_eq!(fetch.phase(), Phase::Relaying(host(1)));
    fetch
}

#[test]
fn a_header_over_the_limit_fails_at_once_without_asking_another() {
    let config = FetchConfig {
        max_page_bytes: 4,
        ..FetchConfig::default()
    };
    let mut fetch = Fetch::new(PageHash::of(PAGE), config, Duration::ZERO);
    drain(&mut fetch);
    fetch.on_routed(host(1), MS);
    fetch.on_channel_open(MS);
    fetch.on_channel_text(&TransferSender::new(&page(), 5).header(), MS);
    let failure = FetchFailure::PageTooLarge {
        size: PAGE.len() as u64,
        max: 4,
    };
    assert_eq!(
        drain(&mut fetch),
        [
            FetchAction::CloseRtc(host(1)),
            FetchAction::Failed(failure.clone())
        ]
    );
    assert_eq!(fetch.phase(), Phase::Failed);
    assert_eq!(fetch.next_deadline(), None, "nothing left to time out");
    assert!(failure.is_too_large());
    assert_eq!(
        failure.to_string(),
        "the page is 10 bytes; this peer accepts pages up to 4 bytes"
    );
    // Whatever the host sends next changes nothing.
    send_page(&mut fetch, PAGE, 2 * MS);
    fetch.on_tick(secs(60));
    assert!(drain(&mut fetch).is_empty());
}

#[test]
fn a_relayed_page_over_the_limit_is_too_large_not_wrong() {
    let config = FetchConfig {
        webrtc: false,
        max_page_bytes: 4,
        ..FetchConfig::default()
    };
    let mut fetch = relaying_after_rtc_failed(config);
    relay(&mut fetch, std::str::from_utf8(PAGE).unwrap(), 4 * MS);
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Failed(FetchFailure::PageTooLarge {
            size: PAGE.len() as u64,
            max: 4
        })]
    );
}

#[test]
fn content_unavailable_after_webrtc_failed_is_too_large_for_relay() {
    let mut fetch = relaying_after_rtc_failed(FetchConfig::default());
    fetch.on_content_unavailable(host(1), 1_000_000, Some(500_000), 4 * MS);
    let failure = FetchFailure::TooLargeForRelay {
        size: 1_000_000,
        max_relay: Some(500_000),
        webrtc_tried: true,
    };
    assert_eq!(drain(&mut fetch), [FetchAction::Failed(failure.clone())]);
    assert_eq!(fetch.phase(), Phase::Failed);
    assert_eq!(fetch.next_deadline(), None);
    assert_eq!(
        failure.to_string(),
        "the page is 976.6 KiB; WebRTC failed and the server relays pages up to 488.3 KiB"
    );
}

#[test]
fn content_unavailable_to_a_relay_only_visitor_says_webrtc_is_off() {
    let config = FetchConfig {
        webrtc: false,
        max_page_bytes: 8 << 20,
        ..FetchConfig::default()
    };
    let mut fetch = relaying_after_rtc_failed(config);
    fetch.on_content_unavailable(host(1), 3_000_000, Some(1 << 20), 4 * MS);
    let failure = FetchFailure::TooLargeForRelay {
        size: 3_000_000,
        max_relay: Some(1 << 20),
        webrtc_tried: false,
    };
    assert_eq!(drain(&mut fetch), [FetchAction::Failed(failure.clone())]);
    assert_eq!(
        failure.to_string(),
        "the page is 2.9 MiB; this peer does not use WebRTC and the server relays pages up to 1.0 MiB"
    );
}

#[test]
fn content_unavailable_over_the_visitors_own_limit_names_that_limit() {
    let config = FetchConfig {
        webrtc: false,
        ..FetchConfig::default()
    };
    let mut fetch = relaying_after_rtc_failed(config);
    fetch.on_content_unavailable(host(1), 3_000_000, None, 4 * MS);
    // Even WebRTC would not help: the limit to raise is the visitor's.
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Failed(FetchFailure::PageTooLarge {
            size: 3_000_000,
            max: 1 << 20
        })]
    );
}

#[test]
fn content_unavailable_from_anyone_but_the_relaying_host_is_ignored() {
    let mut fetch = start();
    fetch.on_routed(host(1), MS);
    fetch.on_content_unavailable(host(1), 3_000_000, Some(1 << 20), MS);
    assert!(drain(&mut fetch).is_empty(), "a WebRTC fetch never asked");
    assert_eq!(fetch.phase(), Phase::Connecting(host(1)));

    let mut fetch = relaying_after_rtc_failed(FetchConfig::default());
    fetch.on_content_unavailable(host(2), 3_000_000, Some(1 << 20), 4 * MS);
    assert!(drain(&mut fetch).is_empty());
    assert_eq!(fetch.phase(), Phase::Relaying(host(1)));
}

#[test]
fn content_unavailable_for_a_size_the_server_relays_drops_that_host() {
    let mut fetch = relaying_after_rtc_failed(FetchConfig::default());
    fetch.on_content_unavailable(host(1), 1000, Some(1 << 20), 4 * MS);
    assert_eq!(drain(&mut fetch), [request(true, &[host(1)])]);
    assert_eq!(fetch.phase(), Phase::Asking);
}

/// A page of several parts, and a fetch of it routed to `host(1)`.
fn routed_to_a_page_in_parts(config: FetchConfig) -> (String, Fetch) {
    let text = "relayed in parts ✓ ".repeat(10_000);
    let mut fetch = Fetch::new(PageHash::of(text.as_bytes()), config, Duration::ZERO);
    drain(&mut fetch);
    fetch.on_routed(host(1), MS);
    (text, fetch)
}

#[test]
fn a_page_in_parts_turns_a_webrtc_fetch_to_relay_and_each_part_is_progress() {
    let (text, mut fetch) = routed_to_a_page_in_parts(FetchConfig::default());
    let parts: Vec<_> = crate::relay::parts(&text).collect();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let (last, first) = parts.split_last().unwrap();
    let mut now = MS;
    for part in first {
        // Each part within the relay timeout, all of them well past it.
        now += secs(4);
        fetch.on_tick(now);
        fetch.on_relay_part(part, Some(1 << 20), now);
        let received = part.offset + part.content.len();
        assert_eq!(fetch.progress(), Some((received, text.len())));
        assert_eq!(fetch.phase(), Phase::Relaying(host(1)));
    }
    assert_eq!(drain(&mut fetch), [FetchAction::CloseRtc(host(1))]);
    fetch.on_relay_part(last, Some(1 << 20), now);
    assert_eq!(
        drain(&mut fetch),
        [FetchAction::Delivered {
            page: Page::new(text.into_bytes()),
            transport: Transport::Relay,
            host: Some(host(1)),
        }]
    );
}

#[test]
fn a_relayed_page_that_stops_coming_times_out_like_a_silent_host() {
    let relay_only = FetchConfig {
        webrtc: false,
        ..FetchConfig::default()
    };
    let (text, mut fetch) = routed_to_a_page_in_parts(relay_only);
    let first = crate::relay::parts(&text).next().unwrap();
    fetch.on_relay_part(&first, None, secs(1));
    // Past the deadline the routing set, not the one the part moved.
    fetch.on_tick(secs(5) + 2 * MS);
    assert!(drain(&mut fetch).is_empty());
    fetch.on_tick(secs(6));
    assert_eq!(drain(&mut fetch), [request(true, &[host(1)])]);
}

#[test]
fn parts_that_skip_end_the_fetch_and_close_its_channel() {
    let (text, mut fetch) = routed_to_a_page_in_parts(FetchConfig::default());
    let parts: Vec<_> = crate::relay::parts(&text).collect();
    fetch.on_relay_part(&parts[0], None, MS);
    fetch.on_relay_part(&parts[2], None, MS);
    let gap = RelayError::Gap {
        expected: parts[1].offset,
        got: parts[2].offset,
    };
    assert_eq!(
        drain(&mut fetch),
        [
            FetchAction::CloseRtc(host(1)),
            FetchAction::Failed(FetchFailure::BadRelay(gap))
        ]
    );
    assert_eq!(fetch.phase(), Phase::Failed);
    assert_eq!(fetch.progress(), None);
}
