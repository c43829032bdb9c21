//! The cache's place in the route pipeline: between the request policies and upstream
//! selection. What the cache does is `flow.rs`; this is the route's side of it: the key from
//! the request, fetches through the route's pool, the background refresh's request context,
//! and the status in `ctx` for the metrics and the access log.
use std::sync::Arc;

use hyper::{Request, Response, body::Incoming, header::HeaderValue};

use super::{
    CacheStatus, RouteCache,
    flow::{self, Lookup, Refresh},
    key::CacheKey,
};
use crate::{
    config::RouteConfig,
    l7::{
        context::RequestCtx,
        pool::ProxyBody,
        proxy::{ListenerRules, Proxy},
        routing::host_of,
        upstream::ConnInfo,
    },
};

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
        if !flow::cacheable_request(req.method(), req.headers()) {
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
        let fetch = match flow::lookup(cache, key, parts).await {
            Lookup::Served(answer, status, refresh) => {
                if let Some(refresh) = refresh {
                    self.refresh_in_background(
                        cache,
                        refresh,
                        origin_of(ctx, pool_name, forwarded_host),
                    );
                }
                return mark(answer, status, ctx);
            }
            Lookup::Fetch(fetch) => fetch,
        };
        let response = self
            .upstream_without_body(fetch.request(), route, pool_name, forwarded_host, ctx)
            .await;
        let (answer, status) = fetch.finish(cache, response);
        mark(answer, status, ctx)
    }

    /// Refreshes a stale entry (within stale-while-revalidate) off the request path: a
    /// conditional fetch like the foreground one, its answer stored and not sent anywhere.
    fn refresh_in_background(
        self: &Arc<Self>,
        cache: &RouteCache,
        refresh: Refresh,
        origin: Origin,
    ) {
        let proxy = self.clone();
        let cache = cache.clone();
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
                    refresh.request(),
                    route,
                    &origin.pool_name,
                    origin.forwarded_host.clone(),
                    &mut ctx,
                )
                .await;
            refresh.complete(&cache, response).await;
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

/// Sets X-Cache-Status and notes the status for the metrics and the access log.
fn mark(
    mut response: Response<ProxyBody>,
    status: CacheStatus,
    ctx: &mut RequestCtx<'_>,
) -> Response<ProxyBody> {
    flow::mark(&mut response, status);
    ctx.cache = Some(status);
    response
}
