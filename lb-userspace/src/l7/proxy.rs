//! One request's journey through the proxy: limits, route, backend choice, header rules,
//! forwarding over the pool's keep-alive client, safe retries.
//!
//! Retries: a request is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) and has no body, on a connect error, a timeout or a 502/503 answer, each time to a
//! backend not tried yet, at most `retries` times, while the pool's retry budget
//! (`upstream/budget.rs`) has room. Everything else gets one attempt.
use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::{Body as _, Incoming},
    header::{self, HeaderValue},
    http::uri::PathAndQuery,
};

use super::{
    access_log::{AccessRecord, CountedBody, LoggedBody},
    body::{self, BodyLimits, BodyWatch},
    config::{Algorithm, HashKey, L7Config, RouteConfig},
    headers::{client_ip, remove_hop_by_hop, request_id, set_forwarded},
    observe::{Observer, Outcome, ProxyMeters},
    pool::{Pool, ProxyBody},
    routing::{Routed, Router, host_of, upstream_path},
    server::L7Error,
    upgrade,
    upstream::ConnInfo,
};

/// What every request handler shares: pools, routes, per-listener limits, counters.
pub struct Proxy {
    /// Shared with the previous generation when a reload left the pool unchanged.
    pools: HashMap<String, PoolEntry>,
    router: Router,
    /// Per listener: its request rules (one lookup per request).
    listeners: HashMap<String, ListenerRules>,
    /// Connections closed for a missing or bad PROXY header from a trusted source.
    pub proxy_header_errors: Arc<AtomicU64>,
    request_ids: AtomicU64,
    /// Per-process random prefix so request ids from different lb processes differ.
    id_prefix: u64,
    /// Metrics and access log, shared by every generation.
    observer: Arc<Observer>,
    /// This generation's metric handles.
    meters: ProxyMeters,
}

/// What a listener's requests are checked against.
struct ListenerRules {
    /// Largest declared request body.
    max_body: u64,
    /// Peers whose X-Forwarded-For is believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Streamed request body limits.
    body_limits: Option<BodyLimits>,
}

struct PoolEntry {
    pool: Arc<Pool>,
    /// Position in the configuration (metrics key).
    index: usize,
}

impl Proxy {
    pub fn new(config: &L7Config, observer: Arc<Observer>) -> Result<Self, L7Error> {
        Self::build(config, None, observer).map(|(proxy, _)| proxy)
    }

    /// The proxy for `config`, keeping `previous`'s pools whose configuration is unchanged
    /// (and its counters). Also returns how many pools were built anew.
    pub fn rebuild(config: &L7Config, previous: &Proxy) -> Result<(Self, usize), L7Error> {
        Self::build(config, Some(previous), previous.observer.clone())
    }

