//! Stream listeners: `mode = "tcp"` (each connection forwarded to a backend as a byte stream,
//! TLS passed through and routed by the ClientHello's SNI, PROXY header sent when the pool
//! asks) and `mode = "udp"` (datagrams relayed per client session).
//!
//! Both use the pools of the HTTP proxy (same selection algorithms and in-flight counts, so
//! least_conn sees HTTP requests and stream connections alike). Consistent hashing keys on
//! the client's IP address (the true client when a trusted PROXY header named one); header and
//! cookie keys are refused for stream routes at config load.
mod relay;
mod sni;
mod tcp;
mod udp;

use std::{
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use super::{
    config::{HostMatch, ListenerConfig, ListenerMode, RouteConfig, StreamSettings},
    proxy::Proxy,
    server::L7Error,
};

/// One route of a stream listener: connections whose SNI matches (any, when `sni` is None)
/// go to `pool`.
struct StreamRoute {
    sni: Option<HostMatch>,
    pool: String,
}

/// What every connection or datagram of one stream listener needs.
struct StreamListener {
    name: Arc<str>,
    routes: Vec<StreamRoute>,
    /// Trusted PROXY-header senders and the deadline for their header (tcp only).
    trust: Option<(Vec<ipnet::IpNet>, std::time::Duration)>,
    settings: StreamSettings,
    proxy: Arc<arc_swap::ArcSwap<Proxy>>,
}

impl StreamListener {
    /// The pool for a connection with this SNI: the first route that matches, in file order.
    fn route(&self, sni: Option<&str>) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| {
                r.sni
                    .as_ref()
                    .is_none_or(|m| sni.is_some_and(|name| m.matches(name)))
            })
            .map(|r| r.pool.as_str())
    }

    /// Whether connections must be read up to the ClientHello before routing.
    fn routes_by_sni(&self) -> bool {
        self.routes.iter().any(|r| r.sni.is_some())
    }
}

/// Binds a tcp or udp listener and starts serving it; returns the bound address and the task
/// (aborting it stops accepting).
pub(super) async fn start(
    l: &ListenerConfig,
    routes: &[RouteConfig],
    proxy: Arc<arc_swap::ArcSwap<Proxy>>,
) -> Result<(SocketAddr, JoinHandle<()>), L7Error> {
    let bind_error = |source| L7Error::Bind {
        name: l.name.clone(),
        addr: l.addr,
        source,
    };
    let listener = StreamListener {
        name: Arc::from(l.name.as_str()),
        routes: routes
            .iter()
            .filter(|r| r.listener == l.name)
            .map(|r| StreamRoute {
                sni: r.sni.clone(),
                pool: r.pool.clone(),
            })
            .collect(),
        trust: (!l.proxy_protocol_from.is_empty())
            .then(|| (l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)),
        settings: l.stream.clone(),
        proxy,
    };
    if l.mode == ListenerMode::Udp {
        let socket = UdpSocket::bind(l.addr).await.map_err(bind_error)?;
        let bound = socket.local_addr().unwrap_or(l.addr);
        let task = tokio::spawn(udp::serve(Arc::new(socket), Arc::new(listener)));
        return Ok((bound, task));
    }
    let socket = TcpListener::bind(l.addr).await.map_err(bind_error)?;
    let bound = socket.local_addr().unwrap_or(l.addr);
    let task = tokio::spawn(tcp::accept_loop(socket, Arc::new(listener)));
    Ok((bound, task))
}

/// The selection key of a client: its IP address, hashed as the HTTP proxy's `client_ip`
/// key hashes it (so a client reaches the same backend over HTTP and TCP).
fn client_key(ip: IpAddr) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut hasher);
    hasher.finish()
}
