//! The HTTP reverse proxy: listeners (HTTP/1.1 and HTTP/2 via hyper-util's auto server), route
//! lookup, backend choice, header rules, upstream keep-alive, safe retries.
//!
//! Retries: a request is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) and has no body, on a connect error, a timeout or a 502/503 answer, each time to a
//! backend not tried yet, at most `retries` times. Everything else gets one attempt.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Method, Request, Response, StatusCode, Uri, body::Incoming, header, service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::{
    config::{HashKey, L7Config, RouteConfig},
    headers::{remove_hop_by_hop, set_forwarded},
    pool::{Pool, ProxyBody},
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

struct Shared {
    pools: HashMap<String, Pool>,
    /// Per listener: largest declared request body.
    max_body: HashMap<String, u64>,
    /// Connections closed for a missing or bad PROXY header from a trusted source.
    proxy_header_errors: AtomicU64,
    routes: Vec<RouteConfig>,
    request_ids: AtomicU64,
    /// Per-process random prefix so request ids from different lb processes differ.
    id_prefix: u64,
}

/// Running listeners; dropping this stops accepting.
pub struct RunningL7 {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RunningL7 {
    /// Connections closed because a trusted source sent no valid PROXY header in time.
    pub fn proxy_header_errors(&self) -> u64 {
        self.shared.proxy_header_errors.load(Ordering::Relaxed)
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
    let mut pools = HashMap::new();
    for p in &config.pools {
        let pool = Pool::new(p.clone()).map_err(|source| L7Error::Pool {
            pool: p.name.clone(),
            source,
        })?;
        pools.insert(p.name.clone(), pool);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let shared = Arc::new(Shared {
        pools,
        max_body: config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.max_body_bytes))
            .collect(),
        proxy_header_errors: AtomicU64::new(0),
        routes: config.routes.clone(),
        request_ids: AtomicU64::new(0),
        id_prefix: seed,
    });
    let mut listeners = Vec::new();
    let mut tasks = Vec::new();
    for l in &config.listeners {
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
        let (name, shared) = (Arc::<str>::from(l.name.as_str()), shared.clone());
        let proxy = (!l.proxy_protocol_from.is_empty())
            .then(|| Arc::new((l.proxy_protocol_from.clone(), l.proxy_protocol_timeout)));
        let limits = (l.max_header_bytes, l.header_timeout);
        tasks.push(tokio::spawn(accept_loop(
            listener, name, tls, proxy, limits, shared,
        )));
    }
    Ok(RunningL7 {
        listeners,
        tasks,
        shared,
    })
}

/// Trusted PROXY-header senders and the deadline for their header.
type ProxyTrust = Arc<(Vec<ipnet::IpNet>, std::time::Duration)>;

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Option<ProxyTrust>,
    (max_header_bytes, header_timeout): (usize, std::time::Duration),
    shared: Arc<Shared>,
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
        let (name, shared, tls, proxy) = (name.clone(), shared.clone(), tls.clone(), proxy.clone());
        tokio::spawn(async move {
            let mut peer = socket_peer;
            if let Some(trust) = proxy.filter(|t| t.0.iter().any(|n| n.contains(&socket_peer.ip())))
            {
                match super::proxy_header::read(&mut tcp, trust.1).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(err) => {
                        shared.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%socket_peer, %err, "PROXY header rejected");
                        return;
                    }
                }
            }
            let proto = if tls.is_some() { "https" } else { "http" };
            let service = service_fn(move |req| {
                let (name, shared) = (name.clone(), shared.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(req, &name, peer, proto, &shared).await,
                    )
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

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// The request's host name, without port (Host header, or the authority of an HTTP/2 URI).
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let authority: hyper::http::uri::Authority = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?.parse().ok()?,
        None => req.uri().authority()?.clone(),
    };
    Some(authority.host().to_ascii_lowercase())
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

fn route<'a>(
    shared: &'a Shared,
    listener: &str,
    host: Option<&str>,
    path: &str,
) -> Option<&'a RouteConfig> {
    shared.routes.iter().find(|r| {
        r.listener == listener
            && r.host
                .as_ref()
                .is_none_or(|m| host.is_some_and(|h| m.matches(h)))
            && path_matches(&r.path_prefix, path)
    })
}

fn hash_key(key: &HashKey, req: &Request<Incoming>, peer: SocketAddr) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match key {
        HashKey::ClientIp => peer.ip().hash(&mut hasher),
        HashKey::Header(name) => req
            .headers()
            .get(name)
            .map(|v| v.as_bytes())
            .hash(&mut hasher),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .hash(&mut hasher),
    }
    hasher.finish()
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_body(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

async fn handle(
    req: Request<Incoming>,
    listener: &str,
    peer: SocketAddr,
    proto: &'static str,
    shared: &Shared,
) -> Response<ProxyBody> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| shared.max_body.get(listener).is_some_and(|max| n > *max)) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let host = host_of(&req);
    let path = req.uri().path().to_owned();
    let Some(route) = route(shared, listener, host.as_deref(), &path) else {
        return plain(StatusCode::NOT_FOUND, "no route\n");
    };
    let Some(pool) = shared.pools.get(&route.pool) else {
        return plain(StatusCode::BAD_GATEWAY, "no pool\n");
    };
    let upstream_path = if route.strip_prefix && route.path_prefix != "/" {
        let rest = path
            .strip_prefix(route.path_prefix.trim_end_matches('/'))
            .unwrap_or(&path);
        if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        }
    } else {
        path.clone()
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path,
    };
    let key = hash_key(&pool.config.hash_key, &req, peer);
    let retryable = idempotent(req.method()) && !has_body(&req);

    let (mut parts, body) = req.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    set_forwarded(
        &mut parts.headers,
        peer.ip(),
        proto,
        host.as_deref(),
        || {
            let n = shared.request_ids.fetch_add(1, Ordering::Relaxed);
            format!("{:016x}{n:08x}", shared.id_prefix)
        },
    );
    parts.version = hyper::Version::HTTP_11;
    let mut body = Some(body.boxed());

    let attempts = if retryable {
        1 + pool.config.retries
    } else {
        1
    };
    let mut tried = Vec::new();
    let mut last = plain(StatusCode::SERVICE_UNAVAILABLE, "no backend available\n");
    for attempt in 0..attempts {
        let Some(i) = pool.pick(key, &tried) else {
            break;
        };
        tried.push(i);
        let backend = pool.config.backends[i].addr;
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(backend.to_string())
            .path_and_query(path_and_query.as_str())
            .build()
        else {
            return plain(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        let mut upstream = Request::from_parts(parts.clone(), ());
        *upstream.uri_mut() = uri;
        let upstream_body = body
            .take()
            .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
        let upstream = upstream.map(|()| upstream_body);
        let _inflight = pool.inflight.start(i);
        let result =
            tokio::time::timeout(pool.config.request_timeout, pool.client.request(upstream)).await;
        let more = attempt + 1 < attempts;
        match result {
            Ok(Ok(response)) => {
                let status = response.status();
                let retry_status =
                    status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE;
                if retry_status && more {
                    last = plain(status, "upstream unavailable\n");
                    continue;
                }
                let (mut rparts, rbody) = response.into_parts();
                remove_hop_by_hop(&mut rparts.headers);
                return Response::from_parts(rparts, rbody.boxed());
            }
            Ok(Err(err)) => {
                tracing::debug!(%backend, %err, "upstream request failed");
                last = plain(StatusCode::BAD_GATEWAY, "upstream failed\n");
            }
            Err(_) => {
                last = plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
            }
        }
    }
    last
}