    fn build(
        config: &L7Config,
        previous: Option<&Proxy>,
        observer: Arc<Observer>,
    ) -> Result<(Self, usize), L7Error> {
        let mut pools = HashMap::new();
        let mut built = 0;
        for (index, p) in config.pools.iter().enumerate() {
            // Typed comparison: TLS by its settings and the CA file's content.
            let same = previous
                .and_then(|prev| prev.pools.get(&p.name))
                .filter(|old| old.pool.config == *p);
            let pool = match same {
                Some(old) => old.pool.clone(),
                None => {
                    built += 1;
                    Arc::new(Pool::new(p.clone()).map_err(|source| L7Error::Pool {
                        pool: p.name.clone(),
                        source,
                    })?)
                }
            };
            pools.insert(p.name.clone(), PoolEntry { pool, index });
        }
        let body_limits = body::limits_by_listener(config);
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let rules = ListenerRules {
                    max_body: l.max_body_bytes,
                    trusted_proxies: l.trusted_proxies.clone(),
                    body_limits: body_limits.get(&l.name).copied(),
                };
                (l.name.clone(), rules)
            })
            .collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Ok((
            Self {
                pools,
                router: Router::new(config.routes.clone()),
                listeners,
                proxy_header_errors: previous
                    .map_or_else(Default::default, |p| p.proxy_header_errors.clone()),
                request_ids: AtomicU64::new(0),
                id_prefix: seed,
                meters: observer.meters(config),
                observer,
            },
            built,
        ))
    }

    /// The request path's observer (metrics, access log, L4 flow ids).
    pub(super) fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The live upstream state of pool `name`.
    pub fn pool_state(&self, name: &str) -> Option<std::sync::Arc<super::PoolState>> {
        self.pools.get(name).map(|p| p.pool.state.clone())
    }

    /// The pool named `name` (stream listeners share the HTTP proxy's pools).
    pub(super) fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name).map(|p| &*p.pool)
    }

    fn new_request_id(&self) -> HeaderValue {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        request_id(self.id_prefix, n)
    }

    /// Answers one request that arrived on `listener` from `peer` (the true client when a PROXY
    /// header said so) over `scheme` (http or https), on the downstream connection `conn`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        listener: &str,
        peer: SocketAddr,
        scheme: &'static str,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        if self.observer.access_log().is_some() {
            outcome.access = Some(AccessRecord {
                client: Some(peer),
                listener: listener.to_owned(),
                method: req.method().as_str().to_owned(),
                host: host_of(&req).map(Cow::into_owned),
                path: req.uri().path().to_owned(),
                flow_id: conn.flow_id,
                ..AccessRecord::default()
            });
        }
        let response = self
            .forward(req, listener, peer, scheme, conn, &mut outcome)
            .await;
        outcome.status = response.status().as_u16();
        outcome.duration = started.elapsed();
        self.meters.request(listener, &outcome);
        let Some(mut record) = outcome.access.take() else {
            return response;
        };
        record.route = outcome.route;
        record.status = outcome.status;
        record.retries = outcome.retries;
        record.upstream_duration = outcome.upstream_duration;
        if let Some(entry) = outcome
            .pool
            .and_then(|i| self.pools.values().find(|e| e.index == i))
        {
            record.pool = Some(entry.pool.config.name.clone());
            record.backend = outcome
                .backend
                .and_then(|b| entry.pool.config.backends.get(b))
                .map(|b| b.addr);
        }
        response.map(|body| LoggedBody::wrap(body, started, self.observer.clone(), record))
    }

    /// The request's journey proper; `outcome` records what happened on the way.
    async fn forward(
        &self,
        req: Request<Incoming>,
        listener: &str,
        peer: SocketAddr,
        scheme: &'static str,
        conn: &ConnInfo,
        outcome: &mut Outcome,
    ) -> Response<ProxyBody> {
        let rules = self.listeners.get(listener);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| rules.is_some_and(|r| n > r.max_body)) {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let host = host_of(&req);
        let Some(Routed { index, route, pool }) =
            self.router.route(listener, &req, host.as_deref())
        else {
            return plain(StatusCode::NOT_FOUND, "no route\n");
        };
        outcome.route = Some(index);
        let Some(PoolEntry {
            pool,
            index: pool_index,
        }) = self.pools.get(pool)
        else {
            return plain(StatusCode::BAD_GATEWAY, "no pool\n");
        };
        outcome.pool = Some(*pool_index);
        let Some(path_and_query) = upstream_target(route, req.uri()) else {
            return plain(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        let forwarded_host = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok());
        drop(host);
        let trusted = rules.map_or(&[][..], |r| r.trusted_proxies.as_slice());
        let client = client_ip(peer.ip(), req.headers(), trusted);
        // Only the consistent hash reads the key.
        let key = match pool.config.algorithm {
            Algorithm::ConsistentHash => hash_key(&pool.config.hash_key, &req, client),
            _ => 0,
        };
        let retryable = idempotent(req.method()) && !has_body(&req);

        let mut req = req;
        let mut upgrade = upgrade::take(&mut req);
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = &upgrade {
            upgrade.restore_headers(&mut parts.headers);
        }
        let request_id = set_forwarded(
            &mut parts.headers,
            &conn.peer,
            client,
            scheme,
            forwarded_host,
            || self.new_request_id(),
        );
        parts.version = hyper::Version::HTTP_11;
        // A request without a body (most GETs) needs neither the limits nor the watch.
        let watch = (!body.is_end_stream()).then(BodyWatch::default);
        let mut body = match &watch {
            Some(watch) => body::limited(body, rules.and_then(|r| r.body_limits), watch),
            None => Empty::new().map_err(|never| match never {}).boxed(),
        };
        if let Some(record) = &mut outcome.access {
            record.request_id = request_id.to_str().ok().map(str::to_owned);
            body = CountedBody::new(body, record.bytes_in.clone()).boxed();
        }
        let mut body = Some(body);

        let attempts = if retryable {
            1 + pool.config.retries
        } else {
            1
        };
        // The head is cloned only for attempts that may be followed by another one.
        let mut parts = Some(parts);
        // Backends already tried (filled from the second attempt on, so a request that is
        // answered at once allocates nothing here).
        let mut tried = Vec::new();
        let mut last = plain(StatusCode::SERVICE_UNAVAILABLE, "no backend available\n");
        let budget = &pool.state.retry_budget;
        let _request = budget.request();
        for attempt in 0..attempts {
            if let Some(previous) = outcome.backend {
                tried.push(previous);
            }
            let Some((i, _inflight)) = pool.acquire(key, &tried) else {
                break;
            };
            // A retry needs room in the pool's budget; without it the last failure stands.
            let _retry = match attempt {
                0 => None,
                _ => match budget.try_retry() {
                    Some(permit) => Some(permit),
                    None => {
                        outcome.retry_denied = true;
                        break;
                    }
                },
            };
            outcome.retries = attempt;
            outcome.backend = Some(i);
            let backend = pool.config.backends[i].addr;
            let head = if attempt + 1 < attempts {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(mut head) = head else {
                break;
            };
            head.uri = pool.upstream_uri(i, path_and_query.clone());
            let upstream_body = body
                .take()
                .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
            let upstream = Request::from_parts(head, upstream_body);
            let sent = Instant::now();
            let result = tokio::time::timeout(
                pool.config.request_timeout,
                pool.send(i, upstream, peer, conn),
            )
            .await;
            outcome.upstream_duration = Some(sent.elapsed());
            let more = attempt + 1 < attempts;
            pool.record(
                i,
                matches!(&result, Ok(Ok(r)) if !r.status().is_server_error()),
            );
            match result {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retry_status = status == StatusCode::BAD_GATEWAY
                        || status == StatusCode::SERVICE_UNAVAILABLE;
                    if retry_status && more {
                        last = plain(status, "upstream unavailable\n");
                        continue;
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(upgrade) = upgrade.take()
                    {
                        return upgrade.splice(response.into_upgrade());
                    }
                    let mut response = response.into_proxy_response();
                    remove_hop_by_hop(response.headers_mut());
                    return response;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%backend, %err, "upstream request failed");
                    if err.is_connect() {
                        outcome.connect_errors += 1;
                        self.meters.connect_error(*pool_index, i);
                    }
                    if let Some(broken) = watch.as_ref().and_then(BodyWatch::broken) {
                        return body::refusal(broken);
                    }
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

/// The path and query sent upstream: the client's own when the route rewrites nothing (shared,
/// not copied), else the rewritten path with the client's query. None: the rewrite made an
/// invalid target.
fn upstream_target(route: &RouteConfig, uri: &Uri) -> Option<PathAndQuery> {
    if route.rewrite.is_none() {
        return Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
    }
    let path = upstream_path(route, uri.path());
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    PathAndQuery::from_maybe_shared(Bytes::from(target)).ok()
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

fn hash_key(key: &HashKey, req: &Request<Incoming>, client: IpAddr) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match key {
        HashKey::ClientIp => client.hash(&mut hasher),
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
