//! Per-route policies: the route keys that act on a request rather than match it, compiled
//! at load into the route's `RouteChain`, grouped by the pipeline phase that runs them (see
//! `pipeline.rs` for the phases and their order).
//!
//! A new policy is one module here (its raw serde type, `compile`, what it does per request,
//! unit tests), one key on `RawRoute` (`config.rs`), one variant of the phase enum it belongs
//! to, its entry in docs/CONFIG.md and docs/examples/full.toml, and an end-to-end test.
//! A route without policies has empty phase lists: each phase is one `is_empty` check.
//! Policies that act on bodies rather than heads are optional fields of the chain instead
//! (`compress`, `buffer`): one check each where the body is handled.
//!
//! Request-phase policies are async (a key fetch, a shared counter) and see the request
//! mutably (to take a credential off it) and the `RequestCtx`: `ctx.client` is the client
//! behind trusted proxies, and what a policy learns of the caller goes to `ctx.identity`
//! (consumer, JWT claims) for the policies after it, in the order the chain lists them.
use std::{ops::Range, sync::Arc, time::Duration};

use hyper::{Request, Response, body::Incoming};
use toml::Spanned;

use super::{context::RequestCtx, pool::ProxyBody};
use crate::config::ConfigError;
use crate::config::route::RawRoute;

pub mod api_key;
pub mod buffer;
pub mod compress;
pub mod cors;
pub mod error_pages;
pub mod headers;
pub mod jwt;
pub mod rate_limit;
pub mod redirect;
pub mod respond;
pub mod timeout;

pub use api_key::ApiKey;
pub use compress::Compress;
pub use cors::Cors;
pub use headers::HeaderEdits;
pub use rate_limit::RateLimits;
pub use redirect::Redirect;
pub use respond::Respond;

/// Request phase: may answer at once instead of proxying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestPolicy {
    /// CORS: preflights answered (first, before authentication); an allowed origin noted in
    /// `ctx.cors` for the response phase.
    Cors(Arc<Cors>),
    /// Authentication: a valid token of a provider, or 401/403.
    Jwt(jwt::JwtPolicy),
    Respond(Respond),
    Redirect(Redirect),
    ApiKey(ApiKey),
    /// `client_cert = true`: a verified client certificate is required (else 403).
    ClientCert,
    /// The route's `[[route.rate_limit]]`s (429 over a limit).
    RateLimit(RateLimits),
}

/// The run-time state policies share across routes, kept by each proxy generation (and
/// carried over a reload when its settings did not change): JWT providers' keys and caches.
#[derive(Default)]
pub struct PolicyState {
    jwt: std::collections::HashMap<String, std::sync::Arc<crate::l7::jwt::JwtProvider>>,
    /// Authentication results counted by (route index, result); None: no metrics.
    auth: Option<AuthMeters>,
}

/// `lb_http_auth_total` handles, resolved on first use per (route, result).
struct AuthMeters {
    family: prometheus_client::metrics::family::Family<
        crate::admin::metrics::JwtAuthLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// By route index: its label.
    routes: Vec<String>,
    cache: std::sync::RwLock<
        std::collections::HashMap<
            (usize, &'static str),
            prometheus_client::metrics::counter::Counter,
        >,
    >,
}

impl PolicyState {
    /// The state for `config`, keeping `previous`'s providers whose settings are unchanged.
    pub fn build(
        config: &crate::config::L7Config,
        previous: Option<&PolicyState>,
        metrics: Option<&crate::admin::metrics::L7Metrics>,
    ) -> Self {
        let jwt = config
            .jwt_providers
            .iter()
            .map(|p| {
                let kept = previous
                    .and_then(|prev| prev.jwt.get(&p.name))
                    .filter(|old| old.config == *p)
                    .cloned();
                let provider = kept.unwrap_or_else(|| {
                    let fetches = metrics.map(|m| {
                        let counter = |result: &str| {
                            m.jwks_fetches
                                .get_or_create(&crate::admin::metrics::FetchLabels {
                                    provider: p.name.clone(),
                                    result: result.to_owned(),
                                })
                                .clone()
                        };
                        (counter("ok"), counter("failed"))
                    });
                    crate::l7::jwt::JwtProvider::new(p.clone(), fetches)
                });
                (p.name.clone(), provider)
            })
            .collect();
        let auth = metrics.map(|m| AuthMeters {
            family: m.jwt_auth.clone(),
            routes: config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| r.label(i))
                .collect(),
            cache: Default::default(),
        });
        Self { jwt, auth }
    }

