//! Listeners: bind, accept, PROXY header from trusted peers, TLS, and HTTP/1.1 + HTTP/2
//! connection serving (hyper-util's auto server) with the listener's limits. Each request is
//! handed to `proxy::Proxy::handle`.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::{config::L7Config, proxy::Proxy};

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
    tasks: Vec<tokio::task::JoinHandle<()>>,
    proxy: Arc<Proxy>,
}

impl RunningL7 {
    /// Connections closed because a trusted source sent no valid PROXY header in time.
    pub fn proxy_header_errors(&self) -> u64 {
        self.proxy.proxy_header_errors.load(Ordering::Relaxed)
    }
}

impl Drop for RunningL7 {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds every listener and starts serving on the current tokio runtime.
pub async fn serve(config: L7Config) -> Result<RunningL7, L7Error> {
    let proxy = Arc::new(Proxy::new(&config)?);
    let mut listeners = Vec::new();
    let mut tasks = Vec::new();
    for l in &config.listeners {
        if l.mode != super::config::ListenerMode::Http {
            let (bound, task) = super::stream::start(l, &config.routes, proxy.clone()).await?;
            listeners.push((l.name.clone(), bound));
            tasks.push(task);
            continue;
        }
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| L7Error::Bind {
                name: l.name.clone(),
                addr: l.addr,
                source,
            })?;
        let tls = if l.tls.is_empty() {
            None
        } else {
            let config = super::tls::server_config(&l.tls).map_err(|source| L7Error::Tls {
                name: l.name.clone(),
                source,
            })?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        };
        let bound = listener.local_addr().unwrap_or(l.addr);
        listeners.push((l.name.clone(), bound));
        let (name, proxy) = (Arc::<str>::from(l.name.as_str()), proxy.clone());
        let trust = (!l.proxy_protocol_from.is_empty())
            .then(|| Arc::new((l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)));
        let limits = (l.max_header_bytes, l.header_timeout);
        tasks.push(tokio::spawn(accept_loop(
            listener, name, tls, trust, limits, proxy,
        )));
    }
    Ok(RunningL7 {
        listeners,
        tasks,
        proxy,
    })
}

/// Trusted PROXY-header senders and the deadline for their header.
type ProxyTrust = Arc<(Vec<ipnet::IpNet>, std::time::Duration)>;

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trust: Option<ProxyTrust>,
    (max_header_bytes, header_timeout): (usize, std::time::Duration),
    proxy: Arc<Proxy>,
) {
    loop {
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
        tokio::spawn(async move {
            let mut peer = socket_peer;
            if let Some(trust) = trust.filter(|t| t.0.iter().any(|n| n.contains(&socket_peer.ip())))
            {
                match super::proxy_header::read(&mut tcp, trust.1).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(err) => {
                        proxy.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%socket_peer, %err, "PROXY header rejected");
                        return;
                    }
                }
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            let service = service_fn(move |req| {
                let (name, proxy) = (name.clone(), proxy.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(proxy.handle(req, &name, peer, scheme).await)
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
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(acceptor) => {
                    // A failed handshake just ends this connection.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}
