//! Browser tests: the real wasm client in headless Chromium (driven over
//! WebDriver by fantoccini), against the real signaling server running in
//! this process. `cargo xtask test` installs Chromium and builds the client
//! first; run alone, a missing build fails with a message saying so.
//!
//! - [`pages`]: sharing and viewing between two browsers over WebRTC, host
//!   counts, relay fallback, "gone", safe rendering, Unicode addresses,
//!   screenshots (tests/artifacts/).
//! - [`interop`]: a browser and a native `ephemeral-peer` serving each other.
//! - [`rich`]: Markdown and HTML in the sandboxed frame; a hostile page
//!   runs, submits and loads nothing (a loopback listener proves it).
//! - [`survive`]: reload, Back/Forward and the logo keep a page hosted,
//!   up to 16 MiB; IndexedDB swept once its tabs are closed; the browser's
//!   own leave prompt for the last host only; "Edit a copy"; 16 MiB with
//!   progress.
//!
//! How WebRTC is made impossible for the relay test: the visitor opens the
//! page with `?ice=relay`, which makes its RTCPeerConnection gather relay
//! (TURN) candidates only; the server hands out no TURN server, so no
//! candidate pair can ever form and the fetch must fall back to relay the
//! way it would on a hostile network. `?rtc=off` (no WebRTC at all) is
//! covered too.

mod harness;
mod interop;
mod pages;
mod rich;
mod survive;
