//! Phase 4 of the pipeline: the request sent to a backend of its pool, with safe retries.
//!
//! Retries: a request is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) and has no body or a buffered one (route `buffer_request`, sent again from its
//! start), on a connect error, a timeout or a 502/503 answer, each time to a
//! backend not tried yet, at most `retries` times, while the pool's retry budget
//! (`upstream/budget.rs`) has room. Everything else gets one attempt. Each attempt gets the
//! route's `timeout`, or the pool's `request_timeout`, to the response head.
//!
//! Guards (pools that configure them; others pay one branch): the pool's circuit breaker and
//! adaptive concurrency limit admit the request first (`Pool::admit`), a retry needs room
//! under `max_retries`, and a new upstream connection room under `max_connections` /
//! `max_pending_requests`. Over any of them the request is answered 503 at once
//! (`answer::overloaded`, `ctx.shed` says why) or, for a retry, the last failure stands.
use std::{net::IpAddr, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, header, http::request::Parts,
    http::uri::PathAndQuery,
};
use lb_common::hash::key_hash;

use super::{
    answer::{overloaded, plain},
    body::{self, BodyWatch, UpstreamBody},
    config::{HashKey, RouteConfig},
    context::RequestCtx,
    headers::remove_hop_by_hop,
    pool::{Pool, ProxyBody},
    proxy::Proxy,
    routing::upstream_path,
    upgrade::UpgradeRequest,
    upstream::Attempt,
};

/// The request as phase 3 made it, ready for its attempts.
pub(super) struct Upstream {
    pub parts: Parts,
    pub body: UpstreamBody,
    /// Set when the request has a body: tells a failed attempt whether the client broke it.
    pub watch: Option<BodyWatch>,
    pub upgrade: Option<UpgradeRequest>,
    /// Path and query sent upstream.
    pub target: PathAndQuery,
    /// Consistent-hash key (0 for other algorithms).
    pub key: u64,
    /// Idempotent and without a body (or with a buffered one): may be sent again.
    pub retryable: bool,
    /// A buffered body (route `buffer_request`): each attempt sends it from its start.
    pub replay: Option<std::sync::Arc<super::policy::buffer::request::Buffered>>,
}

