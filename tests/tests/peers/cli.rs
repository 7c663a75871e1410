//! The `ephemeral-peer` binary end to end: share, get, the links it prints
//! and takes back, the words of its errors, and the exit codes scripts rely
//! on, size refusals (exit 5) among them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ephemeral_shared::PageHash;

use ephemeral_tests::binaries::{cargo_build, test_profile_dir};

use crate::harness::*;

/// Builds the binary once per test run and returns its path.
fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(&[
                "-p",
                "ephemeral-tests",
                "--test",
                "peers",
                "-p",
                "ephemeral-peer",
                "--bin",
                "ephemeral-peer",
            ])
            .expect("building ephemeral-peer");
            test_profile_dir()
                .expect("the target profile directory")
                .join("ephemeral-peer")
        })
        .clone()
}

/// The binary on loopback, with no server named by flag or environment.
fn bare_command() -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--bind", "127.0.0.1"])
        .env_remove("EPHEMERAL_SERVER")
        .stdin(Stdio::null());
    command
}

fn peer_command(server: &str) -> Command {
    let mut command = bare_command();
    command.args(["--server", server]);
    command
}

/// A loopback address nobody listens on: bound, noted, freed.
fn dead_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port")
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

    let dead = format!("ws://{}/ws/websocket?vsn=2.0.0", dead_address());
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

/// A `share` process that is hosting: its page URL, and its stderr lines
/// as they come.
struct Sharing {
    child: KillOnDrop,
    url: String,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Sharing {
    /// Runs `ephemeral-peer [args] share <file>` until it prints its URL.
    async fn start(server: &str, args: &[&str], file: &Path) -> Sharing {
        let mut share = peer_command(server);
        share
            .args(args)
            .arg("share")
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(share.spawn().expect("share starts"));
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");
        let (lines, stderr_rx) = tokio::sync::mpsc::unbounded_channel();
        // Ends when the process does and its pipe closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let url = within(
            "share prints the page URL",
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        )
        .await
        .expect("the reader task")
        .expect("a line");
        assert!(!url.trim().is_empty(), "share exited without a URL");
        Sharing {
            child,
            url: url.trim().to_string(),
            stderr: stderr_rx,
        }
    }

