//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` on the
//! stable toolchain and runs them, one after another, each for a set time;
//! `cargo xtask test` runs the same targets briefly as a smoke test.
//!
//! cargo-fuzz is not used: it would ask for nightly only to pass flags
//! that stable rustc already takes. The build passes the `-C` flags that
//! `cargo fuzz build --sanitizer none` passes (coverage counters, compare
//! tracing, `--cfg fuzzing`), into `target/fuzz/` so that they never touch
//! the main build's artifacts. Everything a run writes lives there too:
//! `corpus/<target>/` (grows across runs), `artifacts/<target>/` (crashes)
//! and `logs/<target>.log` (libFuzzer's full output).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{check, describe, output, root, step, target_dir};

/// Every target in fuzz/Cargo.toml, in the order they run.
const TARGETS: &[&str] = &["frame", "payloads", "transfer", "fetch"];
const DEFAULT_SECONDS: u64 = 60;
/// Per target in `cargo xtask test`: four targets stay within ~40 s.
const SMOKE_SECONDS: u64 = 8;
/// An input that takes longer than this is a hang, reported as a crash.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// What `cargo fuzz build --sanitizer none` passes to rustc on Linux, all
/// of it stable. Debug assertions, overflow checks and one codegen unit
/// come from the fuzz crate's release profile instead, so that any build
/// of it has them.
const RUSTFLAGS: &[&str] = &[
    // libFuzzer's coverage: an 8-bit counter per edge, the PC table it
    // maps them with, and compare operands, which let it guess magic
    // values such as `"have:"` or a reason name.
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    // Folded branches would hide edges from the counters.
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Clink-dead-code",
];

/// `cargo xtask fuzz [TARGET…] [--seconds N]`.
pub fn fuzz(args: &[String]) -> Result<()> {
    let mut targets: Vec<&'static str> = Vec::new();
    let mut seconds = DEFAULT_SECONDS;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--seconds=") {
            seconds = parse_seconds(value)?;
        } else if arg == "--seconds" {
            let value = args.next().context("--seconds needs a number")?;
            seconds = parse_seconds(value)?;
        } else if let Some(&target) = TARGETS.iter().find(|&&t| t == arg) {
            if !targets.contains(&target) {
                targets.push(target);
            }
        } else {
            bail!(
                "unknown fuzz target or flag {arg:?} (targets: {}; flag: --seconds N)",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    run(&targets, seconds)
}

/// The brief run `cargo xtask test` makes of every target.
pub fn smoke() -> Result<()> {
    step(&format!(
        "smoke-fuzzing every target for {SMOKE_SECONDS} s (`cargo xtask fuzz` runs longer)"
    ));
    run(TARGETS, SMOKE_SECONDS).context("smoke fuzzing failed")
}

fn parse_seconds(value: &str) -> Result<u64> {
    match value.parse() {
        Ok(seconds) if seconds > 0 => Ok(seconds),
        _ => bail!("--seconds takes a whole number of seconds above 0, not {value:?}"),
    }
}

/// One target's run, as libFuzzer reported it.
struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    seconds: u64,
    coverage: Option<u64>,
    corpus: Option<u64>,
    crashes: Vec<PathBuf>,
}

fn run(targets: &[&'static str], seconds: u64) -> Result<()> {
    let binaries = build(targets)?;
    let mut crashed = Vec::new();
    for (target, binary) in targets.iter().zip(&binaries) {
        let outcome = run_target(target, binary, seconds)?;
        step(&summary(&outcome));
        for crash in &outcome.crashes {
            crashed.push(format!(
                "{target}: {} (reproduce: {} {})",
                crash.display(),
                binary.display(),
                crash.display()
            ));
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found {} crash(es):\n  {}",
            crashed.len(),
            crashed.join("\n  ")
        );
    }
    Ok(())
}

/// Builds the fuzz crate with the coverage flags; returns each target's
/// binary.
fn build(targets: &[&str]) -> Result<Vec<PathBuf>> {
    let host = host_triple()?;
    let out = fuzz_dir();
    step(&format!(
        "building fuzz targets {} (stable, libFuzzer, into {})",
        targets.join(", "),
        out.display()
    ));
    // Outside rustflags (e.g. `-Dwarnings` in CI) still apply, after ours,
    // as cargo-fuzz does it.
    let mut rustflags = RUSTFLAGS.join(" ");
    if let Some(outer) = std::env::var_os("RUSTFLAGS") {
        rustflags.push(' ');
        rustflags.push_str(&outer.to_string_lossy());
    }
    let mut command = crate::cargo();
    command
        .args(["build", "--release", "--manifest-path"])
        .arg(root().join("fuzz/Cargo.toml"))
        // With an explicit target, RUSTFLAGS skip build scripts and proc
        // macros (serde_derive): those are loaded by the compiler, which
        // has no libFuzzer to provide the coverage symbols.
        .args(["--target", &host, "--target-dir"])
        .arg(&out)
        .env("RUSTFLAGS", rustflags)
        // It would override RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for target in targets {
        command.args(["--bin", target]);
    }
    check(&mut command).context("building the fuzz targets failed")?;
    Ok(targets
        .iter()
        .map(|target| out.join(&host).join("release").join(target))
        .collect())
}

