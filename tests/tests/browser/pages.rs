//! Pages between browsers: what a visitor sees.

use ephemeral_shared::PageHash;
use sha2::{Digest, Sha256};

use crate::harness::*;

#[tokio::test]
async fn a_page_moves_between_browsers_over_webrtc_and_counts_its_hosts() {
    let mut world = World::start().await;
    let a = world.browser().await;
    a.open("/").await;
    a.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
        .await;
    a.screenshot("home.png").await;

    let text = "# Hello from A\n\nThis page lives in browsers only.\nLine three.";
    let shared = a.share(text).await;
    let hash = PageHash::of(text.as_bytes());
    assert_eq!(shared.path, format!("/{hash}"));
    assert_eq!(shared.content, text);
    assert_eq!(shared.transport.as_deref(), Some("author"));
    let focused = a
        .eval("return document.activeElement && document.activeElement.id;")
        .await;
    assert_eq!(focused, "link", "Share puts the focus on the link");
    assert_copy_link_works(&a).await;

    let b = world.browser().await;
    b.open(&format!("/{hash}")).await;
    let seen = b
        .wait_for("B to get the page", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, text, "B shows exactly A's text");
    assert_eq!(
        seen.transport.as_deref(),
        Some("webrtc"),
        "delivered peer to peer: {seen:#?}"
    );
    assert!(seen.transport_text.contains("WebRTC"), "{seen:#?}");
    assert!(seen.status.contains("Verified"), "{seen:#?}");
    let title = b.client.title().await.expect("a title");
    assert_eq!(
        title, "Hello from A · Ephemeral",
        "the tab is named by the page"
    );

    b.wait_for("B to count 2 hosts", |s| hosts(s, 2)).await;
    a.wait_for("A to count 2 hosts", |s| hosts(s, 2)).await;
    b.screenshot("page.png").await;
    b.client
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    b.screenshot("page-phone.png").await;

    b.close().await;
    a.wait_for("A to count 1 host after B left", |s| hosts(s, 1))
        .await;
    a.close().await;
    world.finish().await;
}

