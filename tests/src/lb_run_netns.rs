//! `lb run` as a child process inside a test namespace, killed on drop.
//!
//! The child enters the namespace with `setns` before `exec` instead of `ip netns exec`:
//! the latter also gives the process a private mount namespace with a fresh `/sys`, so pins
//! under `/sys/fs/bpf` would live and die with that one process.
use std::{
    ffi::OsStr,
    fs::File,
    io::{BufRead, BufReader, Lines},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{lb_bin, netns::Netns};

pub struct LbRun {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// What it printed up to and including its admin line.
    pub startup: Vec<String>,
}

impl LbRun {
    /// Starts `lb run ARGS` in `ns` and waits until it prints its admin line (it is serving).
    pub fn start<I, S>(ns: &Netns, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let netns = File::open(ns.path()).expect("open netns");
        let fd = netns.as_raw_fd();
        let mut command = Command::new(lb_bin());
        command
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn lb run");
        drop(netns);
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut lb = Self {
            child,
            stdout,
            startup: Vec::new(),
        };
        lb.wait_line("admin ");
        lb
    }

    /// Reads stdout until a line starting with `prefix`; returns it (all lines read are kept
    /// in `startup`).
    pub fn wait_line(&mut self, prefix: &str) -> String {
        loop {
            match self.stdout.next() {
                Some(Ok(line)) => {
                    self.startup.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Some(Err(e)) => panic!("reading lb output: {e}"),
                None => panic!(
                    "lb run exited before printing {prefix:?}: {:?}",
                    self.child.wait()
                ),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit.
    pub fn stop(mut self, limit: Duration) -> ExitStatus {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "lb run did not stop within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LbRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pin directory for one test, `/sys/fs/bpf/lbt-<pid>-<tag>`: the pins in it are removed on
/// drop (even when the test fails), and creating one first removes those of test runs whose
/// process is gone.
pub struct PinDir {
    pub path: std::path::PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        sweep_stale_pins();
        let path = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/{}-{}-{tag}",
            crate::NETNS_PREFIX,
            std::process::id()
        ));
        let _ = lb::xdp::pin::remove_pins(&path);
        Self { path }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(err) = lb::xdp::pin::remove_pins(&self.path) {
            eprintln!("warning: pins in {} left: {err}", self.path.display());
        }
    }
}

fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    let prefix = format!("{}-", crate::NETNS_PREFIX);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = lb::xdp::pin::remove_pins(&entry.path());
        }
    }
}
