//! Listeners: bind, accept, PROXY header from trusted peers, TLS, and HTTP/1.1 + HTTP/2
//! connection serving (hyper-util's auto server) with the listener's limits. Each request is
//! handed to `proxy::Proxy::handle`.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use tokio::net::{TcpListener, UdpSocket};

use super::{
    config::{HostMatch, L7Config, ListenerConfig, ListenerMode, RouteConfig},
    counted_io::CountedIo,
    h2_guard::{H2Close, H2Guard},
    http_conn::{HttpBuilders, Protocol},
    hygiene::HeadGuard,
    lifecycle::{Lifecycle, ListenerGate},
    overload::GlobalLimits,
    proxy::Proxy,
    tls::CertReloader,
    traffic::OpenConnection,
};

#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    #[error("binding listener {name} on {addr}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {name}: {source}")]
    Tls {
        name: String,
        #[source]
        source: super::tls::TlsError,
    },
    #[error("pool {pool}: {source}")]
    Pool {
        pool: String,
        #[source]
        source: crate::maglev::MaglevError,
    },
}

/// Running listeners; dropping this stops accepting.
pub struct RunningL7 {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Accept loops, one per listener, with the listener's settings as they were started.
    tasks: Vec<ListenerTask>,
    /// Routes, pools and per-listener request rules; swapped whole by `reload`. Each request
    /// reads the current one, so keep-alive connections follow a reload.
    proxy: Arc<ArcSwap<Proxy>>,
    lifecycle: Arc<Lifecycle>,
}

/// A listening socket. Shared by the accept loop and its `ListenerTask`, so a reload that
/// restarts a listener on the same address hands the same socket to the next accept loop
/// (connections waiting in its queue are not refused).
#[derive(Clone, Debug)]
pub(super) enum BoundSocket {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

impl BoundSocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Tcp(s) => s.local_addr(),
            Self::Udp(s) => s.local_addr(),
        }
    }

    fn is_udp(&self) -> bool {
        matches!(self, Self::Udp(_))
    }
}

/// Everything a listener runs with: a running listener whose settings equal the next
/// configuration's is kept as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ListenerSettings {
    /// The listener's configuration, with its bound address (a listener on port 0 is
    /// unchanged when the next configuration says port 0 again, or its actual port).
    pub config: ListenerConfig,
    /// tcp/udp listeners: their routes, (sni, pool) in file order (empty for http listeners,
    /// whose routes live in the proxy).
    pub stream_routes: Vec<(Option<HostMatch>, String)>,
}

impl ListenerSettings {
    fn new(l: &ListenerConfig, addr: SocketAddr, routes: &[RouteConfig]) -> Self {
        let stream_routes = if l.mode == ListenerMode::Http {
            Vec::new()
        } else {
            routes
                .iter()
                .filter(|r| r.listener == l.name)
                .map(|r| (r.sni.clone(), r.pool.clone()))
                .collect()
        };
        Self {
            config: ListenerConfig { addr, ..l.clone() },
            stream_routes,
        }
    }
}

struct ListenerTask {
    name: String,
    settings: ListenerSettings,
    socket: BoundSocket,
    /// HTTPS listeners: the acceptor (to restart the listener as it was) and what re-reads
    /// its certificates.
    tls: Option<(tokio_rustls::TlsAcceptor, CertReloader)>,
    task: tokio::task::JoinHandle<()>,
    bound: SocketAddr,
}

/// A listener about to start: its socket (None: to be bound once a stopping listener whose
/// address overlaps has released it) and its TLS configuration, all made before anything
/// changes.
struct Starting {
    settings: ListenerSettings,
    socket: Option<BoundSocket>,
    tls: Option<(tokio_rustls::TlsAcceptor, CertReloader)>,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub listeners_started: usize,
    pub listeners_stopped: usize,
    pub pools_rebuilt: usize,
}

impl RunningL7 {
    /// Connections closed because a trusted source sent no valid PROXY header in time.
    pub fn proxy_header_errors(&self) -> u64 {
        self.proxy
            .load()
            .proxy_header_errors
            .load(Ordering::Relaxed)
    }

    /// Has the access log writer reopen its file (queued lines are written first).
    pub fn reopen_logs(&self) {
        if let Some(log) = self.proxy.load().observer().access_log() {
            log.reopen();
        }
    }

