//! Ephemeral's browser client: Rust compiled to wasm32, loaded by
//! static/app.js into static/index.html.
//!
//! ```text
//!   index.html ── view ◄── ui ◄──┐
//!   WebSocket ─── socket ◄───────┼── app ◄──► ephemeral_shared::client::Client
//!   RTCPeerConnection ── rtc ◄───┤            (session, fetching, hosting)
//!   setTimeout ── timer ◄────────┘
//! ```
//!
//! The client is a thin shell: `shared`'s [`Client`] holds the whole peer
//! logic, sans-IO, and this crate carries out what it asks with the
//! browser's APIs and feeds back what happened, with the time.
//!
//! - [`app`]: the controller — wires the DOM, the socket, the peer
//!   connections and the timer to the core.
//! - [`socket`]: the WebSocket to this page's server: open, frames, close.
//! - [`rtc`]: the RTCPeerConnections and their data channels, by the core's
//!   connection id.
//! - [`timer`]: one `setTimeout`, re-armed to the core's next deadline.
//! - [`ui`]: what the tab shows, from the core's events.
//! - [`status`]: the words of the status line, pure and unit-tested.
//! - [`view`]: the DOM, written only as text.
//!
//! [`Client`]: ephemeral_shared::client::Client

pub mod app;
pub mod rtc;
pub mod socket;
pub mod status;
pub mod timer;
pub mod ui;
pub mod view;

use wasm_bindgen::prelude::*;

/// A JS event callback owned by Rust: the listener works exactly as long as
/// this value lives.
pub type Listener = Closure<dyn FnMut(JsValue)>;

/// Runs when the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    app::run()
}