    /// Counts an authentication result of route `route` (index) against `provider`.
    pub fn count_auth(&self, route: Option<usize>, provider: &str, result: &'static str) {
        let (Some(auth), Some(route)) = (&self.auth, route) else {
            return;
        };
        let cached = auth
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&(route, result)).map(|c| c.inc()));
        if cached.is_some() {
            return;
        }
        let counter = auth
            .family
            .get_or_create(&crate::admin::metrics::JwtAuthLabels {
                route: auth.routes.get(route).cloned().unwrap_or_default(),
                provider: provider.to_owned(),
                result: result.to_owned(),
            })
            .clone();
        counter.inc();
        if let Ok(mut c) = auth.cache.write() {
            c.insert((route, result), counter);
        }
    }

    pub fn jwt_provider(&self, name: &str) -> Option<&std::sync::Arc<crate::l7::jwt::JwtProvider>> {
        self.jwt.get(name)
    }
}

impl RequestPolicy {
    /// The answer, when this policy gives one (None: the request goes on). A policy may
    /// change the request (e.g. take a credential off it) and record what it learnt in `ctx`
    /// (its `identity`) for the policies after it.
    pub async fn on_request(
        &self,
        req: &mut Request<Incoming>,
        ctx: &mut RequestCtx<'_>,
        state: &PolicyState,
    ) -> Option<Response<ProxyBody>> {
        match self {
            Self::Cors(c) => match c.on_request(req.method(), req.headers()) {
                cors::Decision::None => None,
                cors::Decision::Allow(origin) => {
                    ctx.cors = Some(origin);
                    None
                }
                cors::Decision::Answer(answer) => Some(answer),
            },
            Self::Jwt(j) => j.on_request(req, ctx, state).await,
            Self::Respond(r) => Some(r.answer()),
            Self::Redirect(r) => {
                Some(r.answer(&redirect::Target::of(req, ctx.scheme), ctx.conn.local))
            }
            Self::ApiKey(k) => k.check(req, ctx),
            Self::ClientCert => crate::l7::client_cert::require(ctx),
            Self::RateLimit(r) => r.check(req.headers(), ctx).await,
        }
    }
}

/// Upstream-request phase: edits of the request as it goes to the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamRequestPolicy {
    Headers(HeaderEdits),
}

/// Response-headers phase: edits of every response of the route (lb's own answers too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponsePolicy {
    /// CORS headers on the response of an allowed actual request (`ctx.cors`).
    Cors(Arc<Cors>),
    Headers(HeaderEdits),
}

/// One route's policies, by phase, in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChain {
    pub request: Vec<RequestPolicy>,
    pub upstream_request: Vec<UpstreamRequestPolicy>,
    pub response: Vec<ResponsePolicy>,
    /// Time to the upstream response head (None: the pool's `request_timeout`).
    pub timeout: Option<Duration>,
    /// Response-body phase: `compress` (None: the body passes untouched).
    pub compress: Option<Compress>,
    /// The route's response cache, between the request policies and upstream selection
    /// (`l7/cache/`).
    pub cache: Option<crate::l7::cache::RouteCache>,
    /// `buffer_request` (before the upstream phase) and `buffer_response` (response-body
    /// phase); the default streams both ways.
    pub buffer: buffer::Buffering,
    /// Bodies for lb's own answers by status (over the listener's).
    pub error_pages: Option<Arc<error_pages::ErrorPages>>,
}

impl RouteChain {
    /// The route answers every request itself (no pool needed).
    pub fn answers_itself(&self) -> bool {
        self.request
            .iter()
            .any(|p| matches!(p, RequestPolicy::Respond(_) | RequestPolicy::Redirect(_)))
    }

    /// The route's rate limits, if it has any.
    pub fn rate_limits(&self) -> Option<&RateLimits> {
        self.request.iter().find_map(|p| match p {
            RequestPolicy::RateLimit(r) => Some(r),
            _ => None,
        })
    }

    pub(crate) fn rate_limits_mut(&mut self) -> Option<&mut RateLimits> {
        self.request.iter_mut().find_map(|p| match p {
            RequestPolicy::RateLimit(r) => Some(r),
            _ => None,
        })
    }
}

/// What route policies compile against besides the route: the file's top-level sections
/// they use.
#[derive(Default)]
pub(crate) struct PolicyInputs {
    /// `[api_keys]`: the consumers.
    pub consumers: Option<Arc<crate::config::api_keys::Consumers>>,
    /// The `[[jwt_provider]]` names.
    pub jwt_providers: std::collections::HashSet<String>,
}

