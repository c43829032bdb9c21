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
        let mut lb = Self { child, stdout };
        lb.wait_line("admin ");
        lb
    }

    /// Reads stdout until a line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        loop {
            match self.stdout.next() {
                Some(Ok(line)) if line.starts_with(prefix) => return line,
                Some(Ok(_)) => {}
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
