//! `ephemeral-peer`: share a page from a terminal, or get one.
//!
//! ```text
//! ephemeral-peer share page.html --server http://host:4000
//!                                             # prints http://host:4000/<hash>, hosts until Ctrl-C
//! ephemeral-peer get http://host:4000/<hash>  # from the link's server, to stdout
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
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ephemeral_peer::peer::FetchProgress;
use ephemeral_peer::signaling::ConnectError;
use ephemeral_peer::{FetchError, FetchOptions, PageHash, Peer, PeerConfig, PeerError};
use ephemeral_shared::FetchFailure;
use ephemeral_shared::link::{PageError, PageLink, Server, ServerError};
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
    /// The signaling server: `http(s)://host:port`, as in its page links,
    /// or its websocket, `ws(s)://host:port/ws/websocket?vsn=2.0.0`; no
    /// scheme means http. `get` uses a page link's own server, and refuses
    /// a --server flag that names another.
    #[arg(
        long,
        global = true,
        env = "EPHEMERAL_SERVER",
        default_value = "http://127.0.0.1:4000"
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
    /// Host a page: prints its link, then serves it until Ctrl-C.
    Share {
        /// The page (UTF-8 text); `-` reads stdin.
        file: String,
    },
    /// Get a page by link or hash, verify it and write it out.
    Get {
        /// The page's link, `http(s)://host:port/<hash>`, got from the
        /// server it names (whatever EPHEMERAL_SERVER says); or the <hash>
        /// alone, 64 lowercase hex digits, got from --server. A link
        /// together with a --server flag naming another server is refused:
        /// to go through that server, pass the hash alone.
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

/// Who named the server a command talks to: it decides whether a page
/// link may take its place, and what to suggest when it does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    Env,
    Default,
    Link,
}

/// The server a command talks to.
#[derive(Debug, Clone)]
struct Named {
    server: Server,
    by: Origin,
}

/// The server did not answer as one.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the server at {server}: {cause}")]
struct Unreachable {
    server: Server,
    by: Origin,
    cause: ConnectError,
}

