//! The `ephemeral-peer` binary end to end: share, get, and the exit codes
//! scripts rely on.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use ephemeral_shared::PageHash;

use crate::harness::*;

/// Builds the binary once per test run (it is another package's target, so
/// cargo does not build it for this one) and returns its path. This test
/// target is named in the same build so that features unify exactly as in
/// `cargo test`: otherwise cargo rebuilds webrtc-rs each time (~30 s).
fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            // `cargo test` gives the test process CARGO_* variables of its
            // own package; passed on, they change fingerprints and force a
            // rebuild of everything in the next `cargo test`.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy().into_owned();
                if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                    cargo.env_remove(key);
                }
            }
            let status = cargo
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "ephemeral-tests",
                    "--test",
                    "peers",
                    "-p",
                    "ephemeral-peer",
                    "--bin",
                    "ephemeral-peer",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building ephemeral-peer");
            // The test binary lives in <target>/<profile>/deps/.
            let exe = std::env::current_exe().expect("the test's own path");
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("the target profile directory");
            profile_dir.join("ephemeral-peer")
        })
        .clone()
}

fn peer_command(server: &str) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--server", server, "--bind", "127.0.0.1"])
        .env_remove("EPHEMERAL_SERVER")
        .stdin(Stdio::null());
    command
}

/// Kills a child process when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(mut command: Command) -> std::process::Output {
    within(
        "the ephemeral-peer process",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the blocking task")
    .expect("the process runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_then_get_through_the_binary() {
    init_logs();
    let binary = tokio::task::spawn_blocking(binary).await.expect("build");
    assert!(binary.exists());
    let server = start_server(server_config()).await;
    let url = server.websocket_url();
    let dir = std::env::temp_dir().join(format!("ephemeral-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let page = "<p>from the command line ✓</p>\n".as_bytes().to_vec();
    let input = dir.join("page.html");
    std::fs::write(&input, &page).expect("write the page");

    let mut share = peer_command(&url);
    share
        .arg("share")
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sharer = KillOnDrop(share.spawn().expect("share starts"));
    let stdout = sharer.0.stdout.take().expect("piped stdout");
    let first_line = within(
        "share prints the page URL",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("the reader task")
    .expect("a line");
    let hash = PageHash::of(&page);
    assert_eq!(
        first_line.trim(),
        format!("http://{}/{hash}", server.local_addr())
    );

    let output_file = dir.join("got.html");
    let mut get = peer_command(&url);
    get.args(["get", first_line.trim(), "-o"]).arg(&output_file);
    let output = run(get).await;
    assert!(
        output.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&output_file).expect("the output file"), page);
    assert!(String::from_utf8_lossy(&output.stderr).contains("via webrtc"));

    // Stdout is the default; a bare hash works as well as a URL.
    let mut get = peer_command(&url);
    get.args(["get", &hash.to_string()]);
    let output = run(get).await;
    assert!(output.status.success());
    assert_eq!(output.stdout, page);

    let _ = std::fs::remove_dir_all(&dir);
    drop(sharer);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_gone_unreachable_and_not_text() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let server = start_server(server_config()).await;
    let url = server.websocket_url();

    let mut get = peer_command(&url);
    get.args(["get", &PageHash::of(b"nobody has this").to_string()]);
    let output = run(get).await;
    assert_eq!(output.status.code(), Some(3), "gone");
    assert!(String::from_utf8_lossy(&output.stderr).contains("gone"));

    // A port nobody listens on: bind one, note it, free it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead = format!(
        "ws://{}/ws/websocket?vsn=2.0.0",
        free.local_addr().expect("its address")
    );
    drop(free);
    let mut get = peer_command(&dead);
    get.args(["get", &PageHash::of(b"x").to_string()]);
    let output = run(get).await;
    assert_eq!(output.status.code(), Some(2), "unreachable");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the server"));

    let file = std::env::temp_dir().join(format!("ephemeral-binary-{}.bin", std::process::id()));
    std::fs::write(&file, [0xff, 0xfe, 0x00, 0x80]).expect("write");
    let mut share = peer_command(&url);
    share.arg("share").arg(&file);
    let output = run(share).await;
    let _ = std::fs::remove_file(&file);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not UTF-8"));

    let mut get = peer_command(&url);
    get.args(["get", "not-a-page"]);
    let output = run(get).await;
    assert_eq!(output.status.code(), Some(1));
    server.shutdown().await;
}
