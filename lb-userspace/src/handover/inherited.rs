//! The new process's side of an upgrade: the listening sockets the previous lb handed over,
//! adopted once at start, then taken one by one by the listeners that bind their addresses
//! (`take`), so the new process serves on the very sockets the old one did. What no listener
//! took is closed when the process reports ready (`report_ready`): a listener the new
//! configuration no longer has stops with the old process.
use std::{
    io::Write as _,
    net::SocketAddr,
    os::fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::Mutex,
};

use super::{
    HandedSocket, HandoverError, ManagerState, READY, READY_ENV, SOCKETS_ENV, STATE_ENV, Transport,
};

/// What this process was handed; None before `adopt_from_env` and when it was not started
/// by an upgrade.
static INHERITED: Mutex<Option<Inherited>> = Mutex::new(None);

#[derive(Debug, Default)]
struct Inherited {
    sockets: Vec<(HandedSocket, OwnedFd)>,
    /// The pipe to the old process, written once when this one is ready.
    ready: Option<std::fs::File>,
    /// The old process's drains and down backends, until the manager takes them.
    state: ManagerState,
}

/// Adopts the sockets and the readiness pipe the environment names. Returns whether this
/// process was started by an upgrade. Call once at start, before any listener binds.
pub fn adopt_from_env() -> Result<bool, HandoverError> {
    let Some(sockets) = std::env::var_os(SOCKETS_ENV) else {
        return Ok(false);
    };
    let handed: Vec<HandedSocket> =
        serde_json::from_slice(sockets.as_encoded_bytes()).map_err(HandoverError::BadSockets)?;
    let ready = match std::env::var(READY_ENV) {
        Ok(text) => Some(
            text.parse::<RawFd>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or(HandoverError::BadReadyFd(text))?,
        ),
        Err(_) => None,
    };
    let state = match std::env::var_os(STATE_ENV) {
        Some(text) => {
            serde_json::from_slice(text.as_encoded_bytes()).map_err(HandoverError::BadState)?
        }
        None => ManagerState::default(),
    };
    let mut adopted = Inherited {
        state,
        ..Inherited::default()
    };
    for socket in handed {
        let fd = adopt_socket(&socket)?;
        adopted.sockets.push((socket, fd));
    }
    // SAFETY: the previous lb mapped the pipe's write end to this number for this process
    // (`successor.rs`), and this is the only place that takes it (the environment is read
    // once, and `adopt_from_env` runs once, before anything else opens descriptors).
    adopted.ready = ready.map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    let mut slot = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Some(adopted);
    Ok(true)
}

/// Owns `socket.fd` once it is checked to be a socket of the kind it was handed as (a stray
/// number in the environment must not take over stdin or a file).
fn adopt_socket(socket: &HandedSocket) -> Result<OwnedFd, HandoverError> {
    let wrong = || HandoverError::NotASocket {
        fd: socket.fd,
        name: socket.name.clone(),
        addr: socket.addr,
        transport: socket.transport,
    };
    if socket.fd <= 2 {
        return Err(wrong());
    }
    // SAFETY: only borrowed for the duration of the type check below; a number that is not
    // an open descriptor makes getsockopt fail with EBADF, which is refused.
    let borrowed = unsafe { BorrowedFd::borrow_raw(socket.fd) };
    let kind = socket2::SockRef::from(&borrowed)
        .r#type()
        .map_err(|_| wrong())?;
    let expected = match socket.transport {
        Transport::Tcp => socket2::Type::STREAM,
        Transport::Udp => socket2::Type::DGRAM,
    };
    if kind != expected {
        return Err(wrong());
    }
    // SAFETY: the previous lb mapped this listening socket to this number for this process
    // (`successor.rs`); it is a socket of the right type (checked above) and nothing else in
    // this process knows the number.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.fd) })
}

/// The previous lb's drains and down backends (empty when not started by an upgrade, and
/// after the first call).
pub fn take_state() -> ManagerState {
    let mut slot = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_mut()
        .map(|inherited| std::mem::take(&mut inherited.state))
        .unwrap_or_default()
}

/// The handed-over socket for listener `name` on `addr`, if there is one: the one bound to
/// exactly `addr` (whatever its name), else, for a listener on port 0, the one this listener
/// had (its name, the same address but the port the kernel gave it).
pub fn take(transport: Transport, name: &str, addr: SocketAddr) -> Option<OwnedFd> {
    let mut slot = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let sockets = &mut slot.as_mut()?.sockets;
    let index = sockets
        .iter()
        .position(|(s, _)| s.transport == transport && s.addr == addr)
        .or_else(|| {
            (addr.port() == 0).then_some(())?;
            sockets.iter().position(|(s, _)| {
                s.transport == transport && s.name == name && s.addr.ip() == addr.ip()
            })
        })?;
    let (socket, fd) = sockets.swap_remove(index);
    tracing::info!(listener = %socket.name, addr = %socket.addr, "serving on the socket handed over by the previous lb");
    Some(fd)
}

/// A handed-over TCP listener for `name` on `addr`, ready for tokio.
pub fn take_tcp(name: &str, addr: SocketAddr) -> Option<std::io::Result<tokio::net::TcpListener>> {
    let fd = take(Transport::Tcp, name, addr)?;
    let listener = std::net::TcpListener::from(fd);
    Some(
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener)),
    )
}

/// A handed-over UDP socket for `name` on `addr`, ready for tokio.
pub fn take_udp(name: &str, addr: SocketAddr) -> Option<std::io::Result<tokio::net::UdpSocket>> {
    let fd = take(Transport::Udp, name, addr)?;
    let socket = std::net::UdpSocket::from(fd);
    Some(
        socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(socket)),
    )
}

/// Everything is up: tells the previous lb (which then stops accepting and drains) and closes
/// the handed-over sockets no listener took. Returns whether there was a previous lb to tell.
pub fn report_ready() -> bool {
    let mut slot = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(inherited) = slot.take() else {
        return false;
    };
    for (socket, _) in &inherited.sockets {
        tracing::info!(listener = %socket.name, addr = %socket.addr, "closing a handed-over socket no listener uses now");
    }
    if let Some(mut pipe) = inherited.ready
        && let Err(e) = pipe.write_all(READY)
    {
        // The old process is gone or gave up on us: we serve anyway.
        tracing::warn!(%e, "telling the previous lb this one is ready");
    }
    true
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn only_sockets_of_the_handed_kind_are_adopted() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let handed = |fd, transport| HandedSocket {
            fd,
            transport,
            name: "web".into(),
            addr,
        };
        // A TCP socket handed as UDP, stdin, a closed number: all refused.
        assert!(adopt_socket(&handed(tcp.as_raw_fd(), Transport::Udp)).is_err());
        assert!(adopt_socket(&handed(0, Transport::Tcp)).is_err());
        assert!(adopt_socket(&handed(100_000, Transport::Tcp)).is_err());
    }
}
