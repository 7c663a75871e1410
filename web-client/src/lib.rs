//! Ephemeral's browser client: Rust compiled to wasm32, loaded by
//! static/app.js into static/index.html.
//!
//! ```text
//!   index.html ── view ──┐
//!                        ├── app ── ephemeral_shared (Fetch, Uploads,
//!   WebSocket ─ phoenix ─┤          frames, payloads, transfer framing)
//!   RTCPeerConnection ───┘
//!          rtc
//! ```
//!
//! The client is a thin shell: `shared` decides, this crate moves bytes
//! between the browser's APIs and `shared`'s state machines.
//!
//! - [`app`]: the controller — routes the URL, joins topics, drives the
//!   fetch and the uploads, renders the status.
//! - [`phoenix`]: the Phoenix Channels V2 socket, heartbeat and reconnect.
//! - [`rtc`]: one RTCPeerConnection and its data channel, either side.
//! - [`status`]: the words of the status line, pure and unit-tested.
//! - [`view`]: the DOM, written only as text.

pub mod app;
pub mod phoenix;
pub mod rtc;
pub mod status;
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
