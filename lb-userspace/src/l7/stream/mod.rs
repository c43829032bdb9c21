//! Stream listeners: `mode = "tcp"` (each connection forwarded to a backend as a byte stream,
//! TLS passed through and routed by the ClientHello's SNI, PROXY header sent when the pool
//! asks) and `mode = "udp"` (datagrams relayed per client session).
//!
//! Both use the pools of the HTTP proxy (same selection algorithms and in-flight counts, so
//! least_conn sees HTTP requests and stream connections alike). Consistent hashing keys on
//! the client's IP address (the true client when a trusted PROXY header named one); header and
//! cookie keys are refused for stream routes at config load.
pub(super) mod relay;
pub(super) mod sni;
mod splice;
mod tcp;
mod udp;

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{
    config::{HostMatch, ListenerConfig, StreamSettings},
    lifecycle::Tracker,
    proxy::Proxy,
    server::BoundSocket,
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
    /// `max_connections_per_client` (tcp).
    per_client: Option<Arc<super::client_limit::ClientConnections>>,
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

/// Starts serving a tcp or udp listener on its bound socket (`server::bind`); aborting the
/// task stops it (the socket stays open while the caller holds it). Its tcp connections are
/// counted by `tracker` into the graceful stop.
pub(super) fn spawn(
    l: &ListenerConfig,
    routes: &[(Option<HostMatch>, String)],
    socket: BoundSocket,
    proxy: Arc<arc_swap::ArcSwap<Proxy>>,
    tracker: Tracker,
) -> JoinHandle<()> {
    let listener = Arc::new(StreamListener {
        name: Arc::from(l.name.as_str()),
        routes: routes
            .iter()
            .map(|(sni, pool)| StreamRoute {
                sni: sni.clone(),
                pool: pool.clone(),
            })
            .collect(),
        trust: (!l.proxy_protocol_from.is_empty())
            .then(|| (l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)),
        settings: l.stream.clone(),
        proxy,
        per_client: l
            .max_connections_per_client
            .map(super::client_limit::ClientConnections::new),
    });
    match socket {
        BoundSocket::Udp(socket) => tokio::spawn(udp::serve(socket, listener)),
        // tcp relays get the graceful stop's grace; udp sessions end with their listener.
        BoundSocket::Tcp(socket) => tokio::spawn(tcp::accept_loop(socket, listener, tracker)),
    }
}
