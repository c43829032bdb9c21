//! `cargo xtask <command>`: everything a fresh machine needs, in one place.
//!
//! - `setup`: idempotent install of the eBPF toolchain pieces, cargo-fuzz, cargo-deny and the
//!   Debian packages.
//! - `test`: setup, build everything, fmt check, clippy (host and BPF target), all tests, a few
//!   seconds of each fuzz target, cargo deny (bans, licenses, sources), and the demo as a
//!   smoke test.
//! - `demo`: setup, build, and run `lb` in a small namespace topology with real traffic.
//! - `dist`: the Debian package (binary, systemd unit, default config, man page, completions).
//! - `fuzz`: the cargo-fuzz targets in `fuzz/`, for as long as asked.
mod demo;
mod dist;
mod fuzz;
#[path = "../../tests/src/netns.rs"]
#[allow(dead_code)]
mod netns;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (rust-src, bpf-linker, cargo-fuzz, cargo-deny,
    /// Debian packages).
    Setup,
    /// Setup, then build everything and run fmt --check, clippy -D warnings, all tests and the demo.
    Test,
    /// Setup, build, then run lb in a network-namespace topology with real traffic.
    Demo(demo::DemoArgs),
    /// Build the Debian package (target/dist/lb_VERSION_ARCH.deb) and check it.
    Dist(dist::DistArgs),
    /// Setup, then run the fuzz targets in fuzz/ (one, or all in turn) for --seconds each.
    Fuzz(fuzz::FuzzArgs),
    /// The demo's HTTP backend (started by `demo` inside a backend namespace).
    #[command(hide = true)]
    DemoBackend(demo::backend::BackendArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace_root();
    match cli.command {
        Cmd::Setup => setup::setup(&ws).map(drop),
        Cmd::Test => test::test(&ws),
        Cmd::Demo(args) => demo::demo(&ws, &args),
        Cmd::DemoBackend(args) => demo::backend::serve(&args),
        Cmd::Fuzz(args) => fuzz::fuzz(&ws, &args),
        Cmd::Dist(args) => dist::dist(&ws, &args).and_then(|deb| dist::check(&deb)),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cmd`, echoing it first; fails with the command line if it does not succeed.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
