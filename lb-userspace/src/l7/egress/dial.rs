//! Dialing the addresses a target resolved to and the guard allowed, Happy Eyeballs style
//! (RFC 8305): families interleaved (the resolver's first address leads), a new attempt every
//! [`ATTEMPT_DELAY`] while the earlier ones are still trying, and at once when one fails; the
//! first connection wins and the others are dropped. An address that silently drops SYNs (a
//! dead IPv6 path, a firewalled host) so costs a client 250 ms instead of a whole connect
//! timeout, as with curl, browsers and Envoy's dynamic forward proxy. Only these addresses are
//! ever dialed: nothing is resolved again.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use tokio::net::TcpStream;

/// RFC 8305's recommended Connection Attempt Delay.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// How long one attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `addresses` with the families alternating, starting with the first address's family, each
/// family in its given order.
pub fn interleave(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let Some(first) = addresses.first() else {
        return Vec::new();
    };
    let (mut leading, mut other): (Vec<IpAddr>, Vec<IpAddr>) = addresses
        .iter()
        .partition(|ip| ip.is_ipv4() == first.is_ipv4());
    leading.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(addresses.len());
    while !leading.is_empty() || !other.is_empty() {
        out.extend(leading.pop());
        out.extend(other.pop());
    }
    out
}

/// Connects to one of `addresses` on `port` (see the module comment); None when none answered.
pub async fn dial(
    addresses: impl IntoIterator<Item = IpAddr>,
    port: u16,
) -> Option<(TcpStream, SocketAddr)> {
    let addresses: Vec<IpAddr> = addresses.into_iter().collect();
    let mut queue = interleave(&addresses)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .peekable();
    let mut running = FuturesUnordered::new();
    running.push(attempt(queue.next()?));
    let mut next_at = tokio::time::Instant::now() + ATTEMPT_DELAY;
    loop {
        tokio::select! {
            Some((addr, result)) = running.next() => match result {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, addr));
                }
                Err(err) => {
                    tracing::debug!(%addr, %err, "egress: connect failed");
                    if let Some(next) = queue.next() {
                        running.push(attempt(next));
                        next_at = tokio::time::Instant::now() + ATTEMPT_DELAY;
                    } else if running.is_empty() {
                        return None;
                    }
                }
            },
            () = tokio::time::sleep_until(next_at), if queue.peek().is_some() => {
                if let Some(next) = queue.next() {
                    running.push(attempt(next));
                }
                next_at = tokio::time::Instant::now() + ATTEMPT_DELAY;
            }
        }
    }
}

async fn attempt(addr: SocketAddr) -> (SocketAddr, std::io::Result<TcpStream>) {
    let result = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    };
    (addr, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn families_alternate_from_the_first_answer() {
        assert_eq!(
            interleave(&ips(&[
                "2001:db8::1",
                "2001:db8::2",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3"
            ])),
            ips(&[
                "2001:db8::1",
                "192.0.2.1",
                "2001:db8::2",
                "192.0.2.2",
                "192.0.2.3"
            ])
        );
        assert_eq!(
            interleave(&ips(&["192.0.2.1", "2001:db8::1", "192.0.2.2"])),
            ips(&["192.0.2.1", "2001:db8::1", "192.0.2.2"])
        );
        assert_eq!(interleave(&[]), Vec::<IpAddr>::new());
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to
    /// it hangs (what a dead path looks like), on loopback.
    fn black_hole(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>, u16) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(ip.parse().expect("ip"), 0).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        // Backlog 0 holds one connection; with it queued (never accepted), the next SYN
        // is dropped.
        let mut filled = Vec::new();
        for _ in 0..2 {
            if let Ok(conn) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            {
                filled.push(conn);
            }
        }
        (socket, filled, addr.port())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_address_costs_one_attempt_delay_not_a_timeout() {
        let (_hole, _filled, port) = black_hole("127.0.0.2");
        // The same port on another loopback address answers.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let started = tokio::time::Instant::now();
        let (_tcp, addr) = dial(ips(&["127.0.0.2", "127.0.0.1"]), port)
            .await
            .expect("connected");
        assert_eq!(addr, SocketAddr::new(ips(&["127.0.0.1"])[0], port));
        // The paused clock moves only when everything waits on a timer: one attempt delay
        // passed, not the silent address's whole connect timeout.
        assert!(
            started.elapsed() < CONNECT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        drop(listener);
    }

    #[tokio::test]
    async fn refused_addresses_are_skipped_at_once_and_none_answering_is_none() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        assert!(dial(ips(&["127.0.0.1", "127.0.0.3"]), port).await.is_none());
        let listener = tokio::net::TcpListener::bind(("127.0.0.4", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (_tcp, addr) = dial(ips(&["127.0.0.5", "127.0.0.4"]), port)
            .await
            .expect("the second answers");
        assert_eq!(addr.ip(), ips(&["127.0.0.4"])[0]);
    }
}
