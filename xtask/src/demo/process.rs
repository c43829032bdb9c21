//! A child process the demo started, stopped on drop (SIGTERM, then SIGKILL after a grace), so
//! an early return never leaves it running. Its stdout and stderr lines are echoed with a label.
use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Which of a child's streams are echoed to the terminal (stdout is always kept as lines).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    Both,
    StderrOnly,
}

pub struct Process {
    child: Child,
    label: String,
    /// Every stdout line, for callers waiting for a readiness line.
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr piped; lines are printed as `label | line` as
    /// `echo` says, and stdout lines are also kept for [`Process::wait_for_line`] and
    /// [`Process::stdout_lines`].
    pub fn spawn(cmd: &mut Command, label: &str, echo: Echo) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        forward_lines(stdout, label.to_owned(), echo == Echo::Both, Some(tx));
        forward_lines(stderr, label.to_owned(), true, None);
        Ok(Self {
            child,
            label: label.to_owned(),
            lines,
        })
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} printed no {prefix:?} line within {limit:?}", self.label)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({}) before printing {prefix:?}",
                        self.label,
                        status.map_or("status unknown".into(), |s| s.to_string())
                    )
                }
            }
        }
    }

    /// Every stdout line not consumed yet, after the process closed its stdout.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        self.lines.iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end on its own.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.label))
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.label))?;
        self.wait().map(drop)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process the demo did not start itself but must stop: the lb an upgrade started (a child
/// of the old lb, which has exited). Stopped on drop like a `Process`.
pub struct Successor {
    pid: i32,
    label: String,
}

impl Successor {
    pub fn new(pid: u32, label: &str) -> Result<Self> {
        Ok(Self {
            pid: i32::try_from(pid).context("pid")?,
            label: label.to_owned(),
        })
    }

    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the pid exists.
        let exists = unsafe { libc::kill(self.pid, 0) } == 0;
        // A zombie (exited, not yet reaped by init, its parent now) is gone.
        let zombie =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|state| state.trim_start().starts_with('Z'))
            });
        exists && !zombie
    }

    /// SIGINT, then waits (up to `limit`) for it to be gone. Its exit status belongs to its
    /// parent: its own log says how it stopped.
    pub fn interrupt(&mut self, limit: Duration) -> Result<()> {
        // SAFETY: plain syscall on a pid this demo learned from `lb upgrade` and checks alive.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                bail!(
                    "{} (pid {}) still running {limit:?} after SIGINT",
                    self.label,
                    self.pid
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: as in `interrupt`.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as in `interrupt`.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

fn signal(child: &Child, signal: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
        unsafe { libc::kill(pid, signal) };
    }
}

fn forward_lines(
    from: impl Read + Send + 'static,
    label: String,
    print: bool,
    lines: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if print {
                println!("{label} | {line}");
            }
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}
