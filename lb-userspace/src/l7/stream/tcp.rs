//! TCP listeners: accept, PROXY header from trusted peers, ClientHello SNI (when the
//! listener has sni routes), route, connect to a backend (another one on failure, up to the
//! pool's retries, each within its connect timeout), PROXY header to the backend when the
//! pool sends one, the buffered bytes, then a relay until both sides are done.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use super::{
    StreamListener,
    relay::{self, RelayEnd},
    sni,
};
use crate::l7::{
    lifecycle::Tracker, pool::Pool, proxy_header, selection::InFlightGuard, server::LocalAddress,
    traffic::OpenConnection,
};

pub(super) async fn accept_loop(
    socket: Arc<TcpListener>,
    listener: Arc<StreamListener>,
    tracker: Tracker,
) {
    // The status page's connections and bytes of this listener.
    let traffic = listener
        .proxy
        .load()
        .observer()
        .listener_traffic(&listener.name);
    let local_address = LocalAddress::of_listener(&socket);
    loop {
        let (tcp, socket_peer) = match socket.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(listener = %listener.name, %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let listener = listener.clone();
        let open = traffic.clone().map(OpenConnection::new);
        let relay =
            async move { connection(tcp, socket_peer, local_address, &listener, open).await };
        tokio::spawn(tracker.admit().run(relay));
    }
}

/// One client connection, from accept to the end of its relay (`open`: counted open on the
/// status page until then; its bytes are added when the relay ends).
async fn connection(
    mut tcp: TcpStream,
    socket_peer: SocketAddr,
    local_address: LocalAddress,
    listener: &StreamListener,
    open: Option<OpenConnection>,
) {
    let _ = tcp.set_nodelay(true);
    let mut client = socket_peer;
    if let Some((_, deadline)) = listener
        .trust
        .as_ref()
        .filter(|(nets, _)| nets.iter().any(|n| n.contains(&socket_peer.ip())))
    {
        match proxy_header::read(&mut tcp, *deadline).await {
            Ok(Some(named)) => client = named,
            Ok(None) => {}
            Err(err) => {
                let proxy = listener.proxy.load();
                proxy.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%socket_peer, %err, "PROXY header rejected");
                return;
            }
        }
    }
    // The generation's meters only for this check (a load guard is not for holding).
    let admitted = {
        let proxy = listener.proxy.load();
        crate::l7::client_limit::admit_on(
            listener.per_client.as_ref(),
            client.ip(),
            &listener.name,
            proxy.meters(),
        )
    };
    let Ok(_slot) = admitted else { return };
    let Some(local) = local_address.of(&tcp) else {
        return;
    };
    let proxy = listener.proxy.load_full();
    let ended = |outcome, bytes_in, bytes_out| {
        proxy
            .meters()
            .stream_connection(&listener.name, outcome, bytes_in, bytes_out);
        if let Some(open) = &open {
            open.stats().add_bytes(bytes_in, bytes_out);
        }
    };
    let (first_bytes, server_name) = if listener.routes_by_sni() {
        // Boxed: the ClientHello reader's state (kilobytes) would otherwise be part of
        // every connection task of every tcp listener, copied when it is spawned and ends.
        match Box::pin(sni::read(&mut tcp, listener.settings.client_hello_timeout)).await {
            Ok(hello) => (hello.bytes, hello.server_name),
            Err(err) => {
                tracing::debug!(listener = %listener.name, %client, %err, "no ClientHello");
                return ended("no_client_hello", 0, 0);
            }
        }
    } else {
        // HAProxy reads the client at once for the same reason: a flood of connect-then-RST
        // must not cost a backend connection each.
        if client_reset(&tcp) {
            return ended("client_reset", 0, 0);
        }
        (Vec::new(), None)
    };
    let Some(pool) = listener
        .route(server_name.as_deref())
        .and_then(|name| proxy.pool(name))
    else {
        tracing::debug!(listener = %listener.name, %client, sni = ?server_name, "no route");
        return ended("no_route", 0, 0);
    };
    let Some((mut upstream, _inflight)) = connect(pool, client).await else {
        tracing::debug!(pool = %pool.config.name, %client, "no backend reachable");
        return ended("no_backend", 0, 0);
    };
    // The PROXY header and the bytes already read go out before anything else.
    let mut preface = pool.config.proxy_protocol.map_or_else(Vec::new, |version| {
        proxy_header::encode(
            version,
            client,
            local,
            proxy.observer().flow_id(socket_peer, local),
        )
    });
    preface.extend_from_slice(&first_bytes);
    if !preface.is_empty() && upstream.write_all(&preface).await.is_err() {
        return ended("relayed", 0, 0);
    }
    let name = &listener.name;
    let early = first_bytes.len() as u64;
    match relay::relay(tcp, upstream, listener.settings.idle_timeout).await {
        RelayEnd::Done(sent, received) => {
            tracing::debug!(listener = %name, %client, sent, received, "stream done");
            ended("relayed", sent + early, received);
        }
        RelayEnd::Idle => {
            tracing::debug!(listener = %name, %client, "stream idle: closed");
            ended("relayed", early, 0);
        }
        RelayEnd::Error(err) => {
            tracing::debug!(listener = %name, %client, %err, "stream failed");
            ended("relayed", early, 0);
        }
    }
}

/// Whether the client has already reset the connection (it was in the accept queue when the
/// RST came). A peek: bytes the client sent stay for the relay; one syscall.
fn client_reset(tcp: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking: no data yet is WouldBlock.
    match socket2::SockRef::from(tcp).peek(&mut byte) {
        Ok(_) => false,
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// A connection to a backend of `pool`, counted in flight for as long as the guard lives; on a
/// failed or timed-out connect, another backend (never one tried), up to `retries` times.
async fn connect(pool: &Pool, client: SocketAddr) -> Option<(TcpStream, InFlightGuard<'_>)> {
    let key = crate::l7::forward::client_ip_key(client.ip());
    let mut tried = Vec::new();
    for _ in 0..=pool.config.retries {
        let i = pool.pick(key, &tried)?;
        tried.push(i);
        let guard = pool.inflight.start(i);
        let backend = pool.config.backends[i].addr;
        match tokio::time::timeout(pool.config.connect_timeout, TcpStream::connect(backend)).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                // The backend's totals and passive health count connections here.
                pool.record(i, crate::l7::upstream::Attempt::Connected);
                return Some((upstream, guard));
            }
            Ok(Err(err)) => tracing::debug!(%backend, %err, "upstream connect failed"),
            Err(_) => tracing::debug!(%backend, "upstream connect timed out"),
        }
        pool.record(i, crate::l7::upstream::Attempt::Failed);
    }
    None
}
