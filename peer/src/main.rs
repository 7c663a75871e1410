//! `ephemeral-peer`: share a page from a terminal, or get one.
//!
//! ```text
//! ephemeral-peer share page.html          # prints the URL, hosts until Ctrl-C
//! ephemeral-peer get http://host/<hash>   # writes the page to stdout
//! ```
//!
//! Exit codes say what went wrong, so scripts can tell: see [`Exit`].

use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ephemeral_peer::peer::FetchProgress;
use ephemeral_peer::{FetchError, FetchOptions, PageHash, Peer, PeerConfig, PeerError};
use ephemeral_shared::FetchFailure;
use ephemeral_shared::protocol::IceServer;
use tokio::sync::watch;

/// Pages shown with a progress line on stderr: smaller ones arrive before a
/// person could read it.
const PROGRESS_FROM_BYTES: usize = 256 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "ephemeral-peer",
    version,
    about = "Share and get Ephemeral pages, peer to peer"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Options {
    /// The signaling server's websocket URL.
    #[arg(
        long,
        global = true,
        env = "EPHEMERAL_SERVER",
        default_value = "ws://127.0.0.1:4000/ws/websocket?vsn=2.0.0"
    )]
    server: String,
    /// Never use WebRTC: get and serve pages through the server.
    #[arg(long, global = true)]
    relay_only: bool,
    /// Seconds a host has to open a data channel before falling back to relay.
    #[arg(long, global = true, default_value_t = 5.0)]
    rtc_timeout: f64,
    /// Local IP that ICE binds its UDP socket to (127.0.0.1 for loopback only).
    #[arg(long, global = true, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// STUN/TURN server (repeatable): `stun:host:port` or
    /// `turn:user:pass@host:port`. Added to those the server hands out.
    #[arg(long = "ice-server", global = true)]
    ice_servers: Vec<IceServer>,
    /// Largest page accepted, in bytes.
    #[arg(long, global = true, default_value_t = 1 << 20)]
    max_page_bytes: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Host a page: prints its URL, then serves it until Ctrl-C.
    Share {
        /// The page (UTF-8 text); `-` reads stdin.
        file: String,
    },
    /// Get a page by URL or hash, verify it and write it out.
    Get {
        /// `http://<server>/<hash>` or the 64-hex-digit hash.
        page: String,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Keep hosting the page afterwards, until Ctrl-C.
        #[arg(long)]
        host: bool,
    },
}

/// Process exit codes.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Anything else: bad arguments, I/O, a refused request.
    Error = 1,
    /// The server could not be reached.
    Unreachable = 2,
    /// Nobody hosts the page any more.
    Gone = 3,
    /// Every host sent bytes that do not match the address.
    HashMismatch = 4,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EPHEMERAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code(&error) as u8)
        }
    }
}

fn exit_code(error: &anyhow::Error) -> Exit {
    if let Some(PeerError::Unreachable { .. }) = error.downcast_ref::<PeerError>() {
        return Exit::Unreachable;
    }
    match error.downcast_ref::<FetchError>() {
        Some(FetchError::Gone) => Exit::Gone,
        Some(FetchError::Failed(FetchFailure::WrongBytesFromEveryHost { .. })) => {
            Exit::HashMismatch
        }
        _ => Exit::Error,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = peer_config(&cli.options)?;
    match cli.command {
        Command::Share { file } => share(config, &file).await,
        Command::Get { page, output, host } => get(config, &page, output, host).await,
    }
}

fn peer_config(options: &Options) -> anyhow::Result<PeerConfig> {
    if !(options.rtc_timeout.is_finite() && options.rtc_timeout > 0.0) {
        anyhow::bail!("--rtc-timeout must be a positive number of seconds");
    }
    let mut config = PeerConfig::new(options.server.clone());
    config.rtc.bind = options.bind;
    config.rtc.ice_servers = options.ice_servers.clone();
    config.fetch.webrtc = !options.relay_only;
    config.fetch.rtc_timeout = Duration::from_secs_f64(options.rtc_timeout);
    config.fetch.max_page_bytes = options.max_page_bytes;
    Ok(config)
}

/// The page's URL on the server's web client: same host, over HTTP(S).
fn page_url(server: &str, hash: PageHash) -> String {
    let (scheme, rest) = match server.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", server),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{hash}")
}

/// The hash in `http://host/<hash>`, `<hash>`, or anything ending in it.
fn parse_page(page: &str) -> anyhow::Result<PageHash> {
    let last = page
        .trim()
        .trim_end_matches('/')
        .rsplit(['/', '#', '='])
        .next()
        .unwrap_or_default();
    last.parse::<PageHash>()
        .with_context(|| format!("{page:?} is neither a page URL nor a page hash"))
}

async fn share(config: PeerConfig, file: &str) -> anyhow::Result<()> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the page from stdin")?;
        bytes
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))?
    };
    if let Err(error) = std::str::from_utf8(&bytes) {
        anyhow::bail!(
            "{file} is not UTF-8 text ({error}); Ephemeral pages are text, so convert it first"
        );
    }
    let server = config.server.clone();
    let peer = Peer::connect(config).await?;
    let hash = peer.share(bytes).await?;
    println!("{}", page_url(&server, hash));
    let _ = std::io::stdout().flush();
    eprintln!("hosting {hash}; Ctrl-C to stop");
    host_until_interrupted(&peer, hash).await?;
    peer.shutdown().await;
    Ok(())
}

