//! Rich pages: Markdown and HTML rendered in the sandboxed frame, the
//! format carried in the link's fragment, images as `data:` URLs, and
//! everything a hostile page might try doing nothing at all.

use std::sync::Arc;
use std::time::Duration;

use ephemeral_shared::PageHash;
use ephemeral_tests::chromium;
use serde_json::Value;

use crate::harness::*;

/// A 1×1 PNG, as a paste from the clipboard would bring it.
const DOT_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

#[tokio::test]
async fn a_markdown_page_renders_in_a_sandboxed_frame_and_its_link_keeps_the_format() {
    let mut world = World::start().await;
    let a = world.browser().await;
    a.open("/").await;
    a.wait_for("the home page", |s| s.state.as_deref() == Some("home"))
        .await;
    let markdown =
        "# Hello **Markdown**\n\n- one\n- two\n\nSee [the example](https://example.com/).\n\n";
    a.write(markdown, "markdown").await;
    // Paste an image: it goes in as a data: URL, at the cursor.
    a.eval(&format!(
        r#"const bytes = Uint8Array.from(atob("{DOT_PNG_BASE64}"), (c) => c.charCodeAt(0));
           const data = new DataTransfer();
           data.items.add(new File([bytes], "dot.png", {{ type: "image/png" }}));
           const editor = document.getElementById("editor");
           editor.setSelectionRange(editor.value.length, editor.value.length);
           editor.dispatchEvent(new ClipboardEvent("paste", {{ clipboardData: data, bubbles: true, cancelable: true }}));"#
    ))
    .await;
    let text = wait_value(
        &a,
        "the pasted image in the editor",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("![dot.png](data:image/png;base64,"))
        },
        "return document.getElementById('editor').value;",
    )
    .await;
    let text = text.as_str().expect("text").to_string();
    let size = a
        .eval("return document.getElementById('size').textContent;")
        .await;
    assert!(
        size.as_str().is_some_and(|s| s.ends_with("of 16.0 MiB")),
        "a live size with units: {size}"
    );

    // Preview shows it rendered, before sharing.
    a.click("preview-tab").await;
    let heading = wait_frame(
        &a,
        "preview-frame",
        "return doc && doc.querySelector('h1')?.textContent;",
    )
    .await;
    assert_eq!(heading, "Hello Markdown");
    a.click("write-tab").await;

    a.click("share").await;
    let shared = a
        .wait_for("A to host the page", |s| {
            s.state.as_deref() == Some("hosting") && hosts(s, 1)
        })
        .await;
    let hash = PageHash::of(text.as_bytes());
    assert_eq!(
        shared.path,
        format!("/{hash}"),
        "the address is the bytes' hash"
    );
    let link = a
        .eval("return document.getElementById('link').value;")
        .await;
    assert_eq!(
        link,
        format!("{}/{hash}#markdown", world.base),
        "the link carries the format in its fragment"
    );

    let b = world.browser().await;
    b.open(&format!("/{hash}#markdown")).await;
    let seen = b
        .wait_for("B to get the Markdown page", |s| {
            s.state.as_deref() == Some("hosting") && s.frame_visible
        })
        .await;
    assert_eq!(seen.format.as_deref(), Some("markdown"));
    assert!(
        !seen.content_visible,
        "rendered, not shown as text: {seen:#?}"
    );
    let rendered = wait_frame(
        &b,
        "frame",
        r#"if (!doc || !doc.querySelector("h1")) return null;
           const a = doc.querySelector("a");
           const img = doc.querySelector("img");
           const frame = document.getElementById("frame");
           return {
             h1: doc.querySelector("h1").textContent,
             strong: doc.querySelectorAll("h1 strong").length,
             items: doc.querySelectorAll("li").length,
             href: a.getAttribute("href"),
             target: a.getAttribute("target"),
             rel: a.getAttribute("rel"),
             referrer: a.getAttribute("referrerpolicy"),
             image: img ? img.complete && img.naturalWidth : null,
             font: getComputedStyle(doc.body).fontFamily,
             sandbox: frame.getAttribute("sandbox"),
             height: frame.getBoundingClientRect().height,
             content: doc.documentElement.scrollHeight,
           };"#,
    )
    .await;
    assert_eq!(rendered["h1"], "Hello Markdown", "{rendered}");
    assert_eq!(rendered["strong"], 1, "inline Markdown inside the heading");
    assert_eq!(rendered["items"], 2);
    assert_eq!(rendered["href"], "https://example.com/");
    assert_eq!(rendered["target"], "_blank", "links open in a new tab");
    assert_eq!(rendered["rel"], "noopener noreferrer");
    assert_eq!(rendered["referrer"], "no-referrer");
    assert_eq!(rendered["image"], 1, "the pasted data: image shows");
    assert!(
        rendered["font"]
            .as_str()
            .is_some_and(|f| f.contains("system-ui")),
        "the frame's own styles apply under both policies: {rendered}"
    );
    let sandbox = rendered["sandbox"].as_str().unwrap_or_default();
    assert!(!sandbox.contains("allow-scripts"), "{sandbox}");
    assert!(!sandbox.contains("allow-forms") && !sandbox.contains("allow-top-navigation"));
    let (height, content) = (
        rendered["height"].as_f64().unwrap_or(0.0),
        rendered["content"].as_f64().unwrap_or(0.0),
    );
    assert!(
        content > 100.0 && (height - content).abs() <= 4.0,
        "the frame is sized to its content: {rendered}"
    );
    b.wait_for("the title from the heading", |s| {
        s.title == "Hello Markdown · Ephemeral"
    })
    .await;
    b.screenshot("markdown.png").await;
    b.client
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    b.screenshot("markdown-phone.png").await;
    b.client
        .set_window_size(1100, 900)
        .await
        .expect("back to desktop");

    // View source: the Markdown as written, as text.
    b.click("view-source").await;
    let source = b
        .wait_for("the source view", |s| s.content_visible && !s.frame_visible)
        .await;
    assert_eq!(source.content, text);
    assert_eq!(source.content_children, 0, "source is plain text");
    b.click("view-source").await;
    b.wait_for("the rendered view again", |s| {
        s.frame_visible && !s.content_visible
    })
    .await;

    // A bare address shows the same bytes as Text, with clickable links.
    let c = world.browser().await;
    c.open(&format!("/{hash}")).await;
    let plain = c
        .wait_for("C to get the page as text", |s| {
            s.state.as_deref() == Some("hosting") && s.content_visible
        })
        .await;
    assert_eq!(plain.format.as_deref(), Some("text"));
    assert_eq!(plain.content, text);
    let link = c
        .eval(
            r#"const a = document.querySelector('#content a[href="https://example.com/"]');
               return a && [a.target, a.rel, a.textContent];"#,
        )
        .await;
    assert_eq!(
        link,
        serde_json::json!(["_blank", "noopener noreferrer", "https://example.com/"]),
        "a link in a Text page is clickable"
    );
    for browser in [a, b, c] {
        browser.close().await;
    }
    world.finish().await;
}

