//! `cargo xtask …`: the commands a new user runs on a fresh machine. Each
//! installs what it needs and says what it is doing.
//!
//! - `build`: the wasm client into `static/pkg/` (wasm32 target,
//!   wasm-bindgen at the Cargo.lock version, the `wasm-release` size
//!   profile, wasm-opt when it can be had), then the release server, which
//!   embeds `static/`.
//! - `run`: `build`, then the release server on http://localhost:4000
//!   (extra arguments go to the server).
//! - `test`: installs the wasm target, Chromium + ChromeDriver, and ip +
//!   iptables (for the NAT lab) when missing, builds the wasm client, then `cargo test --workspace`, then
//!   a few seconds of fuzzing per fuzz target (smoke).
//! - `bench`: the benchmark suite, release build (`--quick` for a few
//!   minutes; other arguments go to `ephemeral-bench`).
//! - `fuzz [TARGET…] [--seconds N]`: builds the libFuzzer targets of
//!   `fuzz/` on stable and runs each (default: all, 60 s each); fails on
//!   any crash, naming the crash file (see `fuzz.rs`, docs/fuzzing.md).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod fuzz;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The server's default address; `run` makes it explicit.
const RUN_BIND: &str = "127.0.0.1:4000";
/// The npm package that ships wasm-opt; installed under `target/` so the
/// repository stays clean.
const BINARYEN_PACKAGE: &str = "binaryen";
/// Exactly the features rustc enables by default for wasm32 (Rust ≥ 1.87).
/// `--all-features` would let wasm-opt emit instructions Chromium refuses.
const WASM_OPT_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-multivalue",
    "--enable-sign-ext",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(),
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask build | run [server flags…] | test [cargo test args…] \
                 | bench [--quick] [--only NAME,…] | fuzz [TARGET…] [--seconds N]"
            );
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn build() -> Result<()> {
    build_client()?;
    build_server()
}

fn run(server_args: &[String]) -> Result<()> {
    build()?;
    let binary = target_dir().join("release/signal-server");
    step(&format!(
        "serving on http://localhost:{}",
        port_of(RUN_BIND)
    ));
    let mut command = Command::new(&binary);
    if !server_args.iter().any(|a| a.starts_with("--bind")) {
        command.args(["--bind", RUN_BIND]);
    }
    command.args(server_args);
    check(&mut command)
}

fn test(cargo_args: &[String]) -> Result<()> {
    ensure_browser()?;
    build_client()?;
    step("running every test suite");
    let mut command = cargo();
    command.args(["test", "--workspace"]).args(cargo_args);
    check(&mut command).context("tests failed")?;
    fuzz::smoke()
}

/// Runs the benchmark suite (bench/); it writes target/bench/results.md.
fn bench(bench_args: &[String]) -> Result<()> {
    ensure_packages(&[REDIS])?;
    step("running the benchmarks (release build)");
    let mut command = cargo();
    command
        .args(["run", "--release", "--package", "ephemeral-bench", "--"])
        .args(bench_args);
    check(&mut command).context("benchmarks failed")
}

/// Builds the wasm client into `static/pkg/`.
fn build_client() -> Result<()> {
    ensure_wasm_target()?;
    step("building the wasm client (profile wasm-release)");
    check(cargo().args([
        "build",
        "--package",
        "web-client",
        "--target",
        WASM_TARGET,
        "--profile",
        "wasm-release",
    ]))?;
    let input = target_dir().join(format!("{WASM_TARGET}/wasm-release/web_client.wasm"));
    let out_dir = root().join("static/pkg");
    step("generating JS bindings (wasm-bindgen)");
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&input)
        .out_name("web_client")
        .web(true)?
        // The loader calls `init()` with no argument: the glue must find the
        // wasm next to itself.
        .omit_default_module_path(false)
        .typescript(false)
        .generate(&out_dir)
        .context("wasm-bindgen failed")?;
    let wasm = out_dir.join("web_client_bg.wasm");
    let before = file_size(&wasm)?;
    match wasm_opt() {
        Some(wasm_opt) => {
            step("shrinking with wasm-opt -Oz");
            let optimized = out_dir.join("web_client_bg.opt.wasm");
            check(
                Command::new(wasm_opt)
                    .arg("-Oz")
                    .args(WASM_OPT_FEATURES)
                    .arg(&wasm)
                    .arg("-o")
                    .arg(&optimized),
            )?;
            std::fs::rename(&optimized, &wasm)?;
        }
        None => eprintln!("xtask: wasm-opt unavailable; the client is larger but works"),
    }
    let after = file_size(&wasm)?;
    match gzipped_size(&wasm) {
        Some(gz) => step(&format!(
            "client: {after} bytes ({before} before wasm-opt), {gz} gzipped"
        )),
        None => step(&format!("client: {after} bytes ({before} before wasm-opt)")),
    }
    Ok(())
}

/// Builds the release server, which embeds `static/`.
fn build_server() -> Result<()> {
    step("building the release server (embeds static/)");
    check(cargo().args(["build", "--release", "--package", "signal-server"]))
}

fn ensure_wasm_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed to add the wasm32 target")?;
    if !installed.lines().any(|line| line.trim() == WASM_TARGET) {
        step(&format!("installing the {WASM_TARGET} target"));
        check(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

/// The system packages the test suites run: Chromium and ChromeDriver,
/// the NAT lab's tools, Redis.
fn ensure_browser() -> Result<()> {
    // Chromium for the browser tests; ip and iptables for the NAT lab;
    // Redis for the cluster's tests.
    ensure_packages(&[
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        ("/usr/sbin/ip", "iproute2"),
        ("/usr/sbin/iptables", "iptables"),
        REDIS,
    ])
}

/// Debian's Redis, run by the cluster's tests and benchmarks themselves on
/// a port of their own: no Redis service is assumed or started.
const REDIS: (&str, &str) = ("/usr/bin/redis-server", "redis-server");

/// Installs with apt-get the packages (program, package) whose program is
/// missing.
fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing {} (apt-get)", missing.join(", ")));
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    check(&mut update).context("apt-get update failed (the tests need these packages)")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    check(&mut install).with_context(|| format!("installing {} failed", missing.join(", ")))
}

/// wasm-opt from the npm package, installed under `target/` on first use.
/// `None` when it cannot be had (no npm, no network): the build goes on.
fn wasm_opt() -> Option<PathBuf> {
    let prefix = target_dir().join("tools");
    let binary = prefix.join("node_modules/.bin/wasm-opt");
    if binary.exists() {
        return Some(binary);
    }
    step(&format!(
        "installing wasm-opt (npm package binaryen) into {}",
        prefix.display()
    ));
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(BINARYEN_PACKAGE)
        .status()
        .is_ok_and(|status| status.success());
    (installed && binary.exists()).then_some(binary)
}

fn gzipped_size(path: &Path) -> Option<u64> {
    let output = Command::new("gzip").arg("-9c").arg(path).output().ok()?;
    output
        .status
        .success()
        .then_some(output.stdout.len() as u64)
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set, as cargo
/// itself reads it, else `target/` in the workspace.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// The workspace root: xtask lives one level below it.
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn check(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("could not start {}", describe(command)))?;
    if !output.status.success() {
        bail!("{} failed ({})", describe(command), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len())
}

fn port_of(bind: &str) -> &str {
    bind.rsplit_once(':').map_or(bind, |(_, port)| port)
}

fn step(message: &str) {
    eprintln!("xtask: {message}");
}
