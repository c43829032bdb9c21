//! `cargo xtask setup`: idempotent; reports what it installed and what was already there.
use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{is_root, output, run};

/// bpf-linker release known to build against the LLVM of our pinned toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "nftables",
    "haproxy",
    "curl",
    "nghttp2-client",
    "nginx-light",
    "chromium",
    "redis-server",
    // promtool, to check lb's /metrics exposition.
    "prometheus",
    // The package check: systemd-analyze verify on the unit, man rendering the man page.
    "systemd",
    "man-db",
    // Clients of the forward-proxy tests: openssl s_client, Python's urllib.
    "openssl",
    "python3",
    // SYN floods from random sources at a VIP (l4_flood).
    "hping3",
    // The DNS server and the etcd backend discovery is tested against (discovery).
    "dnsmasq-base",
    "etcd-server",
    // The BGP speaker `[bgp]` runs, and the router of the cluster tests (l4_bgp).
    "bird2",
];

/// What setup found.
pub struct Toolchain {
    /// The rustup toolchain everything is built with.
    pub name: String,
}

pub fn setup(ws: &Path) -> Result<Toolchain> {
    let toolchain = build_tools(ws)?;
    // cargo-fuzz builds with this same toolchain and RUSTC_BOOTSTRAP=1 (see fuzz.rs), as the
    // XDP object is built: it needs no nightly of its own.
    cargo_tool(&toolchain, "fuzz", "cargo-fuzz")?;
    cargo_tool(&toolchain, "deny", "cargo-deny")?;
    apt_packages()?;
    eprintln!("setup: done");
    Ok(Toolchain { name: toolchain })
}

/// What building lb itself needs (the XDP object): rust-src and this checkout's bpf-linker.
/// `cargo xtask dist` runs just this, so a fresh clone packages without the test tools.
pub fn build_tools(ws: &Path) -> Result<String> {
    let toolchain = current_toolchain()?;
    eprintln!("setup: rust toolchain {toolchain}");
    rust_src(&toolchain)?;
    bpf_linker(ws, &toolchain)?;
    Ok(toolchain)
}

/// The toolchain cargo is running us with (rustup sets RUSTUP_TOOLCHAIN for its proxies).
fn current_toolchain() -> Result<String> {
    if let Ok(name) = std::env::var("RUSTUP_TOOLCHAIN") {
        return Ok(name);
    }
    let active = output(Command::new("rustup").args(["show", "active-toolchain"]))
        .context("rustup is required (https://rustup.rs)")?;
    active
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("rustup show active-toolchain printed nothing"))
}

fn rust_src(toolchain: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: rust-src already installed");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))?;
    eprintln!("setup: installed rust-src (needed by -Z build-std=core)");
    Ok(())
}

/// Builds bpf-linker against the toolchain's own libLLVM into `.tools/bpf-linker/<libLLVM file
/// name>/`, so a toolchain whose LLVM changes gets a fresh linker, and points
/// `.tools/bpf-linker/current` at it (lb-userspace/build.rs puts `current/bin` on PATH).
fn bpf_linker(ws: &Path, toolchain: &str) -> Result<()> {
    let sysroot =
        output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .min()
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM in {}: is {toolchain} a rustup toolchain?",
                lib_dir.display()
            )
        })?;
    let key = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("bad libLLVM path {}", libllvm.display()))?
        .to_owned();
    let version = output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("rustc -vV shows no LLVM version"))?
        .to_owned();

    let tools = ws.join(".tools");
    let root = tools.join("bpf-linker").join(&key);
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} for {key} already built");
    } else {
        let prefix = tools.join("llvm").join(&key);
        let prefix_lib = prefix.join("lib");
        fs::create_dir_all(&prefix_lib)
            .with_context(|| format!("creating {}", prefix_lib.display()))?;
        let link = prefix_lib.join("libLLVM.so");
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against {key} (LLVM {llvm_major}); takes a minute or two"
        );
        run(Command::new("rustup")
            .args(["run", toolchain, "cargo", "install", "--locked"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix))
        .context("building bpf-linker")?;
        eprintln!("setup: built bpf-linker into {}", bin.display());
    }
    let current = tools.join("bpf-linker").join("current");
    let tmp = tools.join("bpf-linker").join(".current.tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&key, &tmp).context("creating the bpf-linker/current link")?;
    fs::rename(&tmp, &current).context("switching bpf-linker/current")?;
    Ok(())
}

/// Installs the cargo subcommand `cargo SUBCOMMAND` from the crate `krate` when it is missing.
fn cargo_tool(toolchain: &str, subcommand: &str, krate: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["run", toolchain, "cargo", subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        eprintln!("setup: {krate} already installed");
        return Ok(());
    }
    eprintln!("setup: installing {krate} (a few minutes)");
    run(Command::new("rustup").args(["run", toolchain, "cargo", "install", "--locked", krate]))
        .with_context(|| format!("installing {krate}"))?;
    eprintln!("setup: installed {krate}");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages already installed: {}",
            APT_PACKAGES.join(" ")
        );
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "missing packages {} and no apt-get here: install them with your package manager",
            missing.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run setup as root (apt-get needs it), or install them yourself",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    eprintln!("setup: installed Debian packages {}", missing.join(" "));
    Ok(())
}
