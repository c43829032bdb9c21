//! One request's journey through the proxy: limits, route, backend choice, header rules,
//! forwarding over the pool's keep-alive client, safe retries.
//!
//! Retries: a request is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) and has no body, on a connect error, a timeout or a 502/503 answer, each time to a
//! backend not tried yet, at most `retries` times. Everything else gets one attempt.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request, Response, StatusCode, Uri, body::Incoming, header};

use super::{
    config::{HashKey, L7Config},
    headers::{remove_hop_by_hop, set_forwarded},
    pool::{Pool, ProxyBody},
    routing::{Router, host_of, upstream_path},
    server::L7Error,
};

/// What every request handler shares: pools, routes, per-listener limits, counters.
pub struct Proxy {
    pools: HashMap<String, Pool>,
    router: Router,
    /// Per listener: largest declared request body.
    max_body: HashMap<String, u64>,
    /// Connections closed for a missing or bad PROXY header from a trusted source.
    pub proxy_header_errors: AtomicU64,
    request_ids: AtomicU64,
    /// Per-process random prefix so request ids from different lb processes differ.
    id_prefix: u64,
}

impl Proxy {
    pub fn new(config: &L7Config) -> Result<Self, L7Error> {
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
        Ok(Self {
            pools,
            router: Router::new(config.routes.clone()),
            max_body: config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.max_body_bytes))
                .collect(),
            proxy_header_errors: AtomicU64::new(0),
            request_ids: AtomicU64::new(0),
            id_prefix: seed,
        })
    }

    /// The pool named `name` (stream listeners share the HTTP proxy's pools).
    pub(super) fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    fn new_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:08x}", self.id_prefix)
    }

    /// Answers one request that arrived on `listener` from `peer` (the true client when a PROXY
    /// header said so) over `scheme` (http or https).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        listener: &str,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Response<ProxyBody> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| self.max_body.get(listener).is_some_and(|max| n > *max)) {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let host = host_of(&req);
        let path = req.uri().path().to_owned();
        let Some(route) = self.router.find(listener, host.as_deref(), &path) else {
            return plain(StatusCode::NOT_FOUND, "no route\n");
        };
        let Some(pool) = self.pools.get(&route.pool) else {
            return plain(StatusCode::BAD_GATEWAY, "no pool\n");
        };
        let upstream_path = upstream_path(route, &path);
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
            scheme,
            host.as_deref(),
            || self.new_request_id(),
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
                tokio::time::timeout(pool.config.request_timeout, pool.client.request(upstream))
                    .await;
            let more = attempt + 1 < attempts;
            match result {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retry_status = status == StatusCode::BAD_GATEWAY
                        || status == StatusCode::SERVICE_UNAVAILABLE;
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
