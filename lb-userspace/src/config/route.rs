//! `[[route]]`: which requests (listener, host, path, methods, headers; tcp: SNI) go where
//! (pool or weighted split), with what rewrite (`route_rules.rs`) and which policies
//! (`crate::l7::policy`).
use std::{collections::HashSet, ops::Range, path::Path};

use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError, checks,
    listener::ListenerConfig,
    pool::PoolConfig,
    route_rules::{HeaderMatch, RawHeaderMatch, RawSplitTarget, Rewrite, SplitTarget},
    stream,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
}

impl HostMatch {
    /// Case-insensitive, without allocating (this runs per request and route).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// `name`, or None (metrics and the access log then use the route's index).
    pub name: Option<String>,
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// The pool; with `split`, the first split pool (`routing::Router` picks the real one).
    pub pool: String,
    /// `path`: the whole path must be exactly this (instead of `path_prefix`, then "/").
    pub path_exact: Option<String>,
    /// `path_regex`: the path must contain a match (instead of `path_prefix`, then "/").
    pub path_regex: Option<regex::Regex>,
    /// Empty: any method.
    pub methods: Vec<hyper::Method>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// `rewrite_prefix`, `rewrite_regex`, or `strip_prefix` as `Rewrite::Prefix("/")`.
    pub rewrite: Option<Rewrite>,
    /// Weighted pools instead of `pool` (empty: just `pool`).
    pub split: Vec<SplitTarget>,
    /// tcp listeners: the ClientHello's server name (None: any, and connections without SNI).
    pub sni: Option<HostMatch>,
    /// The route's policies, compiled, by pipeline phase.
    pub chain: crate::l7::policy::RouteChain,
}

impl RouteConfig {
    /// The route's label in metrics and the access log: its name, or its index.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Labels the route in metrics and the access log (default: its index).
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) listener: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    /// Required unless `split` is given (checked in `route_rules.rs`).
    pub(crate) pool: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) path_regex: Option<Spanned<String>>,
    pub(crate) methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default, rename = "header")]
    pub(crate) headers: Vec<Spanned<RawHeaderMatch>>,
    pub(crate) rewrite_prefix: Option<Spanned<String>>,
    pub(crate) rewrite_regex: Option<Spanned<String>>,
    pub(crate) split: Option<Spanned<Vec<Spanned<RawSplitTarget>>>>,
    /// tcp listeners: route by the ClientHello's server name.
    pub(crate) sni: Option<Spanned<String>>,
    // Policies (http routes), compiled by `policy::compile`.
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) request_headers: Option<Spanned<crate::l7::policy::headers::RawHeaderEdits>>,
    pub(crate) response_headers: Option<Spanned<crate::l7::policy::headers::RawHeaderEdits>>,
    pub(crate) compress: Option<Spanned<crate::l7::policy::compress::RawCompress>>,
    pub(crate) cache: Option<Spanned<crate::l7::cache::settings::RawCache>>,
    pub(crate) redirect: Option<Spanned<crate::l7::policy::redirect::RawRedirect>>,
    pub(crate) respond: Option<Spanned<crate::l7::policy::respond::RawRespond>>,
    pub(crate) jwt: Option<Spanned<crate::l7::policy::jwt::RawJwt>>,
    pub(crate) cors: Option<Spanned<crate::l7::policy::cors::RawCors>>,
    pub(crate) api_key: Option<Spanned<crate::l7::policy::api_key::RawApiKey>>,
    /// Requires a verified client certificate (the listener's `client_ca`).
    pub(crate) client_cert: Option<Spanned<bool>>,
    #[serde(default)]
    pub(crate) rate_limit: Vec<Spanned<crate::l7::policy::rate_limit::RawRateLimit>>,
    /// Request and response buffering (`crate::l7::policy::buffer`).
    pub(crate) buffer_request: Option<Spanned<bool>>,
    pub(crate) buffer_request_memory: Option<Spanned<String>>,
    pub(crate) buffer_request_temp_dir: Option<Spanned<String>>,
    pub(crate) buffer_response: Option<Spanned<String>>,
    pub(crate) error_pages: Option<Spanned<crate::l7::policy::error_pages::RawErrorPages>>,
}

/// Checks and compiles the `[[route]]` sections, in file order, against the pools and
/// listeners already compiled.
pub(super) fn parse(
    raw_routes: Vec<Spanned<RawRoute>>,
    pools: &[PoolConfig],
    listeners: &[ListenerConfig],
    inputs: &crate::l7::policy::PolicyInputs,
    text: &str,
    path: &Path,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
    let names: HashSet<String> = pools.iter().map(|p| p.name.clone()).collect();
    let listener_names: HashSet<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for r in raw_routes {
        let route_span = r.span();
        let r = r.into_inner();
        if !listener_names.contains(r.listener.get_ref()) {
            return Err(err(
                r.listener.span(),
                format!("route names unknown listener {:?}", r.listener.get_ref()),
            ));
        }
        if let Some(name) = &r.name {
            let valid = !name.get_ref().is_empty()
                && name
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(err(
                    name.span(),
                    format!(
                        "route name {:?}: use letters, digits, '-', '_' and '.'",
                        name.get_ref()
                    ),
                ));
            }
            if !route_names.insert(name.get_ref().clone()) {
                return Err(err(
                    name.span(),
                    format!("duplicate route name {:?}", name.get_ref()),
                ));
            }
        }
        // The route's label: its name, or its index (`RouteConfig::label`).
        let label = r
            .name
            .as_ref()
            .map_or_else(|| routes.len().to_string(), |n| n.get_ref().clone());
        let chain = crate::l7::policy::compile(&r, route_span.clone(), &label, inputs, &err)?;

        let rules =
            super::route_rules::parse(&r, route_span, &names, chain.answers_itself(), text, path)?;
        let sni = stream::route_keys(&r, listeners, pools, path, text)?;
        if let Some(c) = r.client_cert.as_ref().filter(|c| *c.get_ref())
            && listeners
                .iter()
                .any(|l| l.name == *r.listener.get_ref() && l.client_auth.is_none())
        {
            return Err(err(
                c.span(),
                format!(
                    "client_cert: listener {:?} has no client_ca (no client certificate is ever verified there)",
                    r.listener.get_ref()
                ),
            ));
        }
        let host = r.host.as_ref().map(|h| {
            let h = h.get_ref().to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h),
            }
        });
        let path_prefix = match &r.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(err(
                    p.span(),
                    format!("path_prefix {:?} must start with /", p.get_ref()),
                ));
            }
            Some(p) if checks::glob_char(p.get_ref()).is_some() => {
                return Err(checks::glob_prefix(p, path, text));
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_owned(),
        };
        routes.push(RouteConfig {
            name: r.name.map(Spanned::into_inner),
            chain,
            listener: r.listener.into_inner(),
            host,
            path_prefix,
            strip_prefix: r.strip_prefix,
            pool: rules.pool,
            path_exact: rules.path_exact,
            path_regex: rules.path_regex,
            methods: rules.methods,
            headers: rules.headers,
            rewrite: rules.rewrite,
            split: rules.split,
            sni,
        });
    }
    Ok(routes)
}
