//! Compatibility: the official `phoenix` JavaScript client (run by Node,
//! with the `ws` package as its transport) joins, pushes, receives a
//! broadcast and a reply, and heartbeats against the real server.

use std::path::Path;
use std::process::Command;

use ephemeral_shared::PageHash;
use serde_json::{Value, json};
use signal_server::Config;

/// Installs the JS client next to the script unless it is there already.
fn install_js_client(dir: &Path) {
    if dir.join("node_modules/phoenix").is_dir() && dir.join("node_modules/ws").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .status()
        .expect("npm runs (Node.js and npm are needed for this test)");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

#[tokio::test]
async fn official_phoenix_js_client_works_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    install_js_client(&dir);
    let server = signal_server::start(Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        turn_port: 0,
        ..Config::default()
    })
    .await
    .unwrap();
    let page = "Hello from Phoenix.js 👋🏽";
    let hash = PageHash::of(page.as_bytes()).to_string();
    let endpoint = format!("ws://{}/ws", server.local_addr());

    let output = tokio::process::Command::new("node")
        .arg("phoenix_compat.mjs")
        .args([&endpoint, page, &hash])
        .current_dir(&dir)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");

    let host_id = &seen["hostJoin"]["peer_id"];
    let visitor_id = &seen["visitorJoin"]["peer_id"];
    assert_eq!(seen["hostJoin"]["count"], json!(1));
    assert_eq!(seen["visitorJoin"]["count"], json!(1));
    assert_eq!(
        seen["routed"],
        json!({"host": host_id}),
        "the reply names the host"
    );
    assert_eq!(seen["request"], json!({"from": visitor_id, "relay": true}));
    assert_eq!(seen["content"], json!(page), "the broadcast arrived intact");
    assert!(
        seen["heartbeatReplies"].as_u64().unwrap() >= 2,
        "heartbeats answered: {seen}"
    );
}
