//! The cache's place in the pipeline: between the request policies and upstream selection
//! (see `mod.rs` for what each case answers).
use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};

use super::{
    CacheStatus, RouteCache,
    entry::{Freshness, Stored, StoredHead},
    fill::{FillBody, Filling},
    key::CacheKey,
    lock::{self, FillGuard, Turn},
};
use crate::{
    config::RouteConfig,
    l7::{
        context::RequestCtx,
        forward::has_body,
        pool::ProxyBody,
        proxy::{ListenerRules, Proxy},
        routing::host_of,
        upstream::ConnInfo,
    },
};

pub const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// What the cache phase needs of the request phase's findings.
pub(in crate::l7) struct CacheRequest<'a> {
    pub route: &'a RouteConfig,
    pub pool_name: &'a str,
    pub rules: Option<&'a ListenerRules>,
    pub forwarded_host: Option<HeaderValue>,
}

impl Proxy {
    /// Phases 2 to 4 through the route's cache.
    pub(in crate::l7) async fn through_cache<'a>(
        self: &'a Arc<Self>,
        cache: &'a RouteCache,
        req: Request<Incoming>,
        request: CacheRequest<'a>,
        ctx: &mut RequestCtx<'a>,
    ) -> Response<ProxyBody> {
        let CacheRequest {
            route,
            pool_name,
            rules,
            forwarded_host,
        } = request;
        let cacheable_request = matches!(*req.method(), Method::GET | Method::HEAD)
            && !has_body(req.headers())
            && !req.headers().contains_key(header::UPGRADE);
        if !cacheable_request {
            let response = self
                .upstream(req, route, pool_name, rules, forwarded_host, ctx)
                .await;
            return mark(response, CacheStatus::Bypass, ctx);
        }
        let host = host_of(&req).map_or_else(String::new, |h| h.into_owned());
        let key = CacheKey::new(
            ctx.scheme,
            &host,
            ctx.conn.local.port(),
            req.uri(),
            req.headers(),
            &cache.settings.key_headers,
        );
        let (parts, _) = req.into_parts();
        let head_only = parts.method == Method::HEAD;
        let found = cache.store().get(&key, &parts.headers);
        let now = Instant::now();
        // The client asking for a revalidation makes a fresh entry count as stale.
        let freshness = found.as_ref().map(|s| match s.head.freshness(now) {
            Freshness::Fresh | Freshness::Revalidating if asks_revalidation(&parts.headers) => {
                Freshness::Stale {
                    usable_on_error: false,
                }
            }
            other => other,
        });
        match (&found, freshness) {
            (Some(stored), Some(Freshness::Fresh)) => {
                return mark(serve(stored, &parts), CacheStatus::Hit, ctx);
            }
            (Some(stored), Some(Freshness::Revalidating)) => {
                if let Some(guard) = cache.locks().try_fill(&key) {
                    self.refresh_in_background(
                        cache,
                        key,
                        &parts,
                        stored,
                        guard,
                        &origin_of(ctx, pool_name, forwarded_host.clone()),
                    );
                }
                return mark(serve(stored, &parts), CacheStatus::Stale, ctx);
            }
            _ => {}
        }
        let usable_on_error = matches!(
            freshness,
            Some(Freshness::Stale {
                usable_on_error: true
            })
        );
        // A HEAD that misses is sent on as it is and stores nothing (its answer has no
        // body to store); GETs coalesce.
        let guard = match (head_only, cache.locks().enter(&key)) {
            (true, _) => None,
            (false, Turn::Fill(guard)) => Some(guard),
            (false, Turn::Wait(rx)) => {
                let timeout = cache.settings.lock_timeout;
                if !timeout.is_zero()
                    && lock::wait(rx, timeout).await
                    && let Some(stored) = cache.store().get(&key, &parts.headers)
                    && stored.head.freshness(Instant::now()) == Freshness::Fresh
                {
                    return mark(serve(&stored, &parts), CacheStatus::Hit, ctx);
                }
                // The fill timed out or stored nothing usable: fetch, uncached.
                None
            }
        };
        let mut upstream_parts = parts.clone();
        if let Some(stored) = &found {
            add_validators(&mut upstream_parts.headers, &stored.head);
        }
        let response = self
            .upstream_without_body(upstream_parts, route, pool_name, forwarded_host, ctx)
            .await;
        let status = response.status();
        if let Some(stored) = &found {
            if status == StatusCode::NOT_MODIFIED {
                let (not_modified, _) = response.into_parts();
                let refreshed = stored
                    .head
                    .refreshed(&cache.settings, &parts, &not_modified);
                let served = match refreshed {
                    Some(head) => {
                        let stored = Stored {
                            head,
                            body: stored.body.clone(),
                        };
                        let answer = serve(&stored, &parts);
                        cache.store().insert(key, stored);
                        cache.update_gauges();
                        answer
                    }
                    None => serve(stored, &parts),
                };
                drop(guard);
                return mark(served, CacheStatus::Revalidated, ctx);
            }
            if usable_on_error && status.is_server_error() {
                drop(guard);
                return mark(serve(stored, &parts), CacheStatus::Stale, ctx);
            }
        }
        let status = if found.is_some() {
            CacheStatus::Expired
        } else {
            CacheStatus::Miss
        };
        let response = match guard {
            Some(guard) => fill(cache, key, &parts, response, guard),
            None => response,
        };
        mark(response, status, ctx)
    }

    /// Refreshes a stale entry (within stale-while-revalidate) off the request path: a
    /// conditional fetch like the foreground one, its answer stored and not sent anywhere.
    fn refresh_in_background(
        self: &Arc<Self>,
        cache: &RouteCache,
        key: CacheKey,
        parts: &Parts,
        stored: &Arc<Stored>,
        guard: FillGuard,
        origin: &Origin,
    ) {
        let proxy = self.clone();
        let cache = cache.clone();
        let stored = stored.clone();
        let mut upstream_parts = parts.clone();
        add_validators(&mut upstream_parts.headers, &stored.head);
        let parts = parts.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            // The same generation (`proxy`), so the same index names the same route.
            let Some((index, route)) = proxy.router().configs().nth(origin.route_index) else {
                return;
            };
            let conn = ConnInfo::new(origin.conn_peer, origin.local, origin.flow_id);
            let mut ctx = RequestCtx::new(&origin.listener, origin.peer, origin.scheme, &conn);
            ctx.route = Some((index, route));
            ctx.client = origin.client;
            let response = proxy
                .upstream_without_body(
                    upstream_parts,
                    route,
                    &origin.pool_name,
                    origin.forwarded_host,
                    &mut ctx,
                )
                .await;
            if response.status() == StatusCode::NOT_MODIFIED {
                let (not_modified, _) = response.into_parts();
                if let Some(head) = stored
                    .head
                    .refreshed(&cache.settings, &parts, &not_modified)
                {
                    cache.store().insert(
                        key,
                        Stored {
                            head,
                            body: stored.body.clone(),
                        },
                    );
                    cache.update_gauges();
                }
                drop(guard);
                return;
            }
            // Read to the end so the fill stores it (or drops it: uncacheable, too big).
            let mut body = fill(&cache, key, &parts, response, guard).into_body();
            while let Some(Ok(_)) = body.frame().await {}
        });
    }
}

