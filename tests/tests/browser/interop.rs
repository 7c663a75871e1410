//! A browser and a native peer (`ephemeral-peer`, webrtc-rs) serving each
//! other over WebRTC.

use ephemeral_peer::{Peer, PeerConfig, Transport};
use ephemeral_shared::PageHash;

use crate::harness::*;

/// A native peer for loopback: ICE bound to 127.0.0.1, which Chromium
/// reaches (as a peer-reflexive pair) though it never offers loopback
/// itself.
fn native_config(world: &World) -> PeerConfig {
    let mut config = PeerConfig::new(world.websocket_url());
    config.rtc.bind = "127.0.0.1".parse().expect("a literal address");
    config
}

async fn native(world: &World) -> Peer {
    tokio::time::timeout(WAIT, Peer::connect(native_config(world)))
        .await
        .expect("the native peer connects in time")
        .expect("the native peer connects")
}

#[tokio::test]
async fn a_browser_gets_a_page_hosted_by_a_native_peer() {
    let mut world = World::start().await;
    let host = native(&world).await;
    let page = "served by webrtc-rs, read by Chromium ✓";
    let hash = tokio::time::timeout(WAIT, host.share(page.as_bytes().to_vec()))
        .await
        .expect("sharing in time")
        .expect("the native peer shares");

    let browser = world.browser().await;
    browser.open(&format!("/{hash}")).await;
    let seen = browser
        .wait_for("the browser to get the page", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, page);
    assert_eq!(seen.transport.as_deref(), Some("webrtc"), "{seen:#?}");
    browser.wait_for("two hosts", |s| hosts(s, 2)).await;
    browser.close().await;
    host.shutdown().await;
    world.finish().await;
}

#[tokio::test]
async fn a_native_peer_gets_a_page_hosted_by_a_browser() {
    let mut world = World::start().await;
    let browser = world.browser().await;
    let page = "written in Chromium, fetched by webrtc-rs 👋";
    browser.share(page).await;

    let visitor = native(&world).await;
    let fetched = tokio::time::timeout(WAIT, visitor.fetch(PageHash::of(page.as_bytes())))
        .await
        .expect("the fetch ends in time")
        .expect("the native peer gets the page");
    assert_eq!(fetched.page, page.as_bytes());
    assert_eq!(fetched.transport, Transport::WebRtc);
    browser.close().await;
    visitor.shutdown().await;
    world.finish().await;
}

/// Waits on the server's `content_unavailable`: a native host answers a
/// relay request for a page over the server's relay limit with it, and the
/// browser says so in words, at once with WebRTC off, after its RTC
/// timeout when WebRTC cannot connect.
#[tokio::test]
async fn a_page_too_large_for_the_relay_is_said_in_words() {
    let mut world = World::start_with(signal_server::Config {
        max_page_bytes: 64 * 1024,
        ..signal_server::Config::default()
    })
    .await;
    let host = native(&world).await;
    let page = "too large to relay ".repeat(6000);
    let hash = tokio::time::timeout(WAIT, host.share(page.clone().into_bytes()))
        .await
        .expect("sharing in time")
        .expect("the native peer shares");

    for (query, why) in [
        ("rtc=off", "direct connections are off in this tab"),
        ("ice=relay", "a direct connection failed"),
    ] {
        let browser = world.browser().await;
        browser.open(&format!("/{hash}?{query}")).await;
        let seen = browser
            .wait_for("the browser to fail on the size", |s| {
                s.state.as_deref() == Some("failed")
            })
            .await;
        assert!(
            seen.status
                .starts_with("This page is 111.3 KiB: too large for the server's relay"),
            "{seen:#?}"
        );
        assert!(seen.status.contains(why), "{query}: {seen:#?}");
        browser.close().await;
    }
    host.shutdown().await;
    world.finish().await;
}