/// The copy-link button copies the page's URL, or, where the clipboard is
/// refused, selects the link so it can be copied by hand; "Copied ✓" then
/// reads "Copy link" again. A click on the link field selects it all.
async fn assert_copy_link_works(browser: &Browser) {
    browser
        .eval("getSelection().removeAllRanges(); document.body.focus();")
        .await;
    browser.click("link").await;
    let selected = browser
        .eval(
            r#"const link = document.getElementById("link");
               return link.selectionEnd - link.selectionStart === link.value.length
                 && link.value.length > 0;"#,
        )
        .await;
    assert_eq!(selected, true, "a click on the link selects all of it");
    browser
        .client
        .find(fantoccini::Locator::Id("copy-link"))
        .await
        .expect("a copy-link button")
        .click()
        .await
        .expect("the button clicks");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let outcome = browser
            .client
            .execute(
                r#"const link = document.getElementById("link");
                   return {
                     url_shown: link.value === location.href,
                     copied: document.getElementById("copy-link").textContent.includes("Copied"),
                     selected: document.activeElement === link
                       && link.selectionEnd - link.selectionStart === link.value.length,
                   };"#,
                vec![],
            )
            .await
            .expect("the page answers");
        let flag = |key: &str| outcome.get(key).and_then(|v| v.as_bool()) == Some(true);
        assert!(flag("url_shown"), "the link field shows the page URL");
        if flag("copied") {
            tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
            let text = browser
                .eval("return document.getElementById('copy-link').textContent;")
                .await;
            assert_eq!(text, "Copy link", "the button resets after a moment");
            return;
        }
        if flag("selected") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copy-link neither copied nor selected the link: {outcome}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn relay_delivers_when_webrtc_is_impossible() {
    let mut world = World::start().await;
    let a = world.browser().await;
    let text = "relayed, because no ICE candidate pair can form";
    a.share(text).await;
    let hash = PageHash::of(text.as_bytes());

    // WebRTC present but unable to connect: falls back after the RTC timeout.
    let b = world.browser().await;
    b.open(&format!("/{hash}?ice=relay")).await;
    let seen = b
        .wait_for("B to get the page by relay", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, text);
    assert_eq!(seen.transport.as_deref(), Some("relay"), "{seen:#?}");
    assert!(seen.transport_text.contains("via relay"), "{seen:#?}");
    assert!(seen.status.contains("via relay"), "{seen:#?}");

    // No WebRTC at all: relay from the first request.
    let c = world.browser().await;
    c.open(&format!("/{hash}?rtc=off")).await;
    let seen = c
        .wait_for("C to get the page by relay", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, text);
    assert_eq!(seen.transport.as_deref(), Some("relay"), "{seen:#?}");
    c.wait_for("three hosts", |s| hosts(s, 3)).await;

    for browser in [a, b, c] {
        browser.close().await;
    }
    world.finish().await;
}

/// A relayed page of several parts fills the progress bar as its parts
/// come: bytes, percent and "via relay", like a page over WebRTC.
#[tokio::test]
async fn a_relayed_page_shows_its_bytes_and_percent_as_it_comes() {
    let mut world = World::start().await;
    let a = world.browser().await;
    // 616,000 bytes: ten parts through the relay, under its 1 MiB limit.
    let text = "relayed in parts, each one progress 0123456\n".repeat(14_000);
    a.share(&text).await;
    let hash = PageHash::of(text.as_bytes());

    let b = world.browser().await;
    // No WebRTC in this tab: the page comes by relay from the start.
    b.open("/?rtc=off").await;
    b.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
        .await;
    b.record_errors().await;
    b.eval(
        r#"window.__progress = [];
           const bar = document.getElementById("progress");
           new MutationObserver(() => window.__progress.push({
               text: document.getElementById("progress-text").textContent,
               value: bar.getAttribute("value"),
               max: bar.max,
             }))
             .observe(document.getElementById("progress-text"), { childList: true, characterData: true, subtree: true });"#,
    )
    .await;
    b.go_in_app(&format!("/{hash}")).await;
    let seen = b
        .wait_for("B to get the page by relay", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.transport.as_deref(), Some("relay"), "{seen:#?}");
    assert_eq!(seen.content_length, text.len());
    assert!(!seen.progress_shown, "the bar is gone once verified");
    let recorded = b.eval("return [window.__progress, window.__errors];").await;
    let progress = recorded[0].as_array().cloned().unwrap_or_default();
    let partway: Vec<_> = progress
        .iter()
        .filter(|p| {
            let text = p["text"].as_str().unwrap_or_default();
            let value = p["value"].as_str().and_then(|v| v.parse::<f64>().ok());
            let max = p["max"].as_f64().unwrap_or_default();
            text.contains(" of 601.6 KiB (")
                && text.ends_with("%), via relay")
                && value.is_some_and(|value| value > 0.0 && value < max)
        })
        .collect();
    assert!(
        !partway.is_empty(),
        "bytes, percent and path part of the way: {progress:?}"
    );
    assert_eq!(recorded[1], serde_json::json!([]), "no errors in the tab");
    a.close().await;
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn the_last_host_leaving_makes_the_page_gone() {
    let mut world = World::start().await;
    let a = world.browser().await;
    let text = "here today, gone when the tab closes";
    a.share(text).await;
    let hash = PageHash::of(text.as_bytes());
    a.close().await;

    let b = world.browser().await;
    b.open(&format!("/{hash}")).await;
    let seen = b
        .wait_for_within(
            "B to say the page is gone",
            std::time::Duration::from_secs(5),
            |s| s.state.as_deref() == Some("gone"),
        )
        .await;
    assert!(seen.gone_visible, "the gone notice shows: {seen:#?}");
    b.screenshot("gone.png").await;
    assert_eq!(
        seen.status, "Nobody is hosting this page right now.",
        "{seen:#?}"
    );
    assert!(!seen.content_visible, "no stale content: {seen:#?}");
    let new_page = b
        .client
        .find(fantoccini::Locator::Id("new-page"))
        .await
        .expect("an offer to create a new page");
    assert_eq!(
        new_page.attr("href").await.expect("an href").as_deref(),
        Some("/")
    );
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn html_in_a_page_shows_as_text_and_never_runs() {
    let mut world = World::start().await;
    let a = world.browser().await;
    let payload = "<img src=x onerror=\"window.__pwned='img'\">\n\
                   <script>window.__pwned='script'</script>\n\
                   <b>bold?</b>";
    let shared = a.share(payload).await;
    assert_eq!(shared.content, payload);

    let b = world.browser().await;
    let hash = PageHash::of(payload.as_bytes());
    b.open(&format!("/{hash}")).await;
    let seen = b
        .wait_for("B to get the page", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    // Give an injected <img> time to fail loading and fire onerror.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (who, browser) in [("A", &a), ("B", &b)] {
        let now = browser.snapshot().await.expect("a snapshot");
        assert_eq!(now.content, payload, "{who} shows the markup as text");
        assert_eq!(now.content_children, 0, "{who} made no elements from it");
        assert!(
            now.pwned.is_null(),
            "{who} ran the payload: {:?}",
            now.pwned
        );
    }
    assert_eq!(seen.content, payload);
    a.close().await;
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn an_emoji_page_round_trips_and_its_address_is_sha256_of_utf8() {
    let mut world = World::start().await;
    let a = world.browser().await;
    let text = "👋🏽 héllo, e\u{301}, 日本語, 🏳️‍🌈 — ✓";
    let shared = a.share(text).await;
    let sha256: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(shared.path, format!("/{sha256}"), "the URL is sha256sum");

    let b = world.browser().await;
    b.open(&shared.path).await;
    let seen = b
        .wait_for("B to get the emoji page", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, text);
    assert_eq!(seen.transport.as_deref(), Some("webrtc"));
    a.close().await;
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn hosting_survives_a_server_restart() {
    let mut world = World::start().await;
    let a = world.browser().await;
    let text = "still here after the server came back";
    a.share(text).await;

    world.stop_server().await;
    let down = a
        .wait_for("A to notice the server is gone", |s| {
            s.connection.as_deref() == Some("reconnecting")
        })
        .await;
    assert!(down.status.contains("Reconnecting"), "{down:#?}");
    assert_eq!(down.content, text, "the page stays on screen");

    world.restart_server().await;
    a.wait_for("A to rejoin as a host", |s| {
        s.connection.as_deref() == Some("online")
            && s.state.as_deref() == Some("hosting")
            && hosts(s, 1)
    })
    .await;

    let b = world.browser().await;
    b.open(&format!("/{}", PageHash::of(text.as_bytes()))).await;
    let seen = b
        .wait_for("B to get the page from A after the restart", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.content, text);
    a.close().await;
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn a_large_page_streams_over_webrtc_with_progress() {
    let mut world = World::start().await;
    let a = world.browser().await;
    // Near the 1 MiB limit: many 64 KiB chunks, so the sender's
    // back-pressure and the receiver's reassembly both run.
    let text: String = (0..24_000)
        .map(|i| format!("line {i:05}: the quick brown fox ✓\n"))
        .collect();
    assert!(text.len() > 700_000 && text.len() < 1 << 20);
    a.share(&text).await;

    let b = world.browser().await;
    b.open(&format!("/{}", PageHash::of(text.as_bytes()))).await;
    let seen = b
        .wait_for("B to get the large page", |s| {
            s.state.as_deref() == Some("hosting")
        })
        .await;
    assert_eq!(seen.transport.as_deref(), Some("webrtc"), "{seen:#?}");
    assert!(!seen.progress_shown, "the progress bar is gone once done");
    assert_eq!(seen.content_length, text.chars().count());
    assert!(b.content().await == text, "B shows every byte of the page");
    a.close().await;
    b.close().await;
    world.finish().await;
}

#[tokio::test]
async fn malformed_addresses_get_a_page_saying_what_an_address_looks_like() {
    let mut world = World::start().await;
    let b = world.browser().await;
    let hash = PageHash::of(b"any page");
    let upper = format!("/{}", hash.to_string().to_uppercase());
    for path in ["/foo", "/abc123", upper.as_str()] {
        // The server answers 404, with the app that explains it.
        let addr = world
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("the server's address");
        let (status, body) = ephemeral_tests::http::get(addr, path)
            .await
            .expect("an HTTP answer");
        assert_eq!(status, 404, "{path}");
        assert!(
            body.contains("id=\"bad-address\""),
            "{path}: the app's page"
        );

        b.open(path).await;
        let seen = b
            .wait_for("the malformed-address page", |s| {
                s.state.as_deref() == Some("bad-address")
            })
            .await;
        assert!(!seen.content_visible, "{seen:#?}");
        let shown = b
            .eval(
                r#"return {
                     visible: !document.getElementById("bad-address").hidden,
                     path: document.getElementById("bad-path").textContent,
                     meant: document.getElementById("meant").hidden
                       ? null : document.getElementById("meant-link").getAttribute("href"),
                   };"#,
            )
            .await;
        assert_eq!(shown["visible"], true, "{path}");
        assert_eq!(shown["path"], path);
        if path == upper {
            assert_eq!(shown["meant"], format!("/{hash}"), "the lowercase address");
            b.screenshot("bad-address.png").await;
        } else {
            assert!(shown["meant"].is_null(), "{path}: {shown}");
        }
    }
    b.close().await;
    world.finish().await;
}
