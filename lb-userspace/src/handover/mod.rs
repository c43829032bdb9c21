//! Hitless binary upgrade (`lb upgrade`, SIGUSR2): the running lb starts the binary on disk
//! with its own arguments and hands it its listening sockets as inherited descriptors (the
//! same sockets, so no connection waiting in an accept queue is lost and no client is ever
//! refused), waits for the new process to say it is ready, then stops accepting and drains.
//! A new process that fails to start leaves the old one serving. NGINX's USR2, HAProxy's
//! `-x` and Pingora's `upgrade_sock` are the models.
//!
//! - `inherited.rs`: the new process's side: the sockets it was given, taken by the
//!   listeners (and the admin server) that match them, and the readiness report.
//! - `successor.rs`: the old process's side: starting the new one and waiting for it.
//!
//! Between the two processes travel three environment variables: `LB_HANDOVER_SOCKETS` (JSON:
//! which descriptor is which listener), `LB_HANDOVER_STATE` (JSON: the operator's drains and
//! the backends health checks hold down, so the new process neither sends traffic to a dead
//! backend until its checks catch up nor forgets a drain) and `LB_HANDOVER_READY_FD` (the
//! write end of a pipe on which the new process writes `ready` once listeners, configuration
//! and the XDP tier are up).
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub mod inherited;
pub mod successor;

pub use successor::Successor;

/// Which descriptor is which listening socket.
pub const SOCKETS_ENV: &str = "LB_HANDOVER_SOCKETS";
/// The manager's state the new process starts from.
pub const STATE_ENV: &str = "LB_HANDOVER_STATE";
/// The descriptor the new process reports readiness on.
pub const READY_ENV: &str = "LB_HANDOVER_READY_FD";
/// What the new process writes when it is ready.
const READY: &[u8] = b"ready\n";
/// The name the admin listener is handed over under (listener names cannot start with `@`).
pub const ADMIN_LISTENER: &str = "@admin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

/// One listening socket as handed over: the descriptor number in the new process, and what
/// it listens for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedSocket {
    pub fd: i32,
    pub transport: Transport,
    /// The listener's name (`ADMIN_LISTENER` for the admin server).
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

/// What the manager knows that the configuration does not say, carried to the new process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerState {
    /// (pool, backend) drained by the operator.
    pub drained: Vec<(String, SocketAddr)>,
    /// (pool, backend) its health checks hold down.
    pub down: Vec<(String, SocketAddr)>,
    /// `lb ctl drain-node` was in force.
    #[serde(default)]
    pub node_drained: bool,
    /// The BIRD the old process runs (`[bgp]`): the new one starts its own once that one
    /// has stopped (two on one control socket and one BGP peer address would fight).
    #[serde(default)]
    pub bird_pid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{SOCKETS_ENV} is not valid: {0}")]
    BadSockets(serde_json::Error),
    #[error("{STATE_ENV} is not valid: {0}")]
    BadState(serde_json::Error),
    #[error("{READY_ENV} is not a descriptor number: {0:?}")]
    BadReadyFd(String),
    #[error("descriptor {fd} handed over as {name} ({addr}) is not a {transport:?} socket")]
    NotASocket {
        fd: i32,
        name: String,
        addr: SocketAddr,
        transport: Transport,
    },
    #[error("finding the lb binary to start")]
    Executable(#[source] std::io::Error),
    #[error("starting {path}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the sockets for the new process")]
    Descriptors(#[source] std::io::Error),
    #[error("the new lb (pid {pid}) exited before it was ready ({status})")]
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
    },
    #[error("the new lb (pid {pid}) was not ready within {timeout:?}; it was killed")]
    Timeout {
        pid: u32,
        timeout: std::time::Duration,
    },
    #[error("waiting for the new lb: {0}")]
    Wait(#[source] std::io::Error),
}