#[tokio::test]
async fn an_html_page_runs_nothing_submits_nothing_and_loads_nothing() {
    let mut world = World::start().await;
    // Each thing the page tries to load points at its own listener, where
    // not even a connection may arrive. The form's action and the link
    // point at `target`, where no request may arrive (a bare connection
    // there would be Chromium preconnecting to a link's host).
    let names = [
        "script",
        "image",
        "background",
        "style",
        "prefetch",
        "frame",
        "refresh",
        "object",
        "embed",
        "preconnect",
        "dns",
    ];
    let mut spies = Vec::new();
    for name in names {
        spies.push((name, spy_listener().await));
    }
    let url = |name: &str| {
        let (_, (url, _, _)) = spies.iter().find(|(n, _)| *n == name).expect("a spy");
        url.clone()
    };
    let (target, targeted, targeting) = spy_listener().await;
    let html = format!(
        r#"<h1>An <em>HTML</em> page</h1>
<p id="p">static</p>
<script>window.top.__pwned = "script"; document.getElementById("p").textContent = "ran"; window.top.location = "{script}/top";</script>
<img id="remote" src="{image}/image.png" onerror="window.top.__pwned = 'onerror'">
<img id="broken" src="x" onerror="parent.__pwned = 'onerror'">
<svg onload="parent.__pwned = 'svg'"></svg>
<div style="width:10px;height:10px;background:url({background}/background.png)"></div>
<link rel="stylesheet" href="{style}/style.css">
<link rel="prefetch" href="{prefetch}/prefetch">
<iframe src="{frame}/frame"></iframe>
<meta http-equiv="refresh" content="0;url={refresh}/refresh">
<object data="{object}/object"></object>
<embed src="{embed}/embed">
<link rel="preconnect" href="{preconnect}">
<link rel="dns-prefetch" href="{dns}">
<form id="form" action="{target}/submit" method="post" target="_top"><input name="q" value="x"><button id="submit">Send</button></form>
<a id="top" href="{target}/link" target="_top">a link</a>"#,
        script = url("script"),
        image = url("image"),
        background = url("background"),
        style = url("style"),
        prefetch = url("prefetch"),
        frame = url("frame"),
        refresh = url("refresh"),
        object = url("object"),
        embed = url("embed"),
        preconnect = url("preconnect"),
        dns = url("dns"),
    );
    let a = world.browser().await;
    a.share_as(&html, "html").await;
    let hash = PageHash::of(html.as_bytes());

    let b = world.browser().await;
    b.open(&format!("/{hash}#html")).await;
    b.wait_for("B to get the HTML page", |s| {
        s.state.as_deref() == Some("hosting") && s.frame_visible
    })
    .await;
    wait_frame(
        &b,
        "frame",
        "return doc && doc.getElementById('submit') ? true : null;",
    )
    .await;
    // A real click on the form's button, inside the frame.
    b.client
        .find(fantoccini::Locator::Id("frame"))
        .await
        .expect("the frame")
        .enter_frame()
        .await
        .expect("into the frame");
    b.client
        .find(fantoccini::Locator::Id("submit"))
        .await
        .expect("the form's button")
        .click()
        .await
        .expect("the button clicks");
    b.client.enter_parent_frame().await.expect("back out");
    // Time for anything that would run, load or submit to do so.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for (who, browser) in [("A", &a), ("B", &b)] {
        let now = browser.snapshot().await.expect("a snapshot");
        assert!(
            now.pwned.is_null(),
            "{who} ran the page's script: {:?}",
            now.pwned
        );
        assert_eq!(now.path, format!("/{hash}"), "{who} was not navigated");
        let inside = browser
            .in_frame(
                "frame",
                r#"return {
                     p: doc.getElementById("p").textContent,
                     remote: doc.getElementById("remote").naturalWidth,
                     link_target: doc.getElementById("top").getAttribute("target"),
                     link_rel: doc.getElementById("top").getAttribute("rel"),
                   };"#,
            )
            .await;
        assert_eq!(inside["p"], "static", "{who}: no script ran in the frame");
        assert_eq!(inside["remote"], 0, "{who}: the remote image did not load");
        assert_eq!(inside["link_target"], "_blank", "{who}: {inside}");
        assert_eq!(inside["link_rel"], "noopener noreferrer");
    }
    let reached: Vec<(&str, Vec<String>)> = spies
        .iter()
        .map(|(name, (_, log, _))| (*name, log.lock().expect("the log").clone()))
        .filter(|(_, log)| !log.is_empty())
        .collect();
    assert!(
        reached.is_empty(),
        "nothing in the page reached the network, but: {reached:?}"
    );
    let targeted = targeted.lock().expect("the log").clone();
    assert!(
        targeted.iter().all(String::is_empty),
        "the form did not submit and the link was not followed: {targeted:?}"
    );
    let seen = b
        .wait_for("the title from the page's heading", |s| {
            s.title == "An HTML page · Ephemeral"
        })
        .await;
    assert!(!seen.title.contains('<'), "never markup in the title");
    b.screenshot("html.png").await;
    for (_, (_, _, task)) in spies {
        task.abort();
    }
    targeting.abort();
    a.close().await;
    b.close().await;
    world.finish().await;
}