    /// Purges `url` (`prefix`: every URL starting with it) from every route's cache and every
    /// forward-proxy listener's: how many keys went; None when nothing has a cache.
    pub fn purge(&self, url: &str, prefix: bool) -> Option<u64> {
        let routes = self.proxy.load().purge(url, prefix);
        let listeners = self
            .tasks
            .iter()
            .filter_map(|t| t.settings.config.egress.as_ref()?.cache.as_ref())
            .map(|cache| cache.purge(url, prefix))
            .reduce(|a, b| a + b);
        match (routes, listeners) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        }
    }

    /// Client connections open on the HTTP listeners now.
    pub fn open_connections(&self) -> u64 {
        self.lifecycle.open_connections() as u64
    }

    /// Listener `name`'s status-page totals (None: not observed, or no traffic yet).
    pub fn listener_traffic(&self, name: &str) -> Option<super::traffic::TrafficSnapshot> {
        self.proxy
            .load()
            .observer()
            .traffic()?
            .listener_snapshot(name)
    }

    /// Route `label`'s status-page totals (None: not observed).
    pub fn route_traffic(&self, label: &str) -> Option<super::traffic::TrafficSnapshot> {
        self.proxy
            .load()
            .observer()
            .traffic()?
            .route_snapshot(label)
    }

    /// The live upstream state (retry counters, ...) of pool `name`.
    pub fn pool_state(&self, name: &str) -> Option<Arc<super::PoolState>> {
        self.proxy.load().pool_state(name)
    }

    /// Applies a new configuration in place, all or nothing: pools whose settings did not
    /// change are kept (with their idle connections, in-flight counts and health), listeners
    /// whose settings did not change keep accepting. Before anything changes, every new
    /// socket is bound, every TLS configuration built and the certificates of the HTTPS
    /// listeners kept are re-read; a failure there leaves everything as it was and says why.
    /// A changed listener on the same address keeps its socket (nothing is refused while it
    /// restarts). Changed and removed listeners stop accepting; their established
    /// connections finish normally. Requests already in flight finish on the configuration
    /// they started with.
    pub async fn reload(&mut self, config: &L7Config) -> Result<ReloadReport, L7Error> {
        let old = self.proxy.load_full();
        let (proxy, pools_rebuilt) = Proxy::rebuild(config, &old)?;
        let proxy = Arc::new(proxy);
        let mut kept = vec![false; self.tasks.len()];
        let mut starting = Vec::new();
        for l in &config.listeners {
            // A listener on port 0 keeps the port it was given when nothing else changed.
            let wanted = |t: &ListenerTask| {
                let addr = match l.addr.port() == 0 && l.addr.ip() == t.bound.ip() {
                    true => t.bound,
                    false => l.addr,
                };
                ListenerSettings::new(l, addr, &config.routes)
            };
            match self
                .tasks
                .iter()
                .position(|t| t.name == l.name && t.settings == wanted(t))
            {
                Some(i) => kept[i] = true,
                None => starting.push(l),
            }
        }
        // Sockets: a stopping listener's socket on the same address (and transport) is taken
        // over; any other is bound now. An address a stopping listener's socket overlaps
        // (0.0.0.0 and 127.0.0.1, say) can only be bound once that one is closed: deferred.
        let mut taken = vec![false; self.tasks.len()];
        let mut prepared = Vec::new();
        for l in starting.iter().copied() {
            let udp = l.mode == ListenerMode::Udp;
            let reuse = (0..self.tasks.len()).find(|&i| {
                let t = &self.tasks[i];
                !kept[i]
                    && !taken[i]
                    && l.addr.port() != 0
                    && t.bound == l.addr
                    && t.socket.is_udp() == udp
            });
            let socket = match reuse {
                Some(i) => {
                    taken[i] = true;
                    Some(self.tasks[i].socket.clone())
                }
                None => match bind(l).await {
                    Ok(socket) => Some(socket),
                    Err(e) => {
                        let held = (0..self.tasks.len()).any(|i| {
                            !kept[i]
                                && !taken[i]
                                && self.tasks[i].socket.is_udp() == udp
                                && super::config::addresses_overlap(self.tasks[i].bound, l.addr)
                        });
                        if !(held && is_addr_in_use(&e)) {
                            return Err(e);
                        }
                        None
                    }
                },
            };
            let tls = tls_config(l)?;
            let mut settings = ListenerSettings::new(l, l.addr, &config.routes);
            self.keep_egress_cache(&mut settings);
            prepared.push(Starting {
                settings,
                socket,
                tls,
            });
        }
        // Certificates of the HTTPS listeners kept: re-read now, swapped in below.
        let certificates = self
            .tasks
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| **kept)
            .filter_map(|(t, _)| {
                let (_, reloader) = t.tls.as_ref()?;
                Some(reloader.load().map_err(|source| L7Error::Tls {
                    name: t.name.clone(),
                    source,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let report = ReloadReport {
            listeners_started: prepared.len(),
            listeners_stopped: kept.iter().filter(|k| !**k).count(),
            pools_rebuilt,
        };

        let (stay, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .zip(kept)
            .partition(|(_, kept)| *kept);
        self.tasks = stay.into_iter().map(|(t, _)| t).collect();
        let mut stop: Vec<ListenerTask> = stop.into_iter().map(|(t, _)| t).collect();
        if prepared.iter().any(|p| p.socket.is_none())
            && let Err(e) = self.bind_deferred(&mut prepared, &mut stop).await
        {
            self.tasks.extend(stop);
            return Err(e);
        }
        for t in stop {
            t.task.abort();
            let _ = t.task.await;
        }
        self.proxy.store(proxy);
        certificates.into_iter().for_each(|c| c.swap_in());
        for p in prepared {
            // Every socket is bound by now (`bind_deferred`).
            if let Some(socket) = p.socket {
                self.spawn(p.settings, socket, p.tls);
            }
        }
        self.listeners = config
            .listeners
            .iter()
            .filter_map(|l| {
                let task = self.tasks.iter().find(|t| t.name == l.name)?;
                Some((l.name.clone(), task.bound))
            })
            .collect();
        Ok(report)
    }

    /// Closes the stopping listeners whose addresses overlap a deferred one's, then binds the
    /// deferred ones. If a bind still fails, the closed listeners are bound and started again
    /// as they were (best effort: the error says if one could not be) and nothing changes.
    async fn bind_deferred(
        &mut self,
        prepared: &mut [Starting],
        stop: &mut Vec<ListenerTask>,
    ) -> Result<(), L7Error> {
        let mut released = Vec::new();
        let mut i = 0;
        while i < stop.len() {
            let t = &stop[i];
            let blocks = prepared.iter().any(|p| {
                p.socket.is_none()
                    && (p.settings.config.mode == ListenerMode::Udp) == t.socket.is_udp()
                    && super::config::addresses_overlap(t.bound, p.settings.config.addr)
            });
            if blocks {
                let t = stop.swap_remove(i);
                t.task.abort();
                let _ = t.task.await;
                released.push((t.name, t.settings, t.tls, t.bound));
            } else {
                i += 1;
            }
        }
        let mut failed = None;
        for p in prepared.iter_mut().filter(|p| p.socket.is_none()) {
            match bind(&p.settings.config).await {
                Ok(socket) => p.socket = Some(socket),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let Some(error) = failed else {
            return Ok(());
        };
        // Undo: the new sockets close, the old listeners come back.
        prepared.iter_mut().for_each(|p| p.socket = None);
        for (name, settings, tls, bound) in released {
            let config = ListenerConfig {
                addr: bound,
                ..settings.config.clone()
            };
            match bind(&config).await {
                Ok(socket) => {
                    let task = self.spawn_task(&settings, socket.clone(), tls.as_ref());
                    stop.push(ListenerTask {
                        name,
                        settings,
                        socket,
                        tls,
                        task,
                        bound,
                    });
                }
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listener lost: its address could not be bound again");
                    self.listeners.retain(|(n, _)| *n != name);
                }
            }
        }
        Err(error)
    }

    /// A restarted forward-proxy listener keeps the store of its cache when the cache settings
    /// are unchanged (a reload of its rules does not empty it).
    fn keep_egress_cache(&self, settings: &mut ListenerSettings) {
        let Some(previous) = self
            .tasks
            .iter()
            .find(|t| t.name == settings.config.name)
            .and_then(|t| t.settings.config.egress.as_ref()?.cache.as_ref())
        else {
            return;
        };
        if let Some(egress) = settings.config.egress.as_mut()
            && egress.cache.is_some()
            && let Some(cache) = Arc::make_mut(egress).cache.as_mut()
        {
            cache.keep_from(previous);
        }
    }

    /// Starts serving `socket` with `settings`.
    fn spawn(
        &mut self,
        settings: ListenerSettings,
        socket: BoundSocket,
        tls: Option<(tokio_rustls::TlsAcceptor, CertReloader)>,
    ) {
        let bound = socket.local_addr().unwrap_or(settings.config.addr);
        let settings = ListenerSettings {
            config: ListenerConfig {
                addr: bound,
                ..settings.config
            },
            ..settings
        };
        let task = self.spawn_task(&settings, socket.clone(), tls.as_ref());
        self.tasks.push(ListenerTask {
            name: settings.config.name.clone(),
            settings,
            socket,
            tls,
            task,
            bound,
        });
    }

    fn spawn_task(
        &self,
        settings: &ListenerSettings,
        socket: BoundSocket,
        tls: Option<&(tokio_rustls::TlsAcceptor, CertReloader)>,
    ) -> tokio::task::JoinHandle<()> {
        let l = &settings.config;
        if let (ListenerMode::ForwardProxy, BoundSocket::Tcp(listener)) = (l.mode, &socket) {
            let gate = self.lifecycle.gate(l.max_connections);
            return super::egress::spawn(l, listener.clone(), self.proxy.clone(), gate);
        }
        if l.mode != ListenerMode::Http {
            let tracker = self.lifecycle.tracker();
            return super::stream::spawn(
                l,
                &settings.stream_routes,
                socket,
                self.proxy.clone(),
                tracker,
            );
        }
        let BoundSocket::Tcp(listener) = socket else {
            // `bind` gives http listeners TCP sockets.
            return tokio::spawn(async {});
        };
        let name = Arc::<str>::from(l.name.as_str());
        let trust = (!l.proxy_protocol_from.is_empty())
            .then(|| Arc::new((l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)));
        let limits = (l.max_header_bytes, l.header_timeout);
        let gate = self.lifecycle.gate(l.max_connections);
        let per_client = l
            .max_connections_per_client
            .map(super::client_limit::ClientConnections::new);
        tokio::spawn(accept_loop(
            listener,
            name,
            tls.map(|(acceptor, _)| acceptor.clone()),
            trust,
            limits,
            self.proxy.clone(),
            (gate, per_client),
        ))
    }

    /// Graceful shutdown: stops accepting (new connections are refused), lets in-flight
    /// requests finish for up to `grace` (keep-alive connections close after their current
    /// request, HTTP/2 ones get GOAWAY), then drops what is left. Returns how many connections
    /// were cut when the grace ended.
    pub async fn shutdown(mut self, grace: std::time::Duration) -> usize {
        for t in &self.tasks {
            t.task.abort();
        }
        // Awaited (and the tasks dropped with their sockets) so the listening sockets are
        // closed before draining starts.
        for t in self.tasks.drain(..) {
            let _ = t.task.await;
        }
        self.lifecycle.shutdown(grace).await
    }

    /// Copies of the listening sockets, for the next lb of an upgrade (`handover`): the same
    /// sockets, so connections waiting to be accepted are served by whichever process
    /// accepts first.
    pub fn handover_sockets(
        &self,
    ) -> std::io::Result<Vec<(crate::handover::HandedSocket, std::os::fd::OwnedFd)>> {
        use std::os::fd::AsFd as _;

        use crate::handover::{HandedSocket, Transport};
        self.tasks
            .iter()
            .map(|t| {
                let (transport, fd) = match &t.socket {
                    BoundSocket::Tcp(s) => (Transport::Tcp, s.as_fd().try_clone_to_owned()?),
                    BoundSocket::Udp(s) => (Transport::Udp, s.as_fd().try_clone_to_owned()?),
                };
                let socket = HandedSocket {
                    fd: -1,
                    transport,
                    name: t.name.clone(),
                    addr: t.bound,
                };
                Ok((socket, fd))
            })
            .collect()
    }

    /// Re-reads every HTTPS listener's certificate and key files and swaps them in: new
    /// handshakes get them, established connections are unaffected. All or nothing: on a
    /// missing or bad file every listener keeps its certificates and the error names the file.
    /// Returns how many listeners were reloaded. (`reload` does this too, for the listeners
    /// it keeps.)
    pub fn reload_certificates(&self) -> Result<usize, L7Error> {
        let prepared = self
            .tasks
            .iter()
            .filter_map(|t| {
                let (_, reloader) = t.tls.as_ref()?;
                Some(reloader.load().map_err(|source| L7Error::Tls {
                    name: t.name.clone(),
                    source,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reloaded = prepared.len();
        prepared.into_iter().for_each(|p| p.swap_in());
        Ok(reloaded)
    }
}

impl Drop for RunningL7 {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.task.abort();
        }
    }
}

/// Binds the listener's socket: UDP for udp listeners, TCP otherwise.
async fn bind(l: &ListenerConfig) -> Result<BoundSocket, L7Error> {
    let error = |source| L7Error::Bind {
        name: l.name.clone(),
        addr: l.addr,
        source,
    };
    // After an upgrade, the socket the previous lb served this listener on.
    if l.mode == ListenerMode::Udp {
        let socket = match crate::handover::inherited::take_udp(&l.name, l.addr) {
            Some(handed) => handed.map_err(error)?,
            None => UdpSocket::bind(l.addr).await.map_err(error)?,
        };
        return Ok(BoundSocket::Udp(Arc::new(socket)));
    }
    let socket = match crate::handover::inherited::take_tcp(&l.name, l.addr) {
        Some(handed) => handed.map_err(error)?,
        None => listen_tcp(l.addr).map_err(error)?,
    };
    Ok(BoundSocket::Tcp(Arc::new(socket)))
}

/// Connections the kernel may hold for a listener before lb accepts them (capped by
/// `net.core.somaxconn`). The standard library's 128 (what tokio's `bind` uses) overflows
/// when clients open connections in bursts faster than one accept loop turn: each SYN
/// dropped then costs its client a one-second retransmission (seen with short-lived
/// connections through a tcp listener: ~300 connections/s instead of tens of thousands).
/// NGINX listens with 511, HAProxy with its maxconn.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening TCP socket on `addr` (SO_REUSEADDR, as tokio's `bind` sets) with
/// [`LISTEN_BACKLOG`].
fn listen_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The local address of a listener's connections: the listener's own when it is bound to one
/// address (no getsockname(2) per connection), else each socket's.
#[derive(Clone, Copy)]
pub(super) struct LocalAddress(Option<std::net::SocketAddr>);

impl LocalAddress {
    pub(super) fn of_listener(listener: &TcpListener) -> Self {
        Self(
            listener
                .local_addr()
                .ok()
                .filter(|a| !a.ip().is_unspecified()),
        )
    }

    pub(super) fn of(self, tcp: &tokio::net::TcpStream) -> Option<std::net::SocketAddr> {
        self.0.or_else(|| tcp.local_addr().ok())
    }
}

fn is_addr_in_use(e: &L7Error) -> bool {
    matches!(e, L7Error::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

/// The listener's TLS acceptor and certificate reloader (HTTPS listeners; reads the files).
fn tls_config(
    l: &ListenerConfig,
) -> Result<Option<(tokio_rustls::TlsAcceptor, CertReloader)>, L7Error> {
    if l.tls.is_empty() || l.mode != ListenerMode::Http {
        return Ok(None);
    }
    let (config, reloader) =
        super::tls::server_config(&l.tls, l.client_auth.as_ref()).map_err(|source| {
            L7Error::Tls {
                name: l.name.clone(),
                source,
            }
        })?;
    Ok(Some((tokio_rustls::TlsAcceptor::from(config), reloader)))
}

/// Binds every listener and starts serving on the current tokio runtime; requests are not
/// observed (no metrics, no access log).
pub async fn serve(config: L7Config) -> Result<RunningL7, L7Error> {
    serve_observed(config, super::Observer::none()).await
}

/// As `serve`, every request reported to `observer` (kept across reloads). Every socket is
/// bound and every certificate read before any listener starts.
pub async fn serve_observed(
    config: L7Config,
    observer: Arc<super::Observer>,
) -> Result<RunningL7, L7Error> {
    serve_guarded(config, observer, GlobalLimits::default()).await
}

/// As `serve_observed`, under the tier-wide `limits` (`overload.rs`).
pub async fn serve_guarded(
    config: L7Config,
    observer: Arc<super::Observer>,
    limits: GlobalLimits,
) -> Result<RunningL7, L7Error> {
    let memory = limits.max_memory.map(super::overload::MemoryGuard::start);
    let mut proxy = Proxy::new(&config, observer)?;
    proxy.set_memory_guard(memory);
    let mut running = RunningL7 {
        listeners: Vec::new(),
        tasks: Vec::new(),
        proxy: Arc::new(ArcSwap::from_pointee(proxy)),
        lifecycle: Arc::new(Lifecycle::new(limits.max_connections)),
    };
    let mut prepared = Vec::new();
    for l in &config.listeners {
        let socket = bind(l).await?;
        let tls = tls_config(l)?;
        prepared.push((
            ListenerSettings::new(l, l.addr, &config.routes),
            socket,
            tls,
        ));
    }
    for (settings, socket, tls) in prepared {
        running.spawn(settings, socket, tls);
        if let Some(t) = running.tasks.last() {
            running.listeners.push((t.name.clone(), t.bound));
        }
    }
    Ok(running)
}

/// Trusted PROXY-header senders and the deadline for their header.
type ProxyTrust = Arc<(Vec<ipnet::IpNet>, std::time::Duration)>;

async fn accept_loop(
    listener: Arc<TcpListener>,
    name: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trust: Option<ProxyTrust>,
    (max_header_bytes, header_timeout): (usize, std::time::Duration),
    proxy: Arc<ArcSwap<Proxy>>,
    (gate, per_client): (
        ListenerGate,
        Option<Arc<super::client_limit::ClientConnections>>,
    ),
) {
    let traffic = proxy.load().observer().listener_traffic(&name);
    let builders = Arc::new(HttpBuilders::new(max_header_bytes, header_timeout));
    let local_address = LocalAddress::of_listener(&listener);
    loop {
        let admission = gate.admit().await;
        let (mut tcp, socket_peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(listener = %name, %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (name, proxy, tls, trust) = (name.clone(), proxy.clone(), tls.clone(), trust.clone());
        let per_client = per_client.clone();
        let builders = builders.clone();
        let phase = admission.phase();
        let tracker = gate.tracker();
        let traffic = traffic.clone();
        tokio::spawn(admission.run(async move {
            let _open = traffic.clone().map(OpenConnection::new);
            let mut peer = socket_peer;
            if let Some(trust) = trust.filter(|t| t.0.iter().any(|n| n.contains(&socket_peer.ip())))
            {
                match super::proxy_header::read(&mut tcp, trust.1).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(err) => {
                        let errors = &proxy.load().proxy_header_errors;
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%socket_peer, %err, "PROXY header rejected");
                        return;
                    }
                }
            }
            // The generation's meters only for this check (a load guard is not for holding).
            let admitted = {
                let proxy = proxy.load();
                super::client_limit::admit_on(per_client.as_ref(), peer.ip(), &name, proxy.meters())
            };
            let Ok(_slot) = admitted else { return };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let Some(local) = local_address.of(&tcp) else {
                return;
            };
            let flow_id = proxy.load().observer().flow_id(socket_peer, local);
            // The handshake first: a verified client certificate belongs to the connection.
            let (plain, secure) = match tls {
                None => (Some(tcp), None),
                Some(acceptor) => {
                    // Plain HTTP on the TLS port: NGINX's helpful 400, not a TLS alert.
                    if super::tls::sent_plain_http(&mut tcp, header_timeout).await {
                        return;
                    }
                    // A failed handshake just ends this connection.
                    // Boxed: the handshake's state would otherwise be part of every
                    // connection task's size (see `http_conn::HttpBuilders::serve`).
                    match Box::pin(acceptor.accept(tcp)).await {
                        Ok(stream) => (None, Some(Box::new(stream))),
                        Err(_) => return,
                    }
                }
            };
            let mut conn = super::upstream::ConnInfo::new(peer.ip(), local, flow_id);
            conn.tracker = Some(tracker);
            conn.traffic = traffic.clone();
            conn.client_cert = secure
                .as_ref()
                .and_then(|s| s.get_ref().1.peer_certificates()?.first())
                .and_then(super::client_cert::PeerCert::from_der)
                .map(Arc::new);
            conn.tls = secure.as_ref().map(|s| {
                let session = s.get_ref().1;
                let version = match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLS",
                };
                (version, session.server_name().map(Arc::from))
            });
            let conn = Arc::new(conn);
            let on_h2_close = {
                let (proxy, name) = (proxy.clone(), name.clone());
                move |close: H2Close| {
                    proxy.load().meters().http2_closed(&name, close);
                    tracing::debug!(listener = %name, %peer, reason = %close, "HTTP/2 connection closed");
                }
            };
            let service = service_fn(move |req| {
                let (name, proxy, conn) = (name.clone(), proxy.clone(), conn.clone());
                async move {
                    let proxy = proxy.load_full();
                    let response = proxy.handle(req, &name, peer, scheme, &conn).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            if let Some(tcp) = plain {
                let tcp = H2Guard::new(HeadGuard::new(tcp, max_header_bytes), on_h2_close);
                let tcp = CountedIo::client(tcp, traffic);
                builders.serve_plain(tcp, service, phase).await;
            } else if let Some(stream) = secure {
                let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
                let stream = H2Guard::new(HeadGuard::new(stream, max_header_bytes), on_h2_close);
                let stream = CountedIo::client(stream, traffic);
                builders.serve(protocol, stream, service, phase).await;
            }
        }));
    }
}
