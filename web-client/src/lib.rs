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
//! - [`page`]: formats, routes, titles, links and the frame's document,
//!   pure and unit-tested (docs/pages.md).
//! - [`render`]: a page on screen: Text with clickable links, Markdown and
//!   HTML in a sandboxed frame, or its source.
//! - [`editor`]: the editor: format, Write / Preview, size, images, draft.
//! - [`hashing`]: hashing a page the author shares in slices, so the tab
//!   keeps answering.
//! - [`utf8`]: large JS strings (the editor's text) into Rust quickly.
//! - [`store`]: what the tab keeps across reloads: hosted pages, the draft,
//!   in `sessionStorage` or, when larger, on [`disk`].
//! - [`disk`]: IndexedDB entries under the tab's id, and the sweep that
//!   removes them once the tab is gone ([`idb`]: the database; [`locks`]:
//!   Web Locks, how a live tab is told from a gone one).
//!
//! [`Client`]: ephemeral_shared::client::Client

pub mod app;
pub mod disk;
pub mod editor;
pub mod hashing;
pub mod idb;
pub mod locks;
pub mod page;
pub mod render;
pub mod rtc;
pub mod socket;
pub mod status;
pub mod store;
pub mod timer;
pub mod ui;
pub mod utf8;
pub mod view;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// A JS event callback owned by Rust: the listener works exactly as long as
/// this value lives.
pub type Listener = Closure<dyn FnMut(JsValue)>;

/// Calls `f` on every `name` event of `target`, for as long as the
/// returned [`Listener`] is kept.
pub fn listen(
    target: &web_sys::EventTarget,
    name: &str,
    f: impl FnMut(JsValue) + 'static,
) -> Result<Listener, JsValue> {
    let callback = Closure::<dyn FnMut(JsValue)>::new(f);
    target.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref())?;
    Ok(callback)
}

/// Listeners kept for as long as their owner lives (the app, the editor:
/// the life of the tab).
#[derive(Default)]
pub struct Listeners(std::cell::RefCell<Vec<Listener>>);

impl Listeners {
    /// Calls `f` on every `name` event of `target` from now on.
    pub fn on(
        &self,
        target: &web_sys::EventTarget,
        name: &str,
        f: impl FnMut(JsValue) + 'static,
    ) -> Result<(), JsValue> {
        self.0.borrow_mut().push(listen(target, name, f)?);
        Ok(())
    }
}

/// Runs when the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    app::run()
}
