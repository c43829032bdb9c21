//! What one downstream connection carries to the upstream side: the address the client
//! connected to (for PROXY headers), and, for pools that send PROXY headers, its own pooled
//! clients. HAProxy calls such upstream connections "private": a PROXY header names one client
//! for the life of the connection, so it may be reused for that client's next requests but
//! never for another client's. The clients (and their idle connections) go when the
//! downstream connection closes.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use crate::l7::{headers::AddrText, pool::UpstreamClient};

pub struct ConnInfo {
    /// The client (the socket peer, or the one its PROXY header named) and its text, written
    /// into X-Forwarded-For / X-Real-IP of every request on this connection.
    pub peer: AddrText,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// The L4 flow id the XDP tier gave this connection (local VIPs only).
    pub flow_id: Option<u64>,
    /// The client certificate the listener verified (mTLS listeners).
    pub client_cert: Option<std::sync::Arc<crate::l7::client_cert::PeerCert>>,
    /// TLS listeners: the negotiated version (`TLSv1.3`) and the server name the client asked
    /// for (the access log's `tls_version` and `sni`).
    pub tls: Option<(&'static str, Option<std::sync::Arc<str>>)>,
    /// Counts what this connection turns into (a spliced WebSocket) into the graceful stop
    /// (None: not served by a listener, e.g. a cache's background refresh).
    pub tracker: Option<crate::l7::lifecycle::Tracker>,
    /// The listener's status-page totals its answers are counted in (None: not observed).
    pub traffic: Option<std::sync::Arc<crate::l7::traffic::TrafficStats>>,
    /// Pool name -> this connection's client for that pool.
    private: Mutex<HashMap<String, UpstreamClient>>,
}

impl ConnInfo {
    pub fn new(peer: IpAddr, local: SocketAddr, flow_id: Option<u64>) -> Self {
        Self {
            peer: AddrText::new(peer),
            local,
            flow_id,
            client_cert: None,
            tls: None,
            tracker: None,
            traffic: None,
            private: Mutex::new(HashMap::new()),
        }
    }

    /// This connection's client for `pool`, made by `build` the first time.
    pub fn private_client(
        &self,
        pool: &str,
        build: impl FnOnce() -> UpstreamClient,
    ) -> UpstreamClient {
        let mut clients = match self.private.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(client) = clients.get(pool) {
            return client.clone();
        }
        let client = build();
        clients.insert(pool.to_owned(), client.clone());
        client
    }
}
