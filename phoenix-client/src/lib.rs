//! A Phoenix Channels V2 client for Ephemeral's tests and benchmarks: the
//! signaling server's tests, the peer tests' fake hosts and the load
//! generator all reach the server through it.
//!
//! It is not the product's client. Peers and browsers run the session
//! logic in `ephemeral-shared` (driven by `ephemeral-peer` and the web
//! client); this one stays thin and lets its caller send anything, down to
//! raw text and binary frames, because tests and benchmarks must also
//! behave as no real client would. Frames are [`Frame`]s, parsed and
//! encoded by `ephemeral-shared`, so both sides agree on the wire format.
//!
//! - [`Client`]: joins, leaves, pushes with automatic refs, replies,
//!   expected frames (unrelated ones are kept for later), heartbeats, the
//!   end of the connection.
//! - [`websocket`] and [`tcp`]: the raw connections underneath, from a
//!   chosen source address (see [`Options`]), for baselines that are not
//!   Phoenix servers and for hostile tests below the websocket.

mod client;
mod connect;
mod error;

pub use client::{Client, Reply, peer_id};
pub use connect::{Options, Websocket, next_text, send_text, tcp, websocket, websocket_url};
pub use ephemeral_shared::Frame;
pub use error::{Ended, Error};
pub use tokio_tungstenite::tungstenite::Message;
