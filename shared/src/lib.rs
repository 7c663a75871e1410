//! Ephemeral's protocol and logic, written once and shared by the server,
//! the browser client (wasm32) and the native peer. Pure and sans-IO: no
//! sockets, no clocks, no randomness of its own — time and random numbers
//! are inputs, so every path is tested faster than real time.
//!
//! ```text
//!   browser (web-client) ─┐                      ┌─ signal-server
//!   native  (peer)       ─┼── ephemeral-shared ──┤   (routing, selection,
//!                         │   frames, topics,    │    counts, limits)
//!                         └── transfer, fetch    └─
//! ```
//!
//! - [`hash`]: page addresses, SHA-256 of the UTF-8 bytes.
//! - [`page`]: a page's bytes with their address, hashed exactly once
//!   (whole, or piece by piece as they arrive).
//! - [`link`]: server addresses and page links as people write them.
//! - [`topic`]: `have:<h>` / `want:<h>`.
//! - [`small_map`]: the map for the few members most pages have.
//! - [`frame`]: Phoenix Channels V2 JSON frames, parsed with exact errors.
//! - [`protocol`]: typed payloads of every event, peer ids, error reasons.
//! - [`path`]: which way a page travelled (direct, TURN, relay).
//! - [`selection`]: which host serves a request (uniform, or the seed's
//!   coin flip).
//! - [`routing`]: one page's routing policy: hosts, waiting visitors,
//!   upload slots, the queue, who may relay to whom, count broadcasts.
//! - [`rate`]: the per-socket token bucket.
//! - [`transfer`]: a page over a data channel: header, chunks, verification.
//! - [`relay`]: a relayed page in parts from the server, put back together.
//! - [`fetch`]: the visitor's state machine, WebRTC first, relay fallback.
//! - [`host`]: the host's choice between offering a channel and relaying.
//! - [`session`]: the client's Phoenix session: refs, joins, heartbeat,
//!   reconnect and rejoin.
//! - [`client`]: the peer's whole logic on that session, for both shells:
//!   hosting, fetching, uploads, peer connections as ids.
//! - [`size`]: byte counts for people, in messages about limits.

pub mod client;
pub mod fetch;
pub mod frame;
pub mod hash;
pub mod host;
pub mod link;
pub mod page;
pub mod path;
pub mod protocol;
pub mod rate;
pub mod relay;
pub mod routing;
pub mod selection;
pub mod session;
pub mod size;
pub mod small_map;
pub mod topic;
pub mod transfer;

pub use fetch::{Fetch, FetchAction, FetchConfig, FetchFailure, Phase, Transport};
pub use frame::{Frame, FrameError};
pub use hash::PageHash;
pub use page::Page;
pub use protocol::PeerId;
pub use topic::{Role, Topic};
