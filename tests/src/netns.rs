//! Network namespaces and veth pairs for tests (and `cargo xtask demo`), always cleaned up.
//!
//! Only std, libc and anyhow: `xtask` includes this file by path so the demo and the tests share
//! one rig without xtask depending on the eBPF build.
//!
//! Names are `<prefix>-<pid>-<n>-<role>`: unique per process and call, and carrying the owner's
//! pid so [`sweep_stale`] can remove what a killed run left behind without touching namespaces
//! of runs still alive.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; returns stdout, or an error carrying the command and its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that is deleted (with every process still in it killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>-<role>` with its loopback up.
    pub fn new(prefix: &str, role: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{id}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Moves the calling thread into this namespace (only this thread: see `setns(2)`).
    pub fn enter_current_thread(&self) -> Result<()> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        // SAFETY: plain syscall on a valid fd we own for the duration of the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", self.name));
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. A panic in `f` is
    /// propagated to the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)?
            .join()
            .map_err(|panic| anyhow!("thread in {} panicked: {panic:?}", self.name))
    }

    /// Starts `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<T>> {
        let path = self.path();
        let name = self.name.clone();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                // SAFETY: plain syscall on a valid fd owned by this closure.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {name}: {}",
                    std::io::Error::last_os_error()
                );
                drop(file);
                f()
            })
            .context("spawning a thread")
    }

    /// Pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        ip(&["netns", "pids", &self.name])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// Kills every process in namespace `name`, then deletes it (best effort, warns on failure).
pub fn delete_netns(name: &str) {
    if let Ok(out) = ip(&["netns", "pids", name]) {
        for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain syscall; the pid came from the kernel a moment ago.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(err) = ip(&["netns", "del", name]) {
        eprintln!("warning: could not delete network namespace {name}: {err:#}");
    }
}

/// Deletes namespaces named `<prefix>-<pid>-...` whose owning process is gone.
pub fn sweep_stale(prefix: &str) {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            delete_netns(name);
        }
    }
}

/// One end of a veth pair: the namespace it lives in, its name and addresses (CIDR notation).
pub struct VethEnd<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub addrs: &'a [&'a str],
}

/// Creates a veth pair between two namespaces, assigns the addresses (IPv6 without DAD so they
/// are usable at once) and brings both ends up. The pair goes away with either namespace.
pub fn veth_pair(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<()> {
    ip(&[
        "link",
        "add",
        a.name,
        "netns",
        a.ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.name,
        "netns",
        b.ns.name(),
    ])?;
    for end in [&a, &b] {
        for addr in end.addrs {
            let mut args = vec!["addr", "add", addr, "dev", end.name];
            if addr.contains(':') {
                args.push("nodad");
            }
            end.ns.ip(&args)?;
        }
        end.ns.ip(&["link", "set", end.name, "up"])?;
    }
    Ok(())
}

/// True when running as root. Without root: panics when `CI=true` (a privileged test must fail
/// there, not skip), otherwise prints why the test is skipped and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (network namespaces, BPF) and CI=true: refusing to skip");
    }
    eprintln!("skipping {test}: needs root (network namespaces, BPF)");
    false
}
