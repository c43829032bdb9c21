//! Builds the XDP object (`lb-ebpf`) for `bpfel-unknown-none` into `OUT_DIR/lb-ebpf`, where
//! `src/xdp/object.rs` embeds it.
//!
//! A nested cargo, as aya-build does, with the flags in one place and quiet unless it fails.
//! (LLVM's `+allows-misaligned-mem-access` would turn byte-wise header reads into wide loads,
//! but it also emits misaligned stack accesses, which the verifier always rejects.)
//!
//! Toolchain: the same rustup toolchain as this build, with `RUSTC_BOOTSTRAP=1` so
//! `-Z build-std=core` works on stable. bpf-linker must be linked against that toolchain's
//! libLLVM; `cargo xtask setup` builds it into `.tools/bpf-linker/current/bin`, which goes first
//! on PATH.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const TARGET: &str = "bpfel-unknown-none";
const RUSTFLAGS: &[&str] = &["-Cdebuginfo=2", "-Clink-arg=--btf"];

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let linker_bin = workspace.join(".tools/bpf-linker/current/bin");
    for watched in [
        workspace.join("lb-ebpf"),
        workspace.join("lb-common"),
        linker_bin.clone(),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");

    let mut paths = vec![linker_bin.clone()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let path = env::join_paths(paths).context("joining PATH")?;
    if !env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()) {
        bail!(
            "bpf-linker not found in {} or on PATH: run `cargo xtask setup` first",
            linker_bin.display()
        );
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = match which_rustup(&path) {
        // Same toolchain as this build (rustup's proxy would otherwise pick by directory).
        Some(rustup) => {
            let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
            let mut cmd = Command::new(rustup);
            cmd.args(["run", &toolchain, "cargo"]);
            cmd
        }
        None => Command::new("cargo"),
    };
    cmd.current_dir(workspace.join("lb-ebpf"))
        .args(["build", "--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", &path)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!("building the XDP object (lb-ebpf) failed: {}", out.status);
    }
    let built = target_dir.join(TARGET).join("release").join("lb-ebpf");
    let dest = out_dir.join("lb-ebpf");
    fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    Ok(())
}

fn which_rustup(path: &OsString) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join("rustup"))
        .find(|candidate| Path::new(candidate).is_file())
}