    /// Stderr lines up to and including the first that contains `text`.
    async fn stderr_until(&mut self, text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        within(&format!("share says {text:?}"), async {
            while let Some(line) = self.stderr.recv().await {
                let done = line.contains(text);
                seen.push(line);
                if done {
                    return;
                }
            }
            panic!("share's stderr ended before {text:?}: {seen:?}");
        })
        .await;
        seen
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

/// A text file of `len` bytes in a directory of its own, removed on drop.
struct PageFile {
    dir: PathBuf,
    path: PathBuf,
    page: Vec<u8>,
}

impl PageFile {
    fn new(name: &str, len: usize) -> PageFile {
        let dir = std::env::temp_dir().join(format!("ephemeral-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("page.txt");
        let page = text_page(len, len as u32);
        std::fs::write(&path, &page).expect("write the page");
        PageFile { dir, path, page }
    }
}

impl Drop for PageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a size refusal may take, start of the process to its exit. The
/// exit code shows which path was taken; this bound shows no timeout was
/// waited out (the RTC and relay timeouts are 5 s each, and before size
/// refusals were typed a relay-only visitor gave up after 60 s).
const PROMPT: Duration = Duration::from_secs(10);

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_refuses_a_page_over_its_own_limit_with_exit_5() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let server = start_server(server_config()).await;
    let file = PageFile::new("share-over-limit", 3_000_000);

    let mut share = peer_command(&server.websocket_url());
    share.arg("share").arg(&file.path);
    let output = run(share).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(5), "page too large: {stderr}");
    assert!(
        stderr.contains("the page is 2.9 MiB; this peer accepts pages up to 1.0 MiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pass --max-page-bytes 3000000 (or more) to share it"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no URL for a page not hosted");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_share_refuses_a_page_over_the_relay_limit_with_exit_5() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let server = start_server(signal_server::Config {
        max_page_bytes: 64 * 1024,
        ..server_config()
    })
    .await;
    let file = PageFile::new("share-relay-only", 100_000);

    let mut share = peer_command(&server.websocket_url());
    share.arg("--relay-only").arg("share").arg(&file.path);
    let output = run(share).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(5), "page too large: {stderr}");
    assert!(
        stderr.contains("the page is 97.7 KiB; the server relays pages up to 64.0 KiB"),
        "{stderr}"
    );
    assert!(stderr.contains("drop --relay-only"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no URL for a page nobody could get"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_with_a_smaller_limit_exits_5_promptly_and_the_host_stays() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    // The server relays up to its default 1 MiB: this page is past that.
    let server = start_server(server_config()).await;
    let url = server.websocket_url();
    let file = PageFile::new("get-over-limit", 1_500_000);

    let mut sharing = Sharing::start(&url, &["--max-page-bytes", "2000000"], &file.path).await;
    let said = sharing.stderr_until("hosting").await;
    let notes = said.iter().filter(|l| l.contains("WebRTC only")).count();
    assert_eq!(notes, 1, "said once that relay cannot serve it: {said:?}");

    let started = Instant::now();
    let mut get = peer_command(&url);
    get.args(["get", &sharing.url]);
    let output = run(get).await;
    let took = started.elapsed();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(5), "page too large: {stderr}");
    assert!(
        stderr.contains("the page is 1.4 MiB; this peer accepts pages up to 1.0 MiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pass --max-page-bytes 1500000 (or more) to get it"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    assert!(took < PROMPT, "the refusal took {took:?}");

    // The page is not gone: with a large enough limit it arrives.
    let mut get = peer_command(&url);
    get.args(["--max-page-bytes", "2000000", "get", &sharing.url]);
    let output = run(get).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(output.stdout == file.page, "the bytes are the page");
    assert!(sharing.still_running());
    server.shutdown().await;
}

/// Waits on the server's `content_unavailable` (forwarded only to the
/// visitor that asked for relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_visitor_of_a_page_over_the_relay_limit_exits_5_within_seconds() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let server = start_server(signal_server::Config {
        max_page_bytes: 64 * 1024,
        ..server_config()
    })
    .await;
    let url = server.websocket_url();
    let file = PageFile::new("get-over-relay", 100_000);

    let mut sharing = Sharing::start(&url, &[], &file.path).await;
    let said = sharing.stderr_until("hosting").await;
    assert!(
        said.iter().any(|l| l.contains("served over WebRTC only")),
        "{said:?}"
    );

    let started = Instant::now();
    let mut get = peer_command(&url);
    get.args(["--relay-only", "get", &sharing.url]);
    let output = run(get).await;
    let took = started.elapsed();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(5), "page too large: {stderr}");
    assert!(
        stderr.contains(
            "the page is 97.7 KiB; this peer does not use WebRTC and the server relays pages up to 64.0 KiB"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("drop --relay-only"), "{stderr}");
    assert!(took < PROMPT, "the refusal took {took:?}");
    assert!(sharing.still_running(), "the host was not thrown off");
    server.shutdown().await;
}

/// What a new user does: name the server as the browser shows it, then
/// hand the printed link to `get` with nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_link_is_all_get_needs() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let server = start_server(server_config()).await;
    let http = format!("http://{}", server.local_addr());
    let file = PageFile::new("printed-link", 2_000);
    let hash = PageHash::of(&file.page);

    let sharing = Sharing::start(&http, &[], &file.path).await;
    assert_eq!(sharing.url, format!("{http}/{hash}"));

    let mut get = bare_command();
    get.args(["get", &sharing.url]);
    let output = run(get).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(output.stdout == file.page, "the bytes are the page");

