//! `ephemeral-peer`: share a page from a terminal, or get one.
//!
//! ```text
//! ephemeral-peer share page.html          # prints the URL, hosts until Ctrl-C
//! ephemeral-peer get http://host/<hash>   # writes the page to stdout
//! ```
//!
//! Exit codes say what went wrong, so scripts can tell: see [`Exit`] (and
//! `--help`, which lists them as [`EXIT_CODES`]).

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
use ephemeral_shared::size::{Bytes, compared};
use tokio::sync::watch;

/// Pages shown with a progress line on stderr: smaller ones arrive before a
/// person could read it.
const PROGRESS_FROM_BYTES: usize = 256 * 1024;

/// The exit codes, for `--help`; [`Exit`] is their source.
const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  anything else: bad arguments, I/O, a refused request
  2  the server could not be reached
  3  gone: nobody hosts the page
  4  every host sent bytes that do not match the page's address
  5  page too large: over --max-page-bytes, or over the server's relay
     limit when WebRTC is off or failed";

#[derive(Debug, Parser)]
#[command(
    name = "ephemeral-peer",
    version,
    about = "Share and get Ephemeral pages, peer to peer",
    after_help = EXIT_CODES
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
    /// Largest page this peer gets or shares, in bytes.
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
    /// The page is larger than this peer accepts, or than the server
    /// relays when WebRTC is off or failed.
    TooLarge = 5,
}

/// Why `share` will not host a page.
#[derive(Debug, thiserror::Error)]
enum ShareRefused {
    /// Worded as a visitor's refusal is: the same limit, the same words.
    #[error("{}", FetchFailure::PageTooLarge { size: *size, max: *max })]
    OverOwnLimit { size: u64, max: u64 },
    #[error("{}", over_relay_limit(*size, *max_relay))]
    RelayOnlyOverRelayLimit { size: u64, max_relay: u64 },
}

fn over_relay_limit(size: u64, max_relay: u64) -> String {
    let (size, max_relay) = compared(size, max_relay);
    format!(
        "the page is {size}; the server relays pages up to {max_relay}, \
         and --relay-only rules out WebRTC, so no visitor could get it"
    )
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
            match hint(&error) {
                Some(hint) => eprintln!("error: {error:#} — {hint}"),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::from(exit_code(&error) as u8)
        }
    }
}

fn exit_code(error: &anyhow::Error) -> Exit {
    if let Some(PeerError::Unreachable { .. }) = error.downcast_ref::<PeerError>() {
        return Exit::Unreachable;
    }
    if error.downcast_ref::<ShareRefused>().is_some() {
        return Exit::TooLarge;
    }
    match error.downcast_ref::<FetchError>() {
        Some(FetchError::Gone) => Exit::Gone,
        Some(FetchError::Failed(FetchFailure::WrongBytesFromEveryHost { .. })) => {
            Exit::HashMismatch
        }
        Some(FetchError::Failed(failure)) if failure.is_too_large() => Exit::TooLarge,
        _ => Exit::Error,
    }
}

