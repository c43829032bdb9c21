//! Listeners: bind, accept, PROXY header from trusted peers, TLS, and HTTP/1.1 + HTTP/2
//! connection serving (hyper-util's auto server) with the listener's limits. Each request is
//! handed to `proxy::Proxy::handle`.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::{
    config::L7Config,
    hygiene::HeadGuard,
    lifecycle::{self, Lifecycle, ListenerGate},
    proxy::Proxy,
    tls::CertReloader,
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
    /// (listener name, its certificate reloader), HTTPS listeners only.
    certificates: Vec<(String, CertReloader)>,
}

struct ListenerTask {
    name: String,
    /// The listener's whole configuration (with its bound address), to tell whether a reload
    /// changed it.
    settings: String,
    task: tokio::task::JoinHandle<()>,
    bound: SocketAddr,
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

    /// The live upstream state (retry counters, ...) of pool `name`.
    pub fn pool_state(&self, name: &str) -> Option<Arc<super::PoolState>> {
        self.proxy.load().pool_state(name)
    }

    /// Applies a new configuration in place: pools whose settings did not change are kept
    /// (with their idle connections, in-flight counts and health), listeners whose settings
    /// did not change keep accepting, new ones are bound before anything else changes (a bind
    /// error leaves everything as it was), changed and removed ones stop accepting; their
    /// established connections finish normally. Requests already in flight finish on the
    /// configuration they started with.
    pub async fn reload(&mut self, config: &L7Config) -> Result<ReloadReport, L7Error> {
        let old = self.proxy.load_full();
        let (proxy, pools_rebuilt) = Proxy::rebuild(config, &old)?;
        let proxy = Arc::new(proxy);
        let wanted: Vec<(String, String)> = config
            .listeners
            .iter()
            .map(|l| {
                let settings = if l.mode == super::config::ListenerMode::Http {
                    format!("{l:?}")
                } else {
                    stream_settings(l, l.addr, &config.routes)
                };
                (l.name.clone(), settings)
            })
            .collect();
        let (kept, stopped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| wanted.iter().any(|(n, s)| *n == t.name && *s == t.settings));
        let starting: Vec<_> = config
            .listeners
            .iter()
            .filter(|l| !kept.iter().any(|t| t.name == l.name))
            .collect();
        // Addresses a stopping listener holds are released first; any other bind must work
        // before anything changes.
        let held: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter(|(n, _)| stopped.iter().any(|t| t.name == *n))
            .map(|(_, a)| *a)
            .collect();
        let mut bound = Vec::new();
        let http =
            |l: &&&super::config::ListenerConfig| l.mode == super::config::ListenerMode::Http;
        for l in starting
            .iter()
            .filter(http)
            .filter(|l| !held.contains(&l.addr))
        {
            match bind(l).await {
                Ok(listener) => bound.push((l.name.clone(), listener)),
                Err(e) => {
                    self.tasks = kept.into_iter().chain(stopped).collect();
                    return Err(e);
                }
            }
        }
        let report = ReloadReport {
            listeners_started: starting.len(),
            listeners_stopped: stopped.len(),
            pools_rebuilt,
        };
        for t in stopped {
            t.task.abort();
            let _ = t.task.await;
        }
        self.proxy.store(proxy);
        self.tasks = kept;
        self.certificates
            .retain(|(n, _)| self.tasks.iter().any(|t| t.name == *n));
        let mut first_error = None;
        for l in starting {
            if l.mode != super::config::ListenerMode::Http {
                if let Err(e) = self.start_stream_listener(l, &config.routes).await {
                    tracing::error!(listener = %l.name, error = %e, "listener not started");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            let listener = match bound.iter().position(|(n, _)| *n == l.name) {
                Some(i) => bound.swap_remove(i).1,
                None => match bind(l).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(listener = %l.name, error = %e, "listener not restarted");
                        first_error.get_or_insert(e);
                        continue;
                    }
                },
            };
            self.start_listener(l, listener)?;
        }
        self.listeners = config
            .listeners
            .iter()
            .filter_map(|l| {
                let addr = self.tasks.iter().find(|t| t.name == l.name)?;
                Some((l.name.clone(), addr.bound))
            })
            .collect();
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Starts a tcp or udp listener. Its routes are part of its settings (a reload that
    /// changes them restarts it).
    async fn start_stream_listener(
        &mut self,
        l: &super::config::ListenerConfig,
        routes: &[super::config::RouteConfig],
    ) -> Result<(), L7Error> {
        let (bound, task) = super::stream::start(l, routes, self.proxy.clone()).await?;
        self.tasks.push(ListenerTask {
            name: l.name.clone(),
            settings: stream_settings(l, bound, routes),
            task,
            bound,
        });
        Ok(())
    }

    fn start_listener(
        &mut self,
        l: &super::config::ListenerConfig,
        listener: TcpListener,
    ) -> Result<(), L7Error> {
        let tls = if l.tls.is_empty() {
            None
        } else {
            let (config, reloader) =
                super::tls::server_config(&l.tls).map_err(|source| L7Error::Tls {
                    name: l.name.clone(),
                    source,
                })?;
            self.certificates.push((l.name.clone(), reloader));
            Some(tokio_rustls::TlsAcceptor::from(config))
        };
        let bound = listener.local_addr().unwrap_or(l.addr);
        let name = Arc::<str>::from(l.name.as_str());
        let trust = (!l.proxy_protocol_from.is_empty())
            .then(|| Arc::new((l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)));
        let limits = (l.max_header_bytes, l.header_timeout);
        let gate = self.lifecycle.gate(l.max_connections);
        let task = tokio::spawn(accept_loop(
            listener,
            name,
            tls,
            trust,
            limits,
            self.proxy.clone(),
            gate,
        ));
        // Compared with the next configuration as bound: a listener on port 0 that is given
        // its actual port next time is unchanged.
        let as_bound = super::config::ListenerConfig {
            addr: bound,
            ..l.clone()
        };
        self.tasks.push(ListenerTask {
            name: l.name.clone(),
            settings: format!("{as_bound:?}"),
            task,
            bound,
        });
        Ok(())
    }

    /// Graceful shutdown: stops accepting (new connections are refused), lets in-flight
    /// requests finish for up to `grace` (keep-alive connections close after their current
    /// request, HTTP/2 ones get GOAWAY), then drops what is left. Returns how many connections
    /// were cut when the grace ended.
    pub async fn shutdown(mut self, grace: std::time::Duration) -> usize {
        for t in &self.tasks {
            t.task.abort();
        }
        // Awaited so the listening sockets are closed before draining starts.
        for t in self.tasks.drain(..) {
            let _ = t.task.await;
        }
        self.lifecycle.shutdown(grace).await
    }

    /// Re-reads every HTTPS listener's certificate and key files and swaps them in: new
    /// handshakes get them, established connections are unaffected. All or nothing: on a
    /// missing or bad file every listener keeps its certificates and the error names the file.
    /// Returns how many listeners were reloaded.
    pub fn reload_certificates(&self) -> Result<usize, L7Error> {
        let prepared = self
            .certificates
            .iter()
            .map(|(name, reloader)| {
                reloader.load().map_err(|source| L7Error::Tls {
                    name: name.clone(),
                    source,
                })
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

fn stream_settings(
    l: &super::config::ListenerConfig,
    bound: SocketAddr,
    routes: &[super::config::RouteConfig],
) -> String {
    let as_bound = super::config::ListenerConfig {
        addr: bound,
        ..l.clone()
    };
    let mine: Vec<_> = routes.iter().filter(|r| r.listener == l.name).collect();
    format!("{as_bound:?} {mine:?}")
}

async fn bind(l: &super::config::ListenerConfig) -> Result<TcpListener, L7Error> {
    TcpListener::bind(l.addr)
        .await
        .map_err(|source| L7Error::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        })
}

/// Binds every listener and starts serving on the current tokio runtime; requests are not
/// observed (no metrics, no access log).
pub async fn serve(config: L7Config) -> Result<RunningL7, L7Error> {
    serve_observed(config, super::Observer::none()).await
}

/// As `serve`, every request reported to `observer` (kept across reloads).
pub async fn serve_observed(
    config: L7Config,
    observer: Arc<super::Observer>,
) -> Result<RunningL7, L7Error> {
    let mut running = RunningL7 {
        listeners: Vec::new(),
        tasks: Vec::new(),
        proxy: Arc::new(ArcSwap::from_pointee(Proxy::new(&config, observer)?)),
        lifecycle: Arc::new(Lifecycle::default()),
        certificates: Vec::new(),
    };
    for l in &config.listeners {
        if l.mode != super::config::ListenerMode::Http {
            running.start_stream_listener(l, &config.routes).await?;
        } else {
            let listener = bind(l).await?;
            running.start_listener(l, listener)?;
        }
        let bound = running.tasks.last().map_or(l.addr, |t| t.bound);
        running.listeners.push((l.name.clone(), bound));
    }
    Ok(running)
}

/// Trusted PROXY-header senders and the deadline for their header.
type ProxyTrust = Arc<(Vec<ipnet::IpNet>, std::time::Duration)>;

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trust: Option<ProxyTrust>,
    (max_header_bytes, header_timeout): (usize, std::time::Duration),
    proxy: Arc<ArcSwap<Proxy>>,
    gate: ListenerGate,
) {
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
        let phase = admission.phase();
        tokio::spawn(admission.run(async move {
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
            let scheme = if tls.is_some() { "https" } else { "http" };
            let Ok(local) = tcp.local_addr() else { return };
            let flow_id = proxy.load().observer().flow_id(socket_peer, local);
            let conn = Arc::new(super::upstream::ConnInfo::new(peer.ip(), local, flow_id));
            let service = service_fn(move |req| {
                let (name, proxy, conn) = (name.clone(), proxy.clone(), conn.clone());
                async move {
                    let proxy = proxy.load_full();
                    let response = proxy.handle(req, &name, peer, scheme, &conn).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .max_buf_size(max_header_bytes)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            match tls {
                None => {
                    let tcp = HeadGuard::new(tcp, max_header_bytes);
                    lifecycle::serve(&builder, TokioIo::new(tcp), service, phase).await;
                }
                Some(acceptor) => {
                    // A failed handshake just ends this connection.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let stream = HeadGuard::new(stream, max_header_bytes);
                        lifecycle::serve(&builder, TokioIo::new(stream), service, phase).await;
                    }
                }
            }
        }));
    }
}
