//! The request pipeline: the phases every HTTP request passes through, in this order (after
//! Pingora's `ProxyHttp` phases and Envoy's filter chain). Each route's policies were compiled
//! at load into its `RouteChain` (`policy/`), grouped by phase; a route without policies
//! pays one `is_empty` check per phase. `RequestCtx` (`context.rs`) carries the request
//! through the phases.
//!
//! 0. Global guard: over `--max-memory`, a 503 before anything else (`overload.rs`).
//! 1. Request: the listener's limits (a declared body over `max_body_bytes`: 413), the route
//!    (none: 404), then the route's request policies, which may answer at once (`cors`
//!    first, answering preflights before authentication; `respond`, `redirect`,
//!    `rate_limit`'s 429; authentication: `jwt`, `api_key`, `client_cert`).
//!    Before them, the identity headers only lb sets (`X-Consumer`,
//!    `X-Forwarded-Client-Cert`) are stripped from the request when any route or listener of
//!    the configuration sets them, and the connection's verified client certificate is
//!    written into `X-Forwarded-Client-Cert`.
//!    On a route with `cache`, the cache phase follows (`cache/phase.rs`): a stored answer
//!    may answer here; otherwise phases 2 to 4 fetch it for the cache.
//! 2. Upstream selection: the route's pool (a split's by weight, passing over a pool with no
//!    usable backend), then a backend for each attempt (`forward.rs`).
//! 3. Upstream request: hop-by-hop headers removed, the path rewritten, X-Forwarded-* /
//!    X-Real-IP / X-Request-Id set, then the route's upstream-request policies
//!    (`request_headers`), so they can override lb's own headers. The request body is
//!    streamed within the listener's limits, or, with the route's `buffer_request`, read to
//!    its end here before any backend is picked (`policy/buffer/request.rs`).
//! 4. Upstream: the pool's guards (circuit breaker, adaptive concurrency: 503 at once when
//!    over), attempts, retries within the budget, the route's `timeout` or the pool's
//!    `request_timeout` (`forward.rs`); the backend's hop-by-hop response headers removed.
//! 5. Response headers: the route's response policies (`cors` for an allowed origin the
//!    request phase noted in `ctx.cors`, then `response_headers`), on every
//!    response of the route, lb's own 502/504 and direct answers included; then the
//!    RateLimit fields of the route's limits that counted the request.
//! 6. Response body: streaming transforms wrap the body here: the route's `buffer_response`
//!    (read ahead of the client, `policy/buffer/response.rs`), then its `compress`
//!    (negotiated from Accept-Encoding in the request phase, `RequestCtx::compress`); a whole
//!    body is never buffered unless a policy asks.
//! 7. Log: the request counted in the metrics; with an access log the body is wrapped to
//!    count bytes out and write the line when it is done.
use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request, Response, StatusCode,
    body::{Body as _, Incoming},
    header::{self, HeaderValue},
    http::request::Parts,
};

use super::{
    access_log::{AccessRecord, CountedBody, LoggedBody},
    answer::plain,
    body::{self, BodyWatch, UpstreamBody},
    context::RequestCtx,
    forward::{Upstream, has_body, hash_key, idempotent, upstream_target},
    headers::{client_ip, remove_hop_by_hop, set_forwarded},
    policy::{ResponsePolicy, RouteChain, UpstreamRequestPolicy, buffer},
    pool::{Pool, ProxyBody},
    proxy::{ListenerRules, PoolEntry, Proxy},
    routing::{Routed, host_of},
    upgrade::{self, UpgradeRequest},
    upstream::ConnInfo,
};
use crate::config::{Algorithm, RouteConfig};

/// What a phase decided: go on with `T`, or answer the client now.
pub(super) enum Step<T> {
    Next(T),
    Answer(Response<ProxyBody>),
}