fn run_target(target: &'static str, binary: &Path, seconds: u64) -> Result<Outcome> {
    let out = fuzz_dir();
    let corpus = out.join("corpus").join(target);
    let artifacts = out.join("artifacts").join(target);
    let logs = out.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;
    let log_err = log.try_clone()?;

    step(&format!(
        "fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    ));
    let mut command = Command::new(binary);
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        // libFuzzer joins the prefix and the file name as is.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // New inputs go to the first directory; the committed seeds are
        // only read.
        .arg(&corpus);
    let seeds = root().join("fuzz/seeds").join(target);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start {}", describe(&command)))?;
    let elapsed = started.elapsed().as_secs();

    // Lossy: a panic message may quote the fuzz input.
    let bytes = std::fs::read(&log_path)
        .with_context(|| format!("could not read {}", log_path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let outcome = parse_log(target, &text, elapsed);
    if !status.success() {
        eprintln!("{}", failure_excerpt(&text));
        if outcome.crashes.is_empty() {
            bail!(
                "{target}: libFuzzer exited with {status} and wrote no crash file; see {}",
                log_path.display()
            );
        }
    }
    Ok(outcome)
}

/// Reads libFuzzer's output: the closing `Done N runs in S second(s)` (or,
/// after a crash, `stat::number_of_executed_units`), the last status line
/// (`#N … cov: C … corp: K/…`) and every `Test unit written to PATH`.
fn parse_log(target: &'static str, log: &str, elapsed: u64) -> Outcome {
    let mut outcome = Outcome {
        target,
        executions: None,
        seconds: elapsed,
        coverage: None,
        corpus: None,
        crashes: Vec::new(),
    };
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            outcome.executions = words.next().and_then(|n| n.parse().ok());
            // "Done N runs in S second(s)"
            if let Some(seconds) = words.nth(2).and_then(|s| s.parse().ok()) {
                outcome.seconds = seconds;
            }
        } else if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.executions = outcome.executions.or(rest.trim().parse().ok());
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            outcome.crashes.push(PathBuf::from(path.trim()));
        } else if line.starts_with('#') {
            if let Some(cov) = field(line, "cov:") {
                outcome.coverage = Some(cov);
            }
            if let Some(corp) = field(line, "corp:") {
                outcome.corpus = Some(corp);
            }
        }
    }
    outcome
}

/// The part of a failed run's log worth reading first: from the panic (or
/// libFuzzer's error) on, without the whole backtrace.
fn failure_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.contains("panicked at") || line.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(30));
    let mut excerpt: Vec<&str> = lines[start..].iter().take(12).copied().collect();
    if let Some(written) = lines[start..]
        .iter()
        .find(|line| line.contains("Test unit written to "))
    {
        excerpt.extend(["…", written]);
    }
    excerpt.join("\n")
}

/// The number after `name` in a status line: `cov: 806`, `corp: 867/37Kb`.
fn field(line: &str, name: &str) -> Option<u64> {
    let (_, rest) = line.split_once(name)?;
    let value = rest.split_whitespace().next()?;
    value.split('/').next()?.parse().ok()
}

fn summary(outcome: &Outcome) -> String {
    let executions = match outcome.executions {
        Some(n) => format!(
            "{n} executions in {} s ({}/s)",
            outcome.seconds,
            n / outcome.seconds.max(1)
        ),
        None => format!("executions unknown after {} s", outcome.seconds),
    };
    let known = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    format!(
        "fuzz {}: {executions}, {} crash(es), coverage {} edges, corpus {} inputs",
        outcome.target,
        outcome.crashes.len(),
        known(outcome.coverage),
        known(outcome.corpus),
    )
}

fn fuzz_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// The triple to build for, as rustc names the machine it runs on.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = output(Command::new(rustc).arg("-vV"))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_string())
        .context("`rustc -vV` did not name the host")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_clean_run() {
        let log = "INFO: Seed: 1\n\
                   #2\tINITED cov: 8 ft: 9 corp: 1/1b exec/s: 0 rss: 27Mb\n\
                   #792152\tDONE   cov: 806 ft: 3354 corp: 867/37Kb lim: 1710 exec/s: 49509 rss: 30Mb\n\
                   Done 792152 runs in 16 second(s)\n\
                   stat::number_of_executed_units: 792152\n";
        let outcome = parse_log("frame", log, 17);
        assert_eq!(outcome.executions, Some(792_152));
        assert_eq!(outcome.seconds, 16);
        assert_eq!(outcome.coverage, Some(806));
        assert_eq!(outcome.corpus, Some(867));
        assert!(outcome.crashes.is_empty());
    }

    #[test]
    fn reads_a_crash() {
        let log = "#1024\tpulse  cov: 100 ft: 120 corp: 20/300b exec/s: 512 rss: 30Mb\n\
                   thread '<unnamed>' panicked at fuzz_targets/fetch.rs:1:1:\n\
                   ==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/t/artifacts/fetch/'; Test unit written to /t/artifacts/fetch/crash-ab12\n\
                   stat::number_of_executed_units: 1100\n";
        let outcome = parse_log("fetch", log, 3);
        assert_eq!(outcome.executions, Some(1100));
        assert_eq!(outcome.seconds, 3);
        assert_eq!(
            outcome.crashes,
            [PathBuf::from("/t/artifacts/fetch/crash-ab12")]
        );
        let excerpt = failure_excerpt(log);
        assert!(excerpt.starts_with("thread '<unnamed>' panicked at"));
        assert!(excerpt.ends_with("Test unit written to /t/artifacts/fetch/crash-ab12"));
    }
}
