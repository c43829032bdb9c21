//! `cargo xtask test`: the one command CI and newcomers run.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, run, setup};

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
    super::fuzz::smoke(ws, &toolchain)?;
    run(cargo().args(["deny", "check", "bans", "licenses", "sources"]))?;
    // The package, from the debug build just tested (gzip: the check needs no xz-small file).
    let deb = super::dist::dist(
        ws,
        &super::dist::DistArgs {
            lb: Some(ws.join("target/debug/lb")),
            out: Some(ws.join("target/dist-check")),
            compression: "gzip".into(),
        },
    )?;
    super::dist::check(&deb)?;
    std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    // The demo checks every step it shows, so it is also the end-to-end smoke test of `lb run`
    // (XDP + L7 + health checks + admin API, about 25 s), and the cluster demo that of BGP
    // announcement and flows across nodes (about 25 s). Root only, like the other
    // privileged tests: skipped without it, except under CI=true.
    // A child `cargo xtask demo`, not a call: `cargo test` above may have rebuilt this very
    // binary, and the demo starts its backends from the xtask executable on disk.
    if is_root() {
        run(cargo().args(["xtask", "demo"]))?;
        run(cargo().args(["xtask", "demo", "--cluster"]))?;
    } else if std::env::var("CI").as_deref() == Ok("true") {
        bail!(
            "the demo smoke test needs root (network namespaces, XDP) and CI=true: refusing to skip"
        );
    } else {
        eprintln!("xtask test: skipping the demo smoke test (needs root)");
    }
    eprintln!("xtask test: all green");
    Ok(())
}
