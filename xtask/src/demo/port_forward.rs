//! A TCP port forward from the host into a namespace: the demo process listens on the host's
//! loopback and, for each connection, opens one from inside the namespace (a socket belongs to
//! the namespace of the thread that created it) and copies bytes both ways. This puts lb's
//! admin page on the operator's `127.0.0.1` without adding any interface or route to the
//! host's own network namespace.
use std::{
    fs::File,
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow};

/// Listens on `127.0.0.1:preferred_port` (any free port if that one is taken) and forwards
/// every connection to `target` inside the namespace at `netns_path`. Runs until the process
/// exits; returns the address it listens on.
pub fn start(preferred_port: u16, netns_path: PathBuf, target: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", preferred_port))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .context("binding a loopback port for the admin page")?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let netns_path = netns_path.clone();
                thread::spawn(move || {
                    if let Err(err) = forward(conn, &netns_path, target)
                        && !super::interrupted()
                    {
                        eprintln!("demo: admin port forward: {err:#}");
                    }
                });
            }
        })
        .context("spawning the port-forward thread")?;
    Ok(addr)
}

fn forward(client: TcpStream, netns_path: &Path, target: SocketAddr) -> Result<()> {
    let upstream = connect_in(netns_path, target)?;
    let (client_read, upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let one_way = thread::spawn(move || copy_then_shutdown(client_read, upstream_write));
    copy_then_shutdown(upstream, client);
    let _ = one_way.join();
    Ok(())
}

fn copy_then_shutdown(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Connects to `target` from inside the namespace, on a short-lived thread that entered it
/// (only that thread changes namespace; the socket stays in it afterwards).
pub(super) fn connect_in(netns_path: &Path, target: SocketAddr) -> Result<TcpStream> {
    let ns = File::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
    thread::spawn(move || -> Result<TcpStream> {
        // SAFETY: plain syscall on a valid fd owned by this closure.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
        TcpStream::connect(target).with_context(|| format!("connecting {target} in the namespace"))
    })
    .join()
    .map_err(|_| anyhow!("the connecting thread panicked"))?
}