impl Proxy {
    /// Answers one request that arrived on `listener` from `peer` (the true client when a PROXY
    /// header said so) over `scheme` (http or https), on the downstream connection `conn`.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        listener: &str,
        peer: SocketAddr,
        scheme: &'static str,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestCtx::new(listener, peer, scheme, conn);
        if self.observer().access_log().is_some() {
            ctx.access = Some(AccessRecord {
                client: Some(peer),
                listener: listener.to_owned(),
                method: req.method().as_str().to_owned(),
                host: host_of(&req).map(Cow::into_owned),
                path: req.uri().path().to_owned(),
                flow_id: conn.flow_id,
                user_agent: header_text(&req, header::USER_AGENT),
                referer: header_text(&req, header::REFERER),
                protocol: protocol_name(req.version()),
                tls_version: conn.tls.as_ref().map(|(v, _)| *v),
                sni: conn.tls.as_ref().and_then(|(_, sni)| sni.clone()),
                ..AccessRecord::default()
            });
        }
        let mut response = self.proxy(req, &mut ctx).await;
        let route_pages = ctx.route.and_then(|(_, r)| r.chain.error_pages.as_deref());
        let listener_pages = self
            .listener_rules(ctx.listener)
            .and_then(|r| r.error_pages.as_deref());
        if route_pages.is_some() || listener_pages.is_some() {
            super::policy::error_pages::apply([route_pages, listener_pages], &mut response);
        }
        if let Some((_, route)) = ctx.route {
            response_phase(&route.chain, ctx.cors.as_ref(), &mut response);
            if !ctx.rate_limits.is_empty()
                && let Some(limits) = route.chain.rate_limits()
            {
                limits.set_fields(&ctx.rate_limits, response.headers_mut());
            }
        }
        // Phase 6 (response body): `buffer_response` reads the backend's body ahead of the
        // client (first, so it holds the backend's bytes), then compression, before the log
        // phase's byte counter (which then counts the bytes sent). Routes without `compress`
        // never set `ctx.compress`.
        if let Some((_, route)) = ctx.route
            && let Some(limit) = route.chain.buffer.response
        {
            response = buffer::response::read_ahead(response, limit);
        }
        if let Some(negotiated) = ctx.compress.take()
            && let Some((_, route)) = ctx.route
            && let Some(compress) = &route.chain.compress
        {
            response = compress.apply(response, negotiated);
        }
        self.log_phase(ctx, response)
    }

    /// Phases 1 to 4: the response, from a policy, lb itself or the backend.
    async fn proxy<'a>(
        self: &'a Arc<Self>,
        req: Request<Incoming>,
        ctx: &mut RequestCtx<'a>,
    ) -> Response<ProxyBody> {
        if self.over_memory() {
            ctx.shed = Some(super::upstream::Shed::Memory);
            return super::answer::overloaded(super::upstream::Shed::Memory);
        }
        let rules = self.listener_rules(ctx.listener);
        let (pool_name, forwarded_host) = match self.request_phase(&req, rules, ctx) {
            Step::Next(next) => next,
            Step::Answer(answer) => return answer,
        };
        let Some((_, route)) = ctx.route else {
            return plain(StatusCode::NOT_FOUND, "no route\n");
        };
        let mut req = req;
        // Identity headers only lb may set (consumer, client certificate): a client's own
        // copies go, on every route, whenever some route or listener sets them.
        let identity_headers = self.identity_headers();
        if !identity_headers.is_empty() {
            for name in identity_headers {
                req.headers_mut().remove(name);
            }
            if let Some(cert) = &ctx.identity.client_cert {
                req.headers_mut()
                    .insert(super::client_cert::XFCC, cert.header.clone());
            }
        }
        if !route.chain.request.is_empty() {
            for policy in &route.chain.request {
                if let Some(answer) = policy.on_request(&mut req, ctx, self.policy_state()).await {
                    return answer;
                }
            }
        }
        if let Some(cache) = &route.chain.cache {
            let request = super::cache::CacheRequest {
                route,
                pool_name,
                rules,
                forwarded_host,
            };
            return self.through_cache(cache, req, request, ctx).await;
        }
        self.upstream(req, route, pool_name, rules, forwarded_host, ctx)
            .await
    }

    /// Phases 2 to 4 for the request as the client sent it.
    pub(super) async fn upstream<'a>(
        &'a self,
        req: Request<Incoming>,
        route: &'a RouteConfig,
        pool_name: &str,
        rules: Option<&ListenerRules>,
        forwarded_host: Option<HeaderValue>,
        ctx: &mut RequestCtx<'a>,
    ) -> Response<ProxyBody> {
        let (pool, index) = match self.phase2_pool(route, pool_name, ctx) {
            Step::Next(found) => found,
            Step::Answer(answer) => return answer,
        };
        let mut upstream =
            match upstream_request_phase(req, route, pool, rules, forwarded_host, ctx, || {
                self.new_request_id()
            }) {
                Step::Next(upstream) => upstream,
                Step::Answer(answer) => return answer,
            };
        // `buffer_request`: the whole body read before a backend is picked (nothing goes
        // upstream for a body that breaks a limit or is cut short).
        if let Some(buffering) = &route.chain.buffer.request
            && upstream.watch.is_some()
            && let Err(answer) = buffer::request::buffer(&mut upstream, buffering).await
        {
            return answer;
        }
        self.forward(ctx, pool, index, upstream).await
    }

    /// Phases 2 to 4 for a request without a body made from `parts` (the cache's fetches).
    pub(super) async fn upstream_without_body<'a>(
        &'a self,
        parts: Parts,
        route: &'a RouteConfig,
        pool_name: &str,
        forwarded_host: Option<HeaderValue>,
        ctx: &mut RequestCtx<'a>,
    ) -> Response<ProxyBody> {
        let (pool, index) = match self.phase2_pool(route, pool_name, ctx) {
            Step::Next(found) => found,
            Step::Answer(answer) => return answer,
        };
        let head = UpstreamHead {
            route,
            pool,
            forwarded_host,
            upgrade: None,
        };
        let upstream = match upstream_head_phase(parts, empty_body(), None, head, ctx, || {
            self.new_request_id()
        }) {
            Step::Next(upstream) => upstream,
            Step::Answer(answer) => return answer,
        };
        self.forward(ctx, pool, index, upstream).await
    }

    /// Phase 1 up to the route's policies: limits, route, the client behind trusted proxies.
    /// Next: the pool the route chose, and the request's host as X-Forwarded-Host will carry
    /// it (found once, here). The route's request policies run next, in `proxy`.
    pub(super) fn request_phase<'a>(
        &'a self,
        req: &Request<Incoming>,
        rules: Option<&ListenerRules>,
        ctx: &mut RequestCtx<'a>,
    ) -> Step<(&'a str, Option<HeaderValue>)> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| rules.is_some_and(|r| n > r.max_body)) {
            return Step::Answer(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
        let host = host_of(req);
        let Some(Routed { index, route, pool }) =
            self.router().route(ctx.listener, req, host.as_deref())
        else {
            return Step::Answer(plain(StatusCode::NOT_FOUND, "no route\n"));
        };
        ctx.route = Some((index, route));
        if let Some(compress) = &route.chain.compress {
            ctx.compress = Some(compress.negotiate(req));
        }
        let trusted = rules.map_or(&[][..], |r| r.trusted_proxies.as_slice());
        ctx.client = client_ip(ctx.peer.ip(), req.headers(), trusted);
        let forwarded_host = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok());
        Step::Next((pool, forwarded_host))
    }

    /// Phase 2: the pool (and its index, noted in `ctx`), or lb's 502 when there is none.
    fn phase2_pool<'a>(
        &'a self,
        route: &RouteConfig,
        pool_name: &str,
        ctx: &mut RequestCtx<'_>,
    ) -> Step<(&'a Pool, usize)> {
        let Some(PoolEntry { pool, index }) = self.select_pool(route, pool_name) else {
            return Step::Answer(plain(StatusCode::BAD_GATEWAY, "no pool\n"));
        };
        ctx.pool = Some(*index);
        Step::Next((pool, *index))
    }

    /// Phase 2's pool: the one the route chose; for a split whose choice has no usable
    /// backend, the first other pool of the split that has one.
    fn select_pool(&self, route: &RouteConfig, chosen: &str) -> Option<&PoolEntry> {
        let entry = self.pool_entry(chosen)?;
        if route.split.is_empty() || entry.pool.pick(0, &[]).is_some() {
            return Some(entry);
        }
        route
            .split
            .iter()
            .filter(|t| t.weight > 0 && t.pool != chosen)
            .filter_map(|t| self.pool_entry(&t.pool))
            .find(|e| e.pool.pick(0, &[]).is_some())
            .or(Some(entry))
    }

    /// Phase 7: the request counted; with an access log, its line written when the body ends.
    fn log_phase(
        &self,
        mut ctx: RequestCtx<'_>,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        ctx.status = response.status().as_u16();
        ctx.duration = ctx.started.elapsed();
        self.meters().request(ctx.listener, &ctx);
        if let Some(auth) = ctx.auth {
            self.meters().auth(ctx.route_index(), auth);
        }
        let Some(mut record) = ctx.access.take() else {
            return response;
        };
        record.consumer = ctx.identity.consumer.clone();
        record.client_cert = ctx.identity.client_cert.as_ref().map(|c| c.name.clone());
        record.route = ctx.route.map(|(index, route)| match &route.name {
            Some(name) => super::access_log::RouteLabel::Name(name.clone()),
            None => super::access_log::RouteLabel::Index(index),
        });
        record.status = ctx.status;
        record.cache = ctx.cache.map(super::cache::CacheStatus::as_str);
        record.upstream_status = ctx.upstream_status;
        record.retries = ctx.retries;
        record.shed = ctx.shed.map(super::upstream::Shed::reason);
        record.upstream_duration = ctx.upstream_duration;
        if let Some(pool) = ctx.pool.and_then(|i| self.pool_by_index(i)) {
            record.pool = Some(pool.config.name.clone());
            record.backend = ctx
                .backend
                .and_then(|b| pool.config.backends.get(b))
                .map(|b| b.addr);
        }
        let started = ctx.started;
        response.map(|body| LoggedBody::wrap(body, started, self.observer_arc(), record))
    }
}

