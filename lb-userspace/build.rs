//! Builds the XDP object (`lb-ebpf`) for `bpfel-unknown-none` and leaves it in `OUT_DIR`, where
//! `src/xdp/object.rs` embeds it.
//!
//! Toolchain: the nested cargo runs with the same rustup toolchain as this build, with
//! `RUSTC_BOOTSTRAP=1` so `-Z build-std=core` works on stable. `bpf-linker` must be linked against
//! that toolchain's libLLVM; `cargo xtask setup` builds it into `.tools/bpf-linker/current/bin`,
//! which we put first on PATH.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    let linker_bin = workspace.join(".tools/bpf-linker/current/bin");
    println!("cargo:rerun-if-changed={}", linker_bin.display());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");

    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_bin.clone()];
    paths.extend(env::split_paths(&path));
    let path = env::join_paths(paths).context("joining PATH")?;
    // SAFETY: build scripts are single-threaded at this point; the nested cargo inherits these.
    unsafe {
        env::set_var("PATH", &path);
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    if env::var_os("AYA_BUILD_SKIP").is_none() && which_bpf_linker(&path).is_none() {
        return Err(anyhow!(
            "bpf-linker not found in {} or on PATH: run `cargo xtask setup` first",
            linker_bin.display()
        ));
    }

    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let ebpf_dir = workspace.join("lb-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the XDP object (lb-ebpf)")
}

fn which_bpf_linker(path: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
