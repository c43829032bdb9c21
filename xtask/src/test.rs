//! `cargo xtask test`: the one command CI and newcomers run.
use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{run, setup};

pub fn test(ws: &Path) -> Result<()> {
    let toolchain = setup::setup(ws)?;
    let cargo = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(ws);
        cmd
    };
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Builds the eBPF object (through lb-userspace/build.rs) and every binary the tests start.
    run(cargo().args(["build", "--workspace", "--all-targets"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The datapath as the BPF target sees it (on the host it is an empty stub).
    run(cargo()
        .args([
            "clippy",
            "--package",
            "lb-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(ws.join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTUP_TOOLCHAIN", &toolchain.name))?;
    run(cargo().args(["test", "--workspace"]))?;
    eprintln!("xtask test: all green");
    Ok(())
}
