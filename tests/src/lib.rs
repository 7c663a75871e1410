//! Support shared by the workspace-level tests and the benchmarks. The
//! tests themselves are in `tests/peers/` (native webrtc-rs peers against a
//! real server) and `tests/browser/` (headless Chromium).
//!
//! - [`binaries`]: builds the server and the CLI for the tests that run
//!   them.
//! - [`chromium`]: ChromeDriver and headless Chromium sessions.
//! - [`cluster`]: Redis, server nodes and a balancer on loopback
//!   (`tests/cluster.rs`, and the cluster benchmarks).
//! - [`http`]: a raw HTTP GET, status and body.
//! - [`natlab`]: network namespaces and NAT routers standing in for the
//!   internet (`tests/natlab.rs`, and the NAT benchmark).

pub mod binaries;
pub mod chromium;
pub mod cluster;
pub mod http;
pub mod natlab;
