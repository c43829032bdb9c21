//! UDP listeners: each client address is a session with its own connected upstream socket to
//! a backend chosen when the session starts (from the pool as it is then: a reload that
//! changes the pool reaches new sessions); the backend's replies go back to the client from
//! the listener's socket. A session ends after `idle_timeout` without a datagram either way
//! (checked every quarter of it, so it ends between 1 and 1.25 idle timeouts); at most
//! `max_sessions` at once (datagrams from further clients are dropped).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::UdpSocket, task::JoinHandle, time::Instant};

use super::StreamListener;
use crate::l7::{pool::Pool, selection::OwnedInFlightGuard};

/// Largest datagram relayed (the UDP maximum payload).
const MAX_DATAGRAM: usize = 65_535;

/// One client's session. Owned by the listener's task; dropping it ends the reply relay.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the listener started of the last datagram either way.
    last: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    _inflight: OwnedInFlightGuard,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

pub(super) async fn serve(socket: Arc<UdpSocket>, listener: Arc<StreamListener>) {
    let started = Instant::now();
    let idle = listener.settings.idle_timeout;
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut sweep = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(err) => {
                    // ICMP errors for earlier replies surface here; the socket is still fine.
                    tracing::debug!(listener = %listener.name, %err, "udp receive failed");
                    continue;
                }
            },
            _ = sweep.tick() => {
                let now = started.elapsed();
                sessions.retain(|_, s| {
                    now < Duration::from_millis(s.last.load(Ordering::Relaxed)) + idle
                });
                continue;
            }
        };
        if !sessions.contains_key(&client) {
            // The live pool, as tcp connections read it.
            let proxy = listener.proxy.load_full();
            let counted = |outcome| proxy.meters().stream_session(&listener.name, outcome);
            if sessions.len() >= listener.settings.max_sessions {
                tracing::debug!(listener = %listener.name, %client, "udp session cap reached");
                counted("session_cap");
                continue;
            }
            let Some(pool) = listener.route(None).and_then(|name| proxy.pool(name)) else {
                counted("no_route");
                continue;
            };
            let Some(session) = open(pool, client, &socket, started).await else {
                counted("no_backend");
                continue;
            };
            counted("started");
            sessions.insert(client, session);
        }
        if let Some(session) = sessions.get(&client) {
            session
                .last
                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Err(err) = session.upstream.send(&buf[..n]).await {
                tracing::debug!(%client, %err, "udp send upstream failed");
            }
        }
    }
}

/// A new session for `client`: a connected socket to a backend (another one if that fails,
/// up to the pool's retries) and the task relaying its replies.
async fn open(
    pool: &Pool,
    client: SocketAddr,
    socket: &Arc<UdpSocket>,
    started: Instant,
) -> Option<Session> {
    let key = crate::l7::forward::client_ip_key(client.ip());
    let mut tried = Vec::new();
    for _ in 0..=pool.config.retries {
        let i = pool.pick(key, &tried)?;
        tried.push(i);
        let backend = pool.config.backends[i].addr;
        let any: SocketAddr = if backend.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let upstream = match UdpSocket::bind(any).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "udp upstream socket");
                return None;
            }
        };
        if let Err(err) = upstream.connect(backend).await {
            tracing::debug!(%backend, %err, "udp upstream connect failed");
            pool.record(i, crate::l7::upstream::Attempt::Failed);
            continue;
        }
        // The backend's totals count sessions.
        pool.record(i, crate::l7::upstream::Attempt::Connected);
        let upstream = Arc::new(upstream);
        let last = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let replies = tokio::spawn(relay_replies(
            upstream.clone(),
            socket.clone(),
            client,
            last.clone(),
            started,
        ));
        return Some(Session {
            upstream,
            last,
            replies,
            _inflight: pool.inflight.start_owned(i),
        });
    }
    None
}

/// Backend datagrams of one session, sent back to its client from the listener's socket.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    started: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => {
                last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Err(err) = socket.send_to(&buf[..n], client).await {
                    tracing::debug!(%client, %err, "udp reply failed");
                }
            }
            // A port unreachable from the backend, reported on the connected socket.
            Err(err) => tracing::debug!(%client, %err, "udp receive from backend failed"),
        }
    }
}