/// What the person at the terminal can do about `error`, when a flag
/// helps.
fn hint(error: &anyhow::Error) -> Option<String> {
    let raise =
        |size: u64, verb: &str| format!("pass --max-page-bytes {size} (or more) to {verb} it");
    if let Some(refused) = error.downcast_ref::<ShareRefused>() {
        return Some(match refused {
            ShareRefused::OverOwnLimit { size, .. } => raise(*size, "share"),
            ShareRefused::RelayOnlyOverRelayLimit { .. } => {
                "drop --relay-only to serve it over WebRTC".to_string()
            }
        });
    }
    match error.downcast_ref::<FetchError>()? {
        FetchError::Failed(FetchFailure::PageTooLarge { size, .. }) => Some(raise(*size, "get")),
        FetchError::Failed(FetchFailure::TooLargeForRelay { webrtc_tried, .. }) => {
            Some(if *webrtc_tried {
                "a TURN server (--ice-server turn:…) may let WebRTC connect".to_string()
            } else {
                "drop --relay-only to get it over WebRTC".to_string()
            })
        }
        _ => None,
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
    // An hour is far past any useful wait, and keeps deadlines computed
    // from it far from overflowing.
    const MAX_RTC_TIMEOUT_SECS: f64 = 3600.0;
    if !(options.rtc_timeout > 0.0 && options.rtc_timeout <= MAX_RTC_TIMEOUT_SECS) {
        anyhow::bail!("--rtc-timeout must be a number of seconds above 0 and at most 3600");
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
    let max = config.fetch.max_page_bytes;
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
    // A visitor with the same limit would refuse it, so hosting it would
    // only give them a failure.
    if bytes.len() > max {
        return Err(ShareRefused::OverOwnLimit {
            size: bytes.len() as u64,
            max: max as u64,
        }
        .into());
    }
    let size = bytes.len();
    let server = config.server.clone();
    let relay_only = !config.fetch.webrtc;
    let peer = Peer::connect(config).await?;
    let hash = peer.share(bytes).await?;
    // The join reply just told us the server's relay limit.
    let max_relay = peer.status().borrow().max_relay_bytes;
    if relay_only && let Some(max_relay) = max_relay.filter(|max_relay| size > *max_relay) {
        // Relay is this peer's only way to serve, and the server would
        // refuse it: no visitor could get the page from us.
        peer.shutdown().await;
        return Err(ShareRefused::RelayOnlyOverRelayLimit {
            size: size as u64,
            max_relay: max_relay as u64,
        }
        .into());
    }
    println!("{}", page_url(&server, hash));
    let _ = std::io::stdout().flush();
    say_if_webrtc_only(size, max_relay);
    eprintln!("hosting {hash}; Ctrl-C to stop");
    host_until_interrupted(&peer, hash).await?;
    peer.shutdown().await;
    Ok(())
}

/// Says, once, that a page over the server's relay limit reaches only the
/// visitors a direct connection works for.
fn say_if_webrtc_only(size: usize, max_relay: Option<usize>) {
    if let Some(max_relay) = max_relay.filter(|max_relay| size > *max_relay) {
        let (size, max_relay) = compared(size as u64, max_relay as u64);
        eprintln!(
            "note: the page is {size} and the server relays pages up to {max_relay}, so it is \
             served over WebRTC only: visitors who cannot connect directly will not get it"
        );
    }
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
    // `via webrtc (direct)`, `via webrtc (turn)` or `via relay`; plain
    // `via webrtc` when WebRTC's stats did not say which.
    let via = fetched
        .path
        .map_or(fetched.transport.as_str(), |path| path.describe());
    eprintln!(
        "got {} bytes via {via} in {} ms",
        fetched.page.len(),
        fetched.timings.total.as_millis()
    );
    if host {
        let max_relay = peer.status().borrow().max_relay_bytes;
        say_if_webrtc_only(fetched.page.len(), max_relay);
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
        let line = format!(
            "received {} of {} ({percent}%)",
            Bytes(received as u64),
            Bytes(size as u64)
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            if received >= size {
                eprintln!();
            }
        } else if percent % 10 == 0 {
            eprintln!("{line}");
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

        for bad in ["0", "NaN", "inf", "1e30"] {
            let bad = Cli::try_parse_from(["ephemeral-peer", "--rtc-timeout", bad, "get", "x"])
                .expect("parses");
            assert!(peer_config(&bad.options).is_err());
        }
    }

    #[test]
    fn too_large_pages_exit_5_and_say_which_flag_helps() {
        let over_own = anyhow::Error::new(FetchError::Failed(FetchFailure::PageTooLarge {
            size: 3_000_000,
            max: 1 << 20,
        }));
        assert_eq!(exit_code(&over_own) as u8, 5);
        assert_eq!(
            format!("{over_own:#}"),
            "the page is 2.9 MiB; this peer accepts pages up to 1.0 MiB"
        );
        assert_eq!(
            hint(&over_own).as_deref(),
            Some("pass --max-page-bytes 3000000 (or more) to get it")
        );

        let over_relay = anyhow::Error::new(FetchError::Failed(FetchFailure::TooLargeForRelay {
            size: 3_000_000,
            max_relay: Some(1 << 20),
            webrtc_tried: false,
        }));
        assert_eq!(exit_code(&over_relay) as u8, 5);
        assert!(hint(&over_relay).is_some_and(|h| h.contains("--relay-only")));

        let share = anyhow::Error::new(ShareRefused::OverOwnLimit {
            size: 3_000_000,
            max: 1 << 20,
        });
        assert_eq!(exit_code(&share) as u8, 5);
        assert_eq!(format!("{share:#}"), format!("{over_own:#}"), "one wording");
        assert!(hint(&share).is_some_and(|h| h.ends_with("to share it")));

        let gone = anyhow::Error::new(FetchError::Gone);
        assert_eq!(exit_code(&gone) as u8, 3);
        assert_eq!(hint(&gone), None);
    }

    #[test]
    fn help_lists_every_exit_code() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for code in ["0  done", "3  gone", "4  every host", "5  page too large"] {
            assert!(help.contains(code), "{code:?} missing from --help");
        }
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
