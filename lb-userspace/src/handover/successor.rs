//! The old process's side of an upgrade: starts the binary on disk with this process's
//! arguments, its listening sockets mapped to descriptors 3, 4, ... and a pipe to report
//! readiness on, then waits for `ready` (or the new process's exit, or the timeout, after
//! which it is killed). The new process inherits stdout and stderr, so its start-up errors
//! land where this one's logs go.
use std::{
    io::Read as _,
    os::{fd::OwnedFd, unix::ffi::OsStrExt as _},
    process::{Child, Command},
    time::Duration,
};

use command_fds::{CommandFdExt as _, FdMapping};

use super::{HandedSocket, HandoverError, ManagerState, READY, READY_ENV, SOCKETS_ENV, STATE_ENV};

/// A new lb, started and not yet known to be ready.
pub struct Successor {
    child: Child,
    ready: std::io::PipeReader,
}

/// The first descriptor number the sockets get in the new process (after stdio).
const FIRST_FD: i32 = 3;

impl Successor {
    /// Starts the new lb with `sockets` (what each is, and a descriptor for it; the number in
    /// each `HandedSocket` is ignored and assigned here) and the manager's `state`.
    pub fn start(
        sockets: Vec<(HandedSocket, OwnedFd)>,
        state: &ManagerState,
    ) -> Result<Self, HandoverError> {
        let path = executable()?;
        let (ready, ready_writer) = std::io::pipe().map_err(HandoverError::Descriptors)?;
        let mut handed = Vec::with_capacity(sockets.len());
        let mut mappings = Vec::with_capacity(sockets.len() + 1);
        for ((mut socket, fd), child_fd) in sockets.into_iter().zip(FIRST_FD..) {
            socket.fd = child_fd;
            handed.push(socket);
            mappings.push(FdMapping {
                parent_fd: fd,
                child_fd,
            });
        }
        let ready_fd = FIRST_FD + i32::try_from(handed.len()).unwrap_or(i32::MAX - FIRST_FD);
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(ready_writer),
            child_fd: ready_fd,
        });
        let described = serde_json::to_string(&handed).map_err(HandoverError::BadSockets)?;
        let state = serde_json::to_string(state).map_err(HandoverError::BadState)?;
        let mut command = Command::new(&path);
        command
            .args(std::env::args_os().skip(1))
            .env(SOCKETS_ENV, described)
            .env(STATE_ENV, state)
            .env(READY_ENV, ready_fd.to_string())
            .fd_mappings(mappings)
            .map_err(|e| HandoverError::Descriptors(std::io::Error::other(e)))?;
        let child = command.spawn().map_err(|source| HandoverError::Spawn {
            path: path.display().to_string(),
            source,
        })?;
        // The command holds this process's copies of the descriptors (the pipe's write end
        // among them): dropped now, so the pipe ends when the new process closes its end.
        drop(command);
        Ok(Self { child, ready })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the new process is ready (Ok: its pid), has exited, or `timeout` passed
    /// (then it is killed: a process that is not ready must not keep the handed sockets).
    pub async fn ready(self, timeout: Duration) -> Result<u32, HandoverError> {
        let Self {
            mut child,
            mut ready,
        } = self;
        let pid = child.id();
        let said = tokio::task::spawn_blocking(move || {
            let mut said = Vec::new();
            // Reads until the new process writes `ready` and closes the pipe, or exits.
            let _ = (&mut ready).take(64).read_to_end(&mut said);
            said
        });
        let said = match tokio::time::timeout(timeout, said).await {
            Ok(said) => said.unwrap_or_default(),
            Err(_) => {
                // SIGKILL, not a stop request: a graceful stop of a half-started lb could
                // detach the XDP tier it was taking over.
                let _ = child.kill();
                let _ = child.wait();
                return Err(HandoverError::Timeout { pid, timeout });
            }
        };
        if said == READY {
            return Ok(pid);
        }
        // No `ready`: it exited (or closed the pipe, which only its exit does).
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|e| HandoverError::Wait(std::io::Error::other(e)))?
            .map_err(HandoverError::Wait)?;
        Err(HandoverError::Exited { pid, status })
    }
}

/// The binary to start: this process's own path, which after a package upgrade names the
/// new file (the kernel reports the replaced one as "PATH (deleted)").
fn executable() -> Result<std::path::PathBuf, HandoverError> {
    let exe = std::env::current_exe().map_err(HandoverError::Executable)?;
    let stripped = exe
        .as_os_str()
        .as_bytes()
        .strip_suffix(b" (deleted)")
        .map(|path| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path)));
    Ok(stripped.unwrap_or(exe))
}
