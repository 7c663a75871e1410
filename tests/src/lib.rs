//! This crate only holds tests: `tests/peers/` (native webrtc-rs peers
//! against a real server) and `tests/browser/` (headless Chromium). Cargo
//! needs a library target for a package, so this file is it.
