//! `Proxy`: one generation of the HTTP tier's request-time state (pools, routes with their
//! compiled policy chains, per-listener rules, metric handles), built from a configuration
//! and swapped whole on reload. What a request does with it is `pipeline.rs`.
use std::{
    collections::HashMap,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
};

use hyper::header::{HeaderName, HeaderValue};

use super::{
    body::{self, BodyLimits},
    config::L7Config,
    headers::request_id,
    observe::{Observer, ProxyMeters},
    policy::PolicyState,
    pool::Pool,
    routing::Router,
    server::L7Error,
};

/// What every request handler shares: pools, routes, per-listener limits, counters.
pub struct Proxy {
    /// Shared with the previous generation when a reload left the pool unchanged.
    pools: HashMap<String, PoolEntry>,
    /// The same pools by configuration index.
    pools_by_index: Vec<Arc<Pool>>,
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
    /// Policies' shared run-time state (JWT providers).
    policy_state: PolicyState,
    /// Headers only lb sets (API-key consumer headers of every route, and
    /// X-Forwarded-Client-Cert when a listener verifies client certificates): removed from
    /// every request. Empty (no cost) when nothing sets them.
    identity_headers: Vec<HeaderName>,
    /// The global memory guard (`--max-memory`), kept across reloads.
    memory: Option<Arc<super::overload::MemoryGuard>>,
}

/// What a listener's requests are checked against.
pub(super) struct ListenerRules {
    /// Largest declared request body.
    pub max_body: u64,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Streamed request body limits.
    pub body_limits: Option<BodyLimits>,
    /// Bodies for lb's own answers by status.
    pub error_pages: Option<Arc<super::policy::error_pages::ErrorPages>>,
}

pub(super) struct PoolEntry {
    pub pool: Arc<Pool>,
    /// Position in the configuration (metrics key).
    pub index: usize,
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
        let mut pools_by_index = Vec::new();
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
            pools_by_index.push(pool.clone());
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
                    error_pages: l.error_pages.clone(),
                };
                (l.name.clone(), rules)
            })
            .collect();
        // Rate limits whose route label, position and settings are unchanged keep their
        // counters (the compiled config brought fresh, empty ones).
        let mut routes = config.routes.clone();
        if let Some(prev) = previous {
            super::policy::rate_limit::keep_state(&mut routes, prev.router.configs());
            super::cache::keep_state(&mut routes, prev.router.configs());
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Ok((
            Self {
                pools,
                pools_by_index,
                router: Router::new(routes),
                listeners,
                proxy_header_errors: previous
                    .map_or_else(Default::default, |p| p.proxy_header_errors.clone()),
                request_ids: AtomicU64::new(0),
                id_prefix: seed,
                meters: observer.meters(config),
                policy_state: PolicyState::build(
                    config,
                    previous.map(|p| &p.policy_state),
                    observer.metrics(),
                ),
                observer,
                identity_headers: identity_headers(config),
                memory: previous.and_then(|p| p.memory.clone()),
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

    pub(super) fn new_request_id(&self) -> HeaderValue {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        request_id(self.id_prefix, n)
    }

    pub(super) fn listener_rules(&self, listener: &str) -> Option<&ListenerRules> {
        self.listeners.get(listener)
    }

    /// Purges `url` (`prefix`: every URL starting with it) from every route's cache; None
    /// when no route has one.
    pub fn purge(&self, url: &str, prefix: bool) -> Option<u64> {
        let mut caches = self
            .router
            .configs()
            .filter_map(|(_, r)| r.chain.cache.as_ref())
            .peekable();
        caches.peek()?;
        Some(caches.map(|c| c.purge(url, prefix)).sum())
    }

    pub(super) fn router(&self) -> &Router {
        &self.router
    }

    pub(super) fn pool_entry(&self, name: &str) -> Option<&PoolEntry> {
        self.pools.get(name)
    }

    /// The pool at `index` in the configuration.
    pub(super) fn pool_by_index(&self, index: usize) -> Option<&Pool> {
        self.pools_by_index.get(index).map(|p| &**p)
    }

    pub(super) fn policy_state(&self) -> &PolicyState {
        &self.policy_state
    }

    pub(super) fn meters(&self) -> &ProxyMeters {
        &self.meters
    }

    pub(super) fn observer_arc(&self) -> Arc<Observer> {
        self.observer.clone()
    }

    pub(super) fn identity_headers(&self) -> &[HeaderName] {
        &self.identity_headers
    }

    pub(super) fn set_memory_guard(&mut self, memory: Option<Arc<super::overload::MemoryGuard>>) {
        self.memory = memory;
    }

    /// The global memory guard is over its bound (false without one).
    pub(super) fn over_memory(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.is_over())
    }
}

/// The headers only lb may set, in this configuration.
fn identity_headers(config: &L7Config) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    if config.listeners.iter().any(|l| l.client_auth.is_some()) {
        names.push(super::client_cert::XFCC);
    }
    for route in &config.routes {
        for policy in &route.chain.request {
            if let super::policy::RequestPolicy::ApiKey(k) = policy
                && !names.contains(k.consumer_header())
            {
                names.push(k.consumer_header().clone());
            }
        }
    }
    names
}
