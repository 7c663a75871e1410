//! Benchmark 6, web client size: what a browser downloads to run the
//! client, `static/pkg/*.wasm` and `*.js` as `cargo xtask build` left them,
//! raw and gzipped (`gzip -9`, as a server or CDN would send them). The
//! benchmark measures what is there and does not build it: building the
//! client is `cargo xtask build`'s job.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::report::{Better, Row, Value};

const BENCHMARK: &str = "6. Web client size";

pub fn run(workspace: &Path) -> Result<Vec<Row>> {
    let pkg = workspace.join("static/pkg");
    let files = client_files(&pkg)?;
    if files.is_empty() {
        return Ok(vec![Row::not_measured(
            BENCHMARK,
            "wasm + JS",
            "static/pkg is empty: run `cargo xtask build` first",
        )]);
    }
    let mut raw_total = 0;
    let mut gzip_total = 0;
    let mut parts = Vec::new();
    for file in &files {
        let raw = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        let gzipped = gzipped_size(file)?;
        raw_total += raw;
        gzip_total += gzipped;
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        parts.push(format!(
            "{name} {:.1} KB ({:.1} KB gz)",
            raw as f64 / 1e3,
            gzipped as f64 / 1e3
        ));
    }
    let gz_kb = gzip_total as f64 / 1e3;
    Ok(vec![
        Row::new(
            BENCHMARK,
            "wasm + JS, gzipped",
            Value::new(gz_kb, "KB"),
            Better::Lower,
        )
        .target("≤ 150 KB", gz_kb <= 150.0)
        .note(parts.join(", ")),
        Row::new(
            BENCHMARK,
            "wasm + JS, raw",
            Value::new(raw_total as f64 / 1e3, "KB"),
            Better::Lower,
        ),
    ])
}

fn client_files(pkg: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(pkg) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", pkg.display()))?
            .path();
        let wanted = path
            .extension()
            .is_some_and(|ext| ext == "wasm" || ext == "js");
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn gzipped_size(path: &Path) -> Result<u64> {
    let output = Command::new("gzip")
        .arg("-9c")
        .arg(path)
        .output()
        .context("cannot run gzip")?;
    if !output.status.success() {
        bail!("gzip failed on {} ({})", path.display(), output.status);
    }
    Ok(output.stdout.len() as u64)
}
