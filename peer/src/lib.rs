//! Ephemeral's native peer: shares and fetches pages peer to peer over
//! WebRTC data channels (webrtc-rs), negotiated through the signaling
//! server, with the server's websocket as the fallback. Used by the CLI
//! (`src/main.rs`), the headless tests and the benchmarks.
//!
//! Every decision is `ephemeral_shared::client::Client`'s, the same core the
//! browser runs; this crate is its tokio shell.
//!
//! ```text
//!   Peer (handle) ── commands ──► run_loop ◄──► ephemeral_shared::client::Client
//!                                   │  │           (session, fetches, uploads)
//!                 signaling ◄───────┘  └──► connections ──► rtc::Session
//!           (websocket, frames)             (one task per peer connection)
//! ```
//!
//! - [`peer`]: [`Peer`] and the types of its API.
//! - `run_loop`: feeds the core and carries out what it asks.
//! - `connections`: one task per peer connection the core opened.
//! - [`rtc`]: one webrtc-rs peer connection and its data channel, tuned
//!   for speed.
//! - [`signaling`]: the raw websocket to the server, frame in, frame out.
//!
//! For benchmarks and tests: every [`Fetched`] carries its [`Transport`] and
//! [`FetchTimings`] (routed, channel open, time to content);
//! [`Peer::connect_many`] runs a swarm in one process; [`Peer::served`]
//! counts each host's uploads by transport; [`Peer::status`] follows the
//! link through reconnects.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ephemeral_peer::{Peer, PeerConfig};
//! let url = "ws://127.0.0.1:4000/ws/websocket?vsn=2.0.0";
//! let host = Peer::connect(PeerConfig::new(url)).await?;
//! let hash = host.share(b"hello".to_vec()).await?;
//! let visitor = Peer::connect(PeerConfig::new(url)).await?;
//! let fetched = visitor.fetch(hash).await?;
//! println!("{} via {} in {:?}", hash, fetched.transport.as_str(), fetched.timings.total);
//! # Ok(()) }
//! ```

mod connections;
pub mod peer;
pub mod rtc;
mod run_loop;
pub mod signaling;

pub use ephemeral_shared::{FetchConfig, PageHash, PeerId, Transport};
pub use peer::{
    FetchError, FetchOptions, FetchProgress, FetchTimings, Fetched, Peer, PeerConfig, PeerError,
    PeerStatus, ServedCounters,
};
pub use rtc::{RtcSettings, Session, SessionEvent};
