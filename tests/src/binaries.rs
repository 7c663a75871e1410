//! Builds workspace binaries from inside a test or a benchmark: the
//! server and the CLI are other packages' targets, so cargo does not build
//! them for the test that runs them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `cargo build --quiet <args>` in this workspace. The `CARGO_*`
/// variables cargo gives a test (or `cargo run`) process are dropped:
/// passed on, they change fingerprints and force a rebuild of everything
/// in the next `cargo test`. Name the calling test target in `args` too
/// (`-p ephemeral-tests --test <name>`), so that features unify exactly as
/// in `cargo test`; otherwise cargo rebuilds webrtc-rs each time (~30 s).
pub fn cargo_build(args: &[&str]) -> Result<()> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cargo.env_remove(key);
        }
    }
    let status = cargo
        .args(["build", "--quiet"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build {} failed", args.join(" "));
    }
    Ok(())
}

/// `<target>/<profile>/`, where the binaries of the running test's build
/// are: the test itself lives in `deps/` below it.
pub fn test_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("the test's own path")?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .context("the target profile directory")
}