/// Compiles the policy keys of one `[[route]]`; `route` is the span of the whole table.
pub(crate) fn compile(
    r: &RawRoute,
    route: Range<usize>,
    label: &str,
    inputs: &PolicyInputs,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<RouteChain, ConfigError> {
    let mut chain = RouteChain::default();
    if let Some(raw) = &r.error_pages {
        chain.error_pages = Some(error_pages::compile(raw, err)?);
    }
    // CORS first: a preflight carries no credentials, so it is answered before
    // authentication; its response-phase part runs before `response_headers` (which may
    // then override it).
    if let Some(raw) = &r.cors {
        let cors = Arc::new(cors::compile(raw, err)?);
        chain.request.push(RequestPolicy::Cors(cors.clone()));
        chain.response.push(ResponsePolicy::Cors(cors));
    }
    // Who the caller is, before anything answers for the route.
    if r.client_cert.as_ref().is_some_and(|c| *c.get_ref()) {
        chain.request.push(RequestPolicy::ClientCert);
    }
    if let Some(raw) = &r.api_key {
        chain.request.push(RequestPolicy::ApiKey(api_key::compile(
            raw,
            inputs.consumers.as_ref(),
            err,
        )?));
    }
    if let Some(raw) = &r.jwt {
        chain.request.push(RequestPolicy::Jwt(jwt::compile(
            raw,
            &inputs.jwt_providers,
            err,
        )?));
    }
    // Then rate limits (claim and consumer keys see what authentication found), then
    // the route's own answer.
    if let Some(limits) = rate_limit::compile(&r.rate_limit, label, err)? {
        chain.request.push(RequestPolicy::RateLimit(limits));
    }
    match (&r.respond, &r.redirect) {
        (Some(_), Some(_)) => {
            return Err(err(
                route,
                "route has both respond and redirect: use one".to_owned(),
            ));
        }
        (Some(raw), None) => chain
            .request
            .push(RequestPolicy::Respond(respond::compile(raw, err)?)),
        (None, Some(raw)) => chain
            .request
            .push(RequestPolicy::Redirect(redirect::compile(raw, err)?)),
        (None, None) => {}
    }
    if let Some(raw) = &r.request_headers {
        chain
            .upstream_request
            .push(UpstreamRequestPolicy::Headers(headers::compile(
                raw,
                "request_headers",
                true,
                err,
            )?));
    }
    if let Some(raw) = &r.response_headers {
        chain
            .response
            .push(ResponsePolicy::Headers(headers::compile(
                raw,
                "response_headers",
                false,
                err,
            )?));
    }
    chain.compress = r
        .compress
        .as_ref()
        .map(|c| compress::compile(c, err))
        .transpose()?;
    chain.cache = r
        .cache
        .as_ref()
        .map(|c| crate::l7::cache::settings::compile(c, err).map(crate::l7::cache::RouteCache::new))
        .transpose()?;
    chain.buffer = buffer::compile(r, err)?;
    chain.timeout = r
        .timeout
        .as_ref()
        .map(|t| timeout::compile(t, err))
        .transpose()?;
    if chain.answers_itself() {
        // What a route that never proxies would ignore is an error, not a silent no-op.
        let proxy_keys = [
            ("pool", r.pool.as_ref().map(Spanned::span)),
            ("split", r.split.as_ref().map(Spanned::span)),
            (
                "request_headers",
                r.request_headers.as_ref().map(Spanned::span),
            ),
            ("timeout", r.timeout.as_ref().map(Spanned::span)),
            ("cache", r.cache.as_ref().map(Spanned::span)),
            (
                "rewrite_prefix",
                r.rewrite_prefix.as_ref().map(Spanned::span),
            ),
            ("rewrite_regex", r.rewrite_regex.as_ref().map(Spanned::span)),
            (
                "buffer_request",
                r.buffer_request.as_ref().map(Spanned::span),
            ),
            (
                "buffer_response",
                r.buffer_response.as_ref().map(Spanned::span),
            ),
        ];
        if let Some((key, Some(span))) = proxy_keys.into_iter().find(|(_, s)| s.is_some()) {
            return Err(err(
                span,
                format!("{key} on a route that answers itself (respond/redirect): remove it"),
            ));
        }
        if r.strip_prefix {
            return Err(err(
                route,
                "strip_prefix on a route that answers itself (respond/redirect): remove it"
                    .to_owned(),
            ));
        }
    }
    Ok(chain)
}