/// Shows the live host count on stderr until Ctrl-C.
async fn host_until_interrupted(peer: &Peer, hash: PageHash) -> anyhow::Result<()> {
    let mut counts = peer.watch_count(hash).await?;
    let mut status = peer.status();
    let tty = std::io::stderr().is_terminal();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            result = &mut interrupted => {
                result.context("waiting for Ctrl-C")?;
                if tty {
                    eprintln!();
                }
                eprintln!("stopped hosting {hash}");
                return Ok(());
            }
            changed = counts.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let line = match *counts.borrow_and_update() {
                    Some(count) => format!("hosts: {}, waiting: {}", count.count, count.waiting),
                    None => continue,
                };
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let online = status.borrow_and_update().online;
                if !online {
                    eprintln!("\nlost the server; reconnecting…");
                }
            }
        }
    }
}

async fn get(
    config: PeerConfig,
    page: &str,
    output: Option<PathBuf>,
    host: bool,
) -> anyhow::Result<()> {
    let hash = parse_page(page)?;
    let peer = Peer::connect(config).await?;
    let (progress_tx, progress_rx) = watch::channel(FetchProgress {
        phase: ephemeral_shared::Phase::Asking,
        received: 0,
        size: None,
    });
    let reporter = tokio::spawn(report_progress(progress_rx));
    let options = FetchOptions {
        host_after: host,
        progress: Some(progress_tx),
    };
    let result = peer.fetch_with(hash, options).await;
    reporter.abort();
    let fetched = result?;
    tracing::info!(
        transport = fetched.transport.as_str(),
        ms = fetched.timings.total.as_millis() as u64,
        "fetched"
    );
    match &output {
        Some(path) => std::fs::write(path, &fetched.page)
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&fetched.page)
                .context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    eprintln!(
        "got {} bytes via {} in {} ms",
        fetched.page.len(),
        fetched.transport.as_str(),
        fetched.timings.total.as_millis()
    );
    if host {
        eprintln!("hosting {hash}; Ctrl-C to stop");
        host_until_interrupted(&peer, hash).await?;
    }
    peer.shutdown().await;
    Ok(())
}

/// A progress line on stderr while a large page arrives.
async fn report_progress(mut progress: watch::Receiver<FetchProgress>) {
    let tty = std::io::stderr().is_terminal();
    let mut last_percent = None;
    while progress.changed().await.is_ok() {
        let FetchProgress { received, size, .. } = *progress.borrow_and_update();
        let Some(size) = size.filter(|size| *size >= PROGRESS_FROM_BYTES) else {
            continue;
        };
        let percent = received.saturating_mul(100) / size.max(1);
        if last_percent == Some(percent) {
            continue;
        }
        last_percent = Some(percent);
        if tty {
            eprint!("\r\x1b[2Kreceived {received} of {size} bytes ({percent}%)");
            if received >= size {
                eprintln!();
            }
        } else if percent % 10 == 0 {
            eprintln!("received {received} of {size} bytes ({percent}%)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_urls_follow_the_server() {
        let hash = PageHash::of(b"x");
        assert_eq!(
            page_url("ws://127.0.0.1:4000/ws/websocket?vsn=2.0.0", hash),
            format!("http://127.0.0.1:4000/{hash}")
        );
        assert_eq!(
            page_url("wss://pages.example/ws/websocket?vsn=2.0.0", hash),
            format!("https://pages.example/{hash}")
        );
    }

    #[test]
    fn flags_reach_the_peer_config() {
        let cli = Cli::try_parse_from([
            "ephemeral-peer",
            "get",
            "abc",
            "--relay-only",
            "--rtc-timeout",
            "1.5",
            "--bind",
            "127.0.0.1",
            "--ice-server",
            "stun:127.0.0.1:3478",
            "--ice-server",
            "turn:u:p@127.0.0.1:3478",
            "--server",
            "ws://127.0.0.1:9/ws/websocket?vsn=2.0.0",
        ])
        .expect("the flags parse");
        let config = peer_config(&cli.options).expect("a config");
        assert!(!config.fetch.webrtc);
        assert_eq!(config.fetch.rtc_timeout, Duration::from_millis(1500));
        assert_eq!(config.rtc.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.rtc.ice_servers.len(), 2);
        assert_eq!(config.rtc.ice_servers[1].username.as_deref(), Some("u"));
        assert_eq!(config.server, "ws://127.0.0.1:9/ws/websocket?vsn=2.0.0");

        let bad = Cli::try_parse_from(["ephemeral-peer", "--rtc-timeout", "0", "get", "x"])
            .expect("parses");
        assert!(peer_config(&bad.options).is_err());
    }

    #[test]
    fn pages_are_named_by_url_or_hash() {
        let hash = PageHash::of(b"x");
        assert_eq!(parse_page(&hash.to_string()).unwrap(), hash);
        assert_eq!(
            parse_page(&format!("http://127.0.0.1:4000/{hash}")).unwrap(),
            hash
        );
        assert_eq!(
            parse_page(&format!("http://127.0.0.1:4000/#/{hash}/")).unwrap(),
            hash
        );
        assert!(parse_page("http://127.0.0.1:4000/").is_err());
    }
}