/// What reached a loopback listener: each connection's first line, or ""
/// for a connection that sent nothing (a preconnect, which already tells
/// the listener the reader's IP).
type Log = Arc<std::sync::Mutex<Vec<String>>>;

/// A loopback listener that logs what reaches it: its URL, the log, and
/// the task to abort.
async fn spy_listener() -> (String, Log, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback listener");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let log: Log = Arc::default();
    let logged = log.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let log = logged.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut head = vec![0u8; 256];
                let read =
                    tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut head)).await;
                let n = read.ok().and_then(Result::ok).unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                log.lock().expect("the log").push(line);
            });
        }
    });
    (url, log, task)
}

/// Polls `script` in `browser` until its value is `ready`.
async fn wait_value(
    browser: &Browser,
    what: &str,
    ready: impl Fn(&Value) -> bool,
    script: &str,
) -> Value {
    chromium::poll_page(
        what,
        WAIT,
        || async { Some(browser.eval(script).await) },
        ready,
    )
    .await
}

/// Polls `script` in the frame `frame` (its document is `doc`) until it
/// returns something other than `null`.
async fn wait_frame(browser: &Browser, frame: &str, script: &str) -> Value {
    let what = format!("#{frame} to show what {script} looks for");
    let read = || async { Some(browser.in_frame(frame, script).await) };
    chromium::poll_page(&what, WAIT, read, |value: &Value| !value.is_null()).await
}
