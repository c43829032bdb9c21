//! `cargo xtask fuzz [TARGET] [--seconds N]`: the cargo-fuzz targets in `fuzz/` (all in turn
//! when none is named); `smoke` is the few seconds of each that `cargo xtask test` runs.
//!
//! Built with the toolchain setup picked and `RUSTC_BOOTSTRAP=1` (libFuzzer's instrumentation
//! flags are unstable ones), as the XDP object is: no second toolchain. No sanitizer by
//! default: the targets are safe Rust, whose memory errors are panics already, and ASan
//! would halve the executions a run gets; `--sanitizer address` when C code is in question.
//! Inputs that find new coverage go to `fuzz/target/corpus/<target>/` (not committed; the
//! seeds in `fuzz/corpus/<target>/` are read only), crashes to `fuzz/artifacts/<target>/`.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{output, run, setup};

#[derive(Args)]
pub struct FuzzArgs {
    /// The target to run (`cargo fuzz list` in fuzz/); all of them in turn when not given.
    target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 300)]
    seconds: u32,
    /// address, leak, memory, thread or none.
    #[arg(long, default_value = "none")]
    sanitizer: String,
}

/// Setup, then each chosen target for `--seconds`.
pub fn fuzz(ws: &Path, args: &FuzzArgs) -> Result<()> {
    let toolchain = setup::setup(ws)?;
    let targets = match &args.target {
        Some(target) => vec![target.clone()],
        None => targets(ws, &toolchain)?,
    };
    for target in &targets {
        run_target(ws, &toolchain, target, args.seconds, &args.sanitizer)?;
    }
    eprintln!(
        "xtask fuzz: {} target(s), {} s each, no crash",
        targets.len(),
        args.seconds
    );
    Ok(())
}

/// A few seconds of every target: they build, their seeds pass, nothing falls over at once.
pub fn smoke(ws: &Path, toolchain: &setup::Toolchain) -> Result<()> {
    for target in targets(ws, toolchain)? {
        run_target(ws, toolchain, &target, 5, "none")?;
    }
    Ok(())
}

/// The targets cargo-fuzz finds in fuzz/Cargo.toml.
fn targets(ws: &Path, toolchain: &setup::Toolchain) -> Result<Vec<String>> {
    let list = output(&mut cargo_fuzz(ws, toolchain, "list"))?;
    let targets: Vec<String> = list.lines().map(str::trim).map(str::to_owned).collect();
    if targets.is_empty() {
        bail!(
            "cargo fuzz list found no targets in {}",
            ws.join("fuzz").display()
        );
    }
    Ok(targets)
}

fn run_target(
    ws: &Path,
    toolchain: &setup::Toolchain,
    target: &str,
    seconds: u32,
    sanitizer: &str,
) -> Result<()> {
    let fuzz_dir = ws.join("fuzz");
    let found = fuzz_dir.join("target/corpus").join(target);
    fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    run(cargo_fuzz(ws, toolchain, "run")
        .arg(target)
        .arg(&found)
        .arg(&seeds)
        .args(["--sanitizer", sanitizer, "--codegen-units", "16", "--"])
        .arg(format!("-max_total_time={seconds}"))
        // One input taking this long is a hang, reported as a crash.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1"))
    .with_context(|| {
        format!(
            "fuzz target {target} failed: the input is in {}",
            fuzz_dir.join("artifacts").join(target).display()
        )
    })
}

/// `cargo fuzz SUBCOMMAND` on fuzz/, with the toolchain setup picked.
fn cargo_fuzz(ws: &Path, toolchain: &setup::Toolchain, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain.name, "cargo", "fuzz", subcommand])
        .arg("--fuzz-dir")
        .arg(ws.join("fuzz"))
        .current_dir(ws)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_INCREMENTAL", "0");
    cmd
}