impl Proxy {
    /// Sends `upstream` to backends of `pool` (index `pool_index`) until one answers or the
    /// attempts, the budget or the backends run out.
    pub(super) async fn forward(
        &self,
        ctx: &mut RequestCtx<'_>,
        pool: &Pool,
        pool_index: usize,
        upstream: Upstream,
    ) -> Response<ProxyBody> {
        let Upstream {
            parts,
            body,
            watch,
            mut upgrade,
            target,
            key,
            retryable,
            replay,
        } = upstream;
        let timeout = ctx
            .route
            .and_then(|(_, r)| r.chain.timeout)
            .unwrap_or(pool.config.request_timeout);
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
        // The answer of the last failed attempt (made only when one fails).
        let mut last = None;
        let admission = match pool.admit() {
            Ok(admission) => admission,
            Err(shed) => {
                ctx.shed = Some(shed);
                return overloaded(shed);
            }
        };
        let budget = &pool.state.retry_budget;
        let _request = budget.request();
        for attempt in 0..attempts {
            if let Some(previous) = ctx.backend {
                tried.push(previous);
            }
            let Some((i, _inflight)) = pool.acquire(key, &tried) else {
                break;
            };
            // A retry needs room under the breaker's max_retries and in the pool's budget;
            // without it the last failure stands.
            let _retry = match attempt {
                0 => None,
                _ => {
                    let slot = match pool.retry_slot() {
                        Ok(slot) => slot,
                        Err(shed) => {
                            ctx.shed_retry = Some(shed);
                            break;
                        }
                    };
                    match budget.try_retry() {
                        Some(permit) => Some((permit, slot)),
                        None => {
                            ctx.retry_denied = true;
                            break;
                        }
                    }
                }
            };
            ctx.retries = attempt;
            ctx.backend = Some(i);
            let backend = pool.config.backends[i].addr;
            let head = if attempt + 1 < attempts {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(mut head) = head else {
                break;
            };
            head.uri = pool.upstream_uri(i, target.clone());
            let upstream_body = match &replay {
                Some(buffered) => buffered.body(),
                None => body
                    .take()
                    .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed()),
            };
            let request = Request::from_parts(head, upstream_body);
            let sent = Instant::now();
            let result =
                tokio::time::timeout(timeout, pool.send(i, request, ctx.peer, ctx.conn)).await;
            ctx.upstream_duration = Some(sent.elapsed());
            let more = attempt + 1 < attempts;
            if let Ok(Err(err)) = &result
                && let Some(shed) = err.shed()
            {
                // No room for a new connection: nothing was sent, the backend is not to blame.
                ctx.shed = Some(shed);
                return overloaded(shed);
            }
            pool.record_timed(
                i,
                match &result {
                    Ok(Ok(r)) => Attempt::Answered(r.status().as_u16()),
                    _ => Attempt::Failed,
                },
                sent.elapsed(),
            );
            match result {
                Ok(Ok(response)) => {
                    let status = response.status();
                    ctx.upstream_status = Some(status.as_u16());
                    let retry_status = status == StatusCode::BAD_GATEWAY
                        || status == StatusCode::SERVICE_UNAVAILABLE;
                    if retry_status && more {
                        last = Some(plain(status, "upstream unavailable\n"));
                        continue;
                    }
                    if let Some(admission) = admission {
                        admission.answered();
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(upgrade) = upgrade.take()
                    {
                        return upgrade.splice(response.into_upgrade(), ctx.conn.tracker.as_ref());
                    }
                    let mut response = response.into_proxy_response();
                    remove_hop_by_hop(response.headers_mut());
                    return response;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%backend, %err, "upstream request failed");
                    if err.is_connect() {
                        ctx.connect_errors += 1;
                        self.meters().connect_error(pool_index, i);
                    }
                    if let Some(broken) = watch.as_ref().and_then(BodyWatch::broken) {
                        return body::refusal(broken);
                    }
                    last = Some(plain(StatusCode::BAD_GATEWAY, "upstream failed\n"));
                }
                Err(_) => {
                    last = Some(plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"));
                }
            }
        }
        // A timeout is a latency signal too; a request that never got an answer for other
        // reasons (connect errors) gives none.
        if let Some(admission) = admission
            && last
                .as_ref()
                .is_some_and(|r| r.status() == StatusCode::GATEWAY_TIMEOUT)
        {
            admission.answered();
        }
        last.unwrap_or_else(|| plain(StatusCode::SERVICE_UNAVAILABLE, "no backend available\n"))
    }
}

/// The path and query sent upstream: the client's own when the route rewrites nothing (shared,
/// not copied), else the rewritten path with the client's query. None: the rewrite made an
/// invalid target.
pub(super) fn upstream_target(route: &RouteConfig, uri: &Uri) -> Option<PathAndQuery> {
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

/// The consistent-hash key of a request: lb-common's `key_hash` of the client's address
/// bytes, the header's value or the cookie's value (absent: the empty value), the same on
/// every node and build.
pub(super) fn hash_key(key: &HashKey, headers: &HeaderMap, client: IpAddr) -> u64 {
    match key {
        HashKey::ClientIp => client_ip_key(client),
        HashKey::Header(name) => key_hash(headers.get(name).map_or(&[][..], |v| v.as_bytes())),
        HashKey::Cookie(name) => key_hash(
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map_or(&[][..], |(_, v)| v.as_bytes()),
        ),
    }
}

/// A client address as a selection key (shared with the stream listeners, so a client
/// reaches the same backend over HTTP and TCP).
pub(crate) fn client_ip_key(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => key_hash(&v6.octets()),
    }
}

pub(super) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

pub(super) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}