/// A request header's text for the access log (None: absent or not text).
fn header_text(req: &Request<Incoming>, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn protocol_name(version: hyper::Version) -> &'static str {
    match version {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Phase 3: the request as it goes upstream (or lb's answer: a rewrite made a bad target).
fn upstream_request_phase(
    req: Request<Incoming>,
    route: &RouteConfig,
    pool: &Pool,
    rules: Option<&ListenerRules>,
    forwarded_host: Option<HeaderValue>,
    ctx: &mut RequestCtx<'_>,
    new_request_id: impl FnOnce() -> HeaderValue,
) -> Step<Upstream> {
    let mut req = req;
    let upgrade = upgrade::take(&mut req);
    let (parts, body) = req.into_parts();
    // A request without a body (most GETs) needs neither the limits nor the watch.
    let watch = (!body.is_end_stream()).then(BodyWatch::default);
    let body: UpstreamBody = match &watch {
        Some(watch) => body::limited(body, rules.and_then(|r| r.body_limits), watch),
        None => empty_body(),
    };
    let head = UpstreamHead {
        route,
        pool,
        forwarded_host,
        upgrade,
    };
    upstream_head_phase(parts, body, watch, head, ctx, new_request_id)
}

/// What phase 3 needs besides the request.
pub(super) struct UpstreamHead<'a> {
    pub route: &'a RouteConfig,
    pub pool: &'a Pool,
    pub forwarded_host: Option<HeaderValue>,
    pub upgrade: Option<UpgradeRequest>,
}

pub(super) fn empty_body() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Phase 3 on a request head and the body it sends (the cache's fetches send none).
pub(super) fn upstream_head_phase(
    mut parts: Parts,
    body: UpstreamBody,
    watch: Option<BodyWatch>,
    head: UpstreamHead<'_>,
    ctx: &mut RequestCtx<'_>,
    new_request_id: impl FnOnce() -> HeaderValue,
) -> Step<Upstream> {
    let UpstreamHead {
        route,
        pool,
        forwarded_host,
        upgrade,
    } = head;
    let Some(target) = upstream_target(route, &parts.uri) else {
        return Step::Answer(plain(StatusCode::BAD_REQUEST, "bad request target\n"));
    };
    let client = ctx.client;
    // Only the consistent hash reads the key.
    let key = match pool.config.algorithm {
        Algorithm::ConsistentHash => hash_key(&pool.config.hash_key, &parts.headers, client),
        _ => 0,
    };
    let retryable = idempotent(&parts.method) && !has_body(&parts.headers);
    remove_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = &upgrade {
        upgrade.restore_headers(&mut parts.headers);
    }
    let request_id = set_forwarded(
        &mut parts.headers,
        &ctx.conn.peer,
        client,
        ctx.scheme,
        forwarded_host,
        new_request_id,
    );
    parts.version = hyper::Version::HTTP_11;
    apply_upstream_request_policies(&route.chain, &mut parts);
    let mut body = body;
    if let Some(record) = &mut ctx.access {
        record.request_id = request_id.to_str().ok().map(str::to_owned);
        body = CountedBody::new(body, record.bytes_in.clone()).boxed();
    }
    Step::Next(Upstream {
        parts,
        body,
        watch,
        upgrade,
        target,
        key,
        retryable,
        replay: None,
    })
}

fn apply_upstream_request_policies(chain: &RouteChain, parts: &mut Parts) {
    for policy in &chain.upstream_request {
        match policy {
            UpstreamRequestPolicy::Headers(edits) => edits.apply(&mut parts.headers),
        }
    }
}

/// Phase 5: the route's response policies (`cors`: the allowed origin's
/// Access-Control-Allow-Origin, when the request phase found one).
fn response_phase(
    chain: &RouteChain,
    cors: Option<&HeaderValue>,
    response: &mut Response<ProxyBody>,
) {
    for policy in &chain.response {
        match policy {
            ResponsePolicy::Cors(c) => match cors {
                Some(origin) => c.on_response(origin, response.headers_mut()),
                None => c.on_other_response(response.headers_mut()),
            },
            ResponsePolicy::Headers(edits) => edits.apply(response.headers_mut()),
        }
    }
}