    // The link names its server: an environment pointing elsewhere, and
    // the link as pasted with a slash and a newline, do not change that.
    let dead = format!("http://{}", dead_address());
    let mut get = bare_command();
    get.env("EPHEMERAL_SERVER", &dead)
        .args(["get", &format!("{}/\n", sharing.url)]);
    let output = run(get).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(output.stdout == file.page, "the bytes are the page");

    // A typed --server naming another server is refused, not ignored.
    let mut get = peer_command(&dead);
    get.args(["get", &sharing.url]);
    let output = run(get).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: the link is on {http}, but --server names {dead} — drop --server"
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    server.shutdown().await;
}

fn assert_said_once(stderr: &str, word: &str) {
    let times = stderr.to_lowercase().matches(word).count();
    assert_eq!(times, 1, "{word:?} said {times} times: {stderr}");
}

/// One cause, said once: no "IO error: … IO error: …" chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_once_with_its_cause() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let dead = format!("http://{}", dead_address());
    let hash = PageHash::of(b"nobody serves this").to_string();

    let mut get = peer_command(&dead);
    get.args(["get", &hash]);
    let output = run(get).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "unreachable: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot reach the server at {dead}: connection refused \
             — is the server running? (--server named it)"
        )
    );
    assert_said_once(&stderr, "refused");

    let mut get = bare_command();
    get.args(["get", &format!("{dead}/{hash}")]);
    let output = run(get).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "unreachable: {stderr}");
    assert_said_once(&stderr, "refused");
    assert!(
        stderr.contains(&format!(
            "cannot reach the server at {dead}: connection refused"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("(the link named it;"), "{stderr}");

    let file = PageFile::new("share-unreachable", 10);
    let mut share = bare_command();
    share
        .env("EPHEMERAL_SERVER", &dead)
        .arg("share")
        .arg(&file.path);
    let output = run(share).await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "unreachable: {stderr}");
    assert_said_once(&stderr, "refused");
    assert!(stderr.contains("(EPHEMERAL_SERVER named it)"), "{stderr}");
    assert!(output.stdout.is_empty(), "no link for a page not hosted");
}

/// Refused before any connection, in words, with exit 1: a bad argument
/// is not an unreachable server (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_links_and_servers_are_refused_in_words() {
    init_logs();
    tokio::task::spawn_blocking(binary).await.expect("build");
    let hash = PageHash::of(b"x").to_string();
    let cases = [
        (
            vec!["get", "http://127.0.0.1:4000/abc"],
            "error: \"http://127.0.0.1:4000/abc\" is neither a page link nor a page hash: \
             a page hash has 64 hex digits, this has 3 characters — a page link looks like \
             http://127.0.0.1:4000/<hash>, <hash> being 64 lowercase hex digits (0-9, a-f)",
        ),
        (
            vec!["get", "http://127.0.0.1:4000/"],
            "the link ends at its server, with no /<hash> after it",
        ),
        (
            vec!["get", "ftp://127.0.0.1/x"],
            "a page link starts with http:// or https://, not ftp://",
        ),
        (
            vec!["--server", "ftp://127.0.0.1", "get", &hash],
            "error: --server \"ftp://127.0.0.1\" is not a server address: ftp:// is not \
             a scheme the server speaks",
        ),
        (
            vec!["--server", "http://::1:4000", "get", &hash],
            "an IPv6 address goes in brackets, as in http://[::1]:4000",
        ),
        (
            vec!["--max-page-bytes", "lots", "get", &hash],
            "invalid value 'lots'",
        ),
    ];
    let upper = format!("http://127.0.0.1:4000/{}", hash.to_uppercase());
    let cases = cases.into_iter().chain([(
        vec!["get", upper.as_str()],
        "a page hash is lowercase hex (0-9, a-f)",
    )]);
    for (args, said) in cases {
        let mut command = bare_command();
        command.args(&args);
        let output = run(command).await;
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stderr.contains("cannot reach"), "{args:?}: {stderr}");
    }
}