/// A page link and `--server` that name different servers: going through
/// either one would ignore something the person typed.
#[derive(Debug, thiserror::Error)]
#[error("the link is on {link}, but --server names {flag}")]
struct ServersDiffer {
    link: Server,
    flag: Server,
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
    let (cli, by) = match parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(error) => {
            let _ = error.print();
            // Clap's own code for bad arguments is 2, which here means the
            // server could not be reached.
            return if error.use_stderr() {
                ExitCode::from(Exit::Error as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
    match runtime.block_on(run(cli, by)) {
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

/// The command line, and who named the server: clap alone cannot say
/// whether `--server` was typed or is the environment's or the default.
fn parse_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(Cli, Origin), clap::Error> {
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|error| error.format(&mut Cli::command()))?;
    let by = match matches.value_source("server") {
        Some(ValueSource::CommandLine) => Origin::Flag,
        Some(ValueSource::EnvVariable) => Origin::Env,
        _ => Origin::Default,
    };
    Ok((cli, by))
}

fn exit_code(error: &anyhow::Error) -> Exit {
    if error.downcast_ref::<Unreachable>().is_some() {
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
    if let Some(unreachable) = error.downcast_ref::<Unreachable>() {
        return Some(unreachable_hint(unreachable));
    }
    if error.downcast_ref::<ServersDiffer>().is_some() {
        return Some(
            "drop --server to use the link's server, or pass the hash alone \
             to get the page through --server's"
                .to_string(),
        );
    }
    if error.downcast_ref::<PageError>().is_some() {
        return Some(
            "a page link looks like http://127.0.0.1:4000/<hash>, <hash> being \
             64 lowercase hex digits (0-9, a-f); the <hash> alone is got from --server"
                .to_string(),
        );
    }
    if error.downcast_ref::<ServerError>().is_some() {
        return Some("a server address looks like http://127.0.0.1:4000".to_string());
    }
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

/// Where the address came from, since that is what to change when it is
/// wrong; first, when nothing answered, whether the server runs at all.
fn unreachable_hint(unreachable: &Unreachable) -> String {
    let whence = match unreachable.by {
        Origin::Flag => "--server named it",
        Origin::Env => "EPHEMERAL_SERVER named it",
        Origin::Default => "the default: name another with --server or EPHEMERAL_SERVER",
        Origin::Link => {
            "the link named it; to go through another server, pass the hash alone with --server"
        }
    };
    match unreachable.cause {
        ConnectError::Io(_) | ConnectError::Timeout(_) => {
            format!("is the server running? ({whence})")
        }
        _ => whence.to_string(),
    }
}

async fn run(cli: Cli, by: Origin) -> anyhow::Result<()> {
    match cli.command {
        Command::Share { file } => {
            let named = server_for(None, &cli.options.server, by)?;
            let config = peer_config(&cli.options, &named.server)?;
            share(config, named, &file).await
        }
        Command::Get { page, output, host } => {
            let link = page
                .parse::<PageLink>()
                .with_context(|| format!("{page:?} is neither a page link nor a page hash"))?;
            let named = server_for(link.server, &cli.options.server, by)?;
            let config = peer_config(&cli.options, &named.server)?;
            get(config, named, link.hash, output, host).await
        }
    }
}

/// The server to talk to: a page link's, unless `--server` was typed and
/// names another; otherwise `--server`'s (flag, environment or default).
/// An address that a link makes irrelevant is not even read.
fn server_for(link: Option<Server>, server: &str, by: Origin) -> anyhow::Result<Named> {
    if let Some(link) = &link
        && by != Origin::Flag
    {
        return Ok(Named {
            server: link.clone(),
            by: Origin::Link,
        });
    }
    let named = server.parse::<Server>().with_context(|| match by {
        Origin::Env => format!("EPHEMERAL_SERVER={server:?} is not a server address"),
        _ => format!("--server {server:?} is not a server address"),
    })?;
    match link {
        None => Ok(Named { server: named, by }),
        Some(link) if link == named => Ok(Named {
            server: link,
            by: Origin::Link,
        }),
        Some(link) => Err(ServersDiffer { link, flag: named }.into()),
    }
}

/// Connects, or says once which server did not answer and why.
async fn connect(config: PeerConfig, named: &Named) -> anyhow::Result<Peer> {
    Peer::connect(config).await.map_err(|error| match error {
        PeerError::Unreachable { cause, .. } => Unreachable {
            server: named.server.clone(),
            by: named.by,
            cause,
        }
        .into(),
        other => other.into(),
    })
}

fn peer_config(options: &Options, server: &Server) -> anyhow::Result<PeerConfig> {
    // An hour is far past any useful wait, and keeps deadlines computed
    // from it far from overflowing.
    const MAX_RTC_TIMEOUT_SECS: f64 = 3600.0;
    if !(options.rtc_timeout > 0.0 && options.rtc_timeout <= MAX_RTC_TIMEOUT_SECS) {
        anyhow::bail!("--rtc-timeout must be a number of seconds above 0 and at most 3600");
    }
    let mut config = PeerConfig::new(server.websocket_url());
    config.rtc.bind = options.bind;
    config.rtc.ice_servers = options.ice_servers.clone();
    config.fetch.webrtc = !options.relay_only;
    config.fetch.rtc_timeout = Duration::from_secs_f64(options.rtc_timeout);
    config.fetch.max_page_bytes = options.max_page_bytes;
    Ok(config)
}

async fn share(config: PeerConfig, named: Named, file: &str) -> anyhow::Result<()> {
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
    let relay_only = !config.fetch.webrtc;
    let peer = connect(config, &named).await?;
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
    println!("{}", named.server.page_link(hash));
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
    named: Named,
    hash: PageHash,
    output: Option<PathBuf>,
    host: bool,
) -> anyhow::Result<()> {
    let peer = connect(config, &named).await?;
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

    fn server(s: &str) -> Server {
        s.parse().expect("a server address")
    }

    #[test]
    fn flags_reach_the_peer_config() {
        let (cli, by) = parse_args(
            [
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
                "http://127.0.0.1:9",
            ]
            .map(Into::into),
        )
        .expect("the flags parse");
        assert_eq!(by, Origin::Flag, "a global flag after the subcommand");
        let config = peer_config(&cli.options, &server(&cli.options.server)).expect("a config");
        assert!(!config.fetch.webrtc);
        assert_eq!(config.fetch.rtc_timeout, Duration::from_millis(1500));
        assert_eq!(config.rtc.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.rtc.ice_servers.len(), 2);
        assert_eq!(config.rtc.ice_servers[1].username.as_deref(), Some("u"));
        assert_eq!(config.server, "ws://127.0.0.1:9/ws/websocket?vsn=2.0.0");

        for bad in ["0", "NaN", "inf", "1e30"] {
            let bad = Cli::try_parse_from(["ephemeral-peer", "--rtc-timeout", bad, "get", "x"])
                .expect("parses");
            assert!(peer_config(&bad.options, &server("h")).is_err());
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
    fn a_link_names_its_server_unless_a_typed_server_differs() {
        let link = Some(server("http://127.0.0.1:4000"));
        let typed = "ws://127.0.0.1:4000/ws/websocket?vsn=2.0.0";
        for by in [Origin::Flag, Origin::Env, Origin::Default] {
            let named = server_for(link.clone(), typed, by).expect("the same server");
            assert_eq!(named.by, Origin::Link);
            assert_eq!(named.server.to_string(), "http://127.0.0.1:4000");
        }
        for by in [Origin::Env, Origin::Default] {
            let named = server_for(link.clone(), "not a server", by).expect("the link's");
            assert_eq!(named.server, server("127.0.0.1:4000"), "{by:?} is not read");
        }
        let differ = server_for(link.clone(), "http://127.0.0.1:4001", Origin::Flag)
            .expect_err("two servers typed");
        assert_eq!(
            format!("{differ:#}"),
            "the link is on http://127.0.0.1:4000, but --server names http://127.0.0.1:4001"
        );
        assert!(hint(&differ).is_some_and(|h| h.contains("hash alone")));
        assert_eq!(exit_code(&differ) as u8, 1);

        let bare = server_for(None, "https://pages.example", Origin::Env).expect("a server");
        assert_eq!(
            (bare.server, bare.by),
            (server("wss://pages.example"), Origin::Env)
        );
    }

    #[test]
    fn the_server_defaults_to_localhost_and_its_origin_is_known() {
        let (cli, by) = parse_args(["ephemeral-peer", "get", "x"].map(Into::into)).expect("parses");
        if std::env::var_os("EPHEMERAL_SERVER").is_none() {
            assert_eq!(by, Origin::Default);
            assert_eq!(cli.options.server, "http://127.0.0.1:4000");
        }
        let (_, by) = parse_args(["ephemeral-peer", "--server", "h", "get", "x"].map(Into::into))
            .expect("parses");
        assert_eq!(by, Origin::Flag);
    }

    #[test]
    fn bad_addresses_say_which_and_why_once() {
        let bad_flag = server_for(None, "ftp://h", Origin::Flag).expect_err("not a server");
        assert_eq!(
            format!("{bad_flag:#}"),
            "--server \"ftp://h\" is not a server address: ftp:// is not a scheme the server \
             speaks: use http://, https://, ws:// or wss://"
        );
        assert!(hint(&bad_flag).is_some_and(|h| h.contains("http://127.0.0.1:4000")));
        let bad_env = server_for(None, "h:x", Origin::Env).expect_err("not a port");
        assert!(format!("{bad_env:#}").starts_with("EPHEMERAL_SERVER=\"h:x\""));

        let page = "http://127.0.0.1:4000/abc"
            .parse::<PageLink>()
            .context("\"http://127.0.0.1:4000/abc\" is neither a page link nor a page hash")
            .expect_err("a short hash");
        assert_eq!(
            format!("{page:#}"),
            "\"http://127.0.0.1:4000/abc\" is neither a page link nor a page hash: \
             a page hash has 64 hex digits, this has 3 characters"
        );
        assert!(hint(&page).is_some_and(|h| h.contains("64 lowercase hex digits")));
        assert_eq!(exit_code(&page) as u8, 1);
    }

    #[test]
    fn an_unreachable_server_exits_2_and_says_its_cause_once() {
        let refused = anyhow::Error::new(Unreachable {
            server: server("127.0.0.1:4000"),
            by: Origin::Default,
            cause: ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into()),
        });
        assert_eq!(exit_code(&refused) as u8, 2);
        assert_eq!(
            format!("{refused:#}"),
            "cannot reach the server at http://127.0.0.1:4000: connection refused"
        );
        assert_eq!(
            hint(&refused).as_deref(),
            Some(
                "is the server running? \
                 (the default: name another with --server or EPHEMERAL_SERVER)"
            )
        );
    }
}