/// Who a background refresh acts for: the request that found the entry stale.
#[derive(Clone)]
struct Origin {
    listener: String,
    peer: std::net::SocketAddr,
    conn_peer: std::net::IpAddr,
    local: std::net::SocketAddr,
    flow_id: Option<u64>,
    scheme: &'static str,
    client: std::net::IpAddr,
    route_index: usize,
    pool_name: String,
    forwarded_host: Option<HeaderValue>,
}

fn origin_of(ctx: &RequestCtx<'_>, pool_name: &str, forwarded_host: Option<HeaderValue>) -> Origin {
    Origin {
        listener: ctx.listener.to_owned(),
        peer: ctx.peer,
        conn_peer: ctx.conn.peer.ip,
        local: ctx.conn.local,
        flow_id: ctx.conn.flow_id,
        scheme: ctx.scheme,
        client: ctx.client,
        route_index: ctx.route_index().unwrap_or_default(),
        pool_name: pool_name.to_owned(),
        forwarded_host,
    }
}

/// The backend's answer, with its body copied into the store as it streams when the cache
/// admits it; else as it is (the guard drops: waiters fetch for themselves).
fn fill(
    cache: &RouteCache,
    key: CacheKey,
    request: &Parts,
    response: Response<ProxyBody>,
    guard: FillGuard,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let Some(head) = StoredHead::admit(&cache.settings, request, &parts) else {
        return Response::from_parts(parts, body);
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cache.settings.max_object_bytes) {
        return Response::from_parts(parts, body);
    }
    let updater = cache.clone();
    let filling = Filling {
        store: cache.store().clone(),
        key,
        head,
        limit: cache.settings.max_object_bytes,
        guard: Some(guard),
        on_stored: Some(Box::new(move || updater.update_gauges())),
    };
    Response::from_parts(parts, FillBody::wrap(body, filling))
}

/// A stored response as the answer to `request`: its Age, and for a client whose
/// If-None-Match names its ETag, a 304.
fn serve(stored: &Stored, request: &Parts) -> Response<ProxyBody> {
    let mut headers = stored.head.headers.clone();
    headers.insert(
        header::AGE,
        HeaderValue::from(stored.head.age(Instant::now()).as_secs()),
    );
    if etag_matches(&request.headers, &headers) {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        *response.headers_mut() = headers;
        return response;
    }
    let body = if request.method == Method::HEAD {
        empty()
    } else {
        Full::new(stored.body.clone())
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.head.status;
    *response.headers_mut() = headers;
    response
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Sets X-Cache-Status and notes the status for the metrics and the access log.
fn mark(
    mut response: Response<ProxyBody>,
    status: CacheStatus,
    ctx: &mut RequestCtx<'_>,
) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(X_CACHE_STATUS, HeaderValue::from_static(status.as_str()));
    ctx.cache = Some(status);
    response
}

/// The stored response's validators on the fetch, in place of the client's own (the
/// answer, 304 or not, is then about the entry; the client's conditions are applied to
/// what lb sends it).
fn add_validators(headers: &mut HeaderMap, head: &StoredHead) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    for (name, value) in head.validators() {
        headers.insert(name, value);
    }
}

/// `Cache-Control: no-cache` (or `Pragma: no-cache` without Cache-Control) on the request.
fn asks_revalidation(headers: &HeaderMap) -> bool {
    let directive = |name: HeaderName| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
        })
    };
    if headers.contains_key(header::CACHE_CONTROL) {
        directive(header::CACHE_CONTROL)
    } else {
        directive(header::PRAGMA)
    }
}

/// Whether the request's If-None-Match names the response's ETag (weak comparison, RFC 9110
/// 13.1.2; `*` matches any).
fn etag_matches(request: &HeaderMap, response: &HeaderMap) -> bool {
    let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = opaque(etag);
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == etag)
}
