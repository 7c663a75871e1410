//! Headless peer tests: real webrtc-rs peers against a real signaling
//! server on loopback, in one process. Every wait is bounded (see
//! [`harness::within`]).
//!
//! - [`transfer`]: pages moving host → visitor over WebRTC, hosting after,
//!   many visitors, large and Unicode pages.
//! - [`failures`]: bad hosts, vanishing hosts, relay-only, gone, server
//!   restarts.
//! - [`cli`]: the `ephemeral-peer` binary end to end.
//! - [`turn`]: relay-only peers through the server's built-in TURN.

mod cli;
mod failures;
mod fake_host;
mod harness;
mod transfer;
mod turn;
