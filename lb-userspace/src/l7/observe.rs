//! What the request path reports: once per request, the pipeline's log phase hands its
//! `RequestCtx` (route, pool, backend, status, times, retries) to the `Observer`, which feeds the Prometheus families and,
//! when enabled, the access log.
//!
//! The observer is created once (by `lb run` with the manager's metrics, or none at all) and
//! kept across reloads; each proxy generation resolves its label handles against it when it is
//! built (`ProxyMeters`), so a request never formats label strings: the per-pool histogram,
//! retry and connect-error counters are fetched once per pool, and the request counters are
//! cached by small integer keys (route index, pool index, backend index, status) after their
//! first use.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::cache::CacheStatus;
use super::policy::rate_limit::{Outcome, Verdict, store::Via};
use super::traffic::{TrafficRegistry, TrafficStats};
use super::upstream::Shed;
use super::{
    access_log::AccessLog,
    config::L7Config,
    context::{AuthResult, RequestCtx},
};
use crate::admin::metrics::{
    AuthLabels, BackendLabels, CacheLabels, Http2CloseLabels, L7Metrics, ListenerLabels,
    PoolLabels, RateLimitLabels, RequestLabels, RouteLabels, ShedLabels, StreamLabels,
};

/// The L4 flow id of a TCP connection (client, local address), when the XDP tier tagged it.
pub type FlowIdLookup = Box<dyn Fn(SocketAddr, SocketAddr) -> Option<u64> + Send + Sync>;

/// The sinks of the request path, shared by every proxy generation, and where connections
/// learn their L4 flow id.
#[derive(Default)]
pub struct Observer {
    metrics: Option<L7Metrics>,
    /// The status page's totals (kept with the metrics: only an observed tier has them).
    traffic: Option<TrafficRegistry>,
    access_log: Option<AccessLog>,
    flow_ids: Option<FlowIdLookup>,
}

impl Observer {
    /// Observes nothing (`lb l7` without `--access-log`, library users, tests).
    pub fn none() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn new(metrics: Option<L7Metrics>, access_log: Option<AccessLog>) -> Arc<Self> {
        Self::with_flow_ids(metrics, access_log, None)
    }

    /// As `new`, connections looking up their L4 flow id with `flow_ids` (the XDP tier's
    /// flow tags; one map lookup per accepted connection to a `local` VIP, none for others).
    pub fn with_flow_ids(
        metrics: Option<L7Metrics>,
        access_log: Option<AccessLog>,
        flow_ids: Option<FlowIdLookup>,
    ) -> Arc<Self> {
        let mut access_log = access_log;
        if let (Some(m), Some(log)) = (&metrics, &mut access_log) {
            log.count_drops_in(m.access_log_dropped.clone());
        }
        Arc::new(Self {
            traffic: metrics.as_ref().map(|_| TrafficRegistry::default()),
            metrics,
            access_log,
            flow_ids,
        })
    }

    /// The L4 flow id of the connection `socket_peer -> local` (the socket's own addresses,
    /// not a PROXY header's: the datapath saw the packets).
    pub fn flow_id(&self, socket_peer: SocketAddr, local: SocketAddr) -> Option<u64> {
        self.flow_ids.as_ref()?(socket_peer, local)
    }

    /// Listener `name`'s totals (None: not observed).
    pub(super) fn listener_traffic(&self, name: &str) -> Option<Arc<TrafficStats>> {
        self.traffic.as_ref().map(|t| t.listener(name))
    }

    /// The status page's totals of listeners and routes (None: not observed).
    pub fn traffic(&self) -> Option<&TrafficRegistry> {
        self.traffic.as_ref()
    }

    /// The live metric families (None: not observed).
    pub(super) fn metrics(&self) -> Option<&L7Metrics> {
        self.metrics.as_ref()
    }

    pub(super) fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The label handles for one proxy generation built from `config`.
    pub(super) fn meters(&self, config: &L7Config) -> ProxyMeters {
        let Some(metrics) = &self.metrics else {
            return ProxyMeters::default();
        };
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let pool = PoolLabels {
                    pool: p.name.clone(),
                };
                PoolMeters {
                    duration: metrics.request_seconds.get_or_create_owned(&pool),
                    retries: metrics.retries.get_or_create_owned(&pool),
                    retries_denied: metrics.retries_denied.get_or_create_owned(&pool),
                    // Only pools with guards can shed (the label sets appear on first use
                    // for them, never for the others).
                    shed: if p.breaker.is_some() || p.adaptive.is_some() {
                        Shed::ALL
                            .iter()
                            .map(|s| {
                                metrics.requests_shed.get_or_create_owned(&ShedLabels {
                                    pool: p.name.clone(),
                                    reason: s.reason(),
                                })
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    connect_errors: p
                        .backends
                        .iter()
                        .map(|b| {
                            metrics
                                .upstream_connect_errors
                                .get_or_create_owned(&BackendLabels {
                                    pool: p.name.clone(),
                                    backend: b.addr.to_string(),
                                })
                        })
                        .collect(),
                }
            })
            .collect();
        let rate_limits = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let Some(limits) = r.chain.rate_limits() else {
                    return Vec::new();
                };
                limits
                    .limits()
                    .iter()
                    .map(|l| {
                        let labels = RateLimitLabels {
                            route: r.label(i),
                            limit: l.settings.name.clone(),
                            key: l.settings.key.kind().to_owned(),
                        };
                        LimitMeters {
                            limited: metrics.rate_limited.get_or_create_owned(&labels),
                            dry_run: metrics.rate_limit_dry_run.get_or_create_owned(&labels),
                            evictions: metrics.rate_limit_evictions.get_or_create_owned(&labels),
                            redis: l.settings.redis.as_ref().map(|_| RedisMeters {
                                errors: metrics
                                    .rate_limit_redis_errors
                                    .get_or_create_owned(&labels),
                                fallback: metrics.rate_limit_fallback.get_or_create_owned(&labels),
                                prechecked: metrics
                                    .rate_limit_prechecked
                                    .get_or_create_owned(&labels),
                            }),
                        }
                    })
                    .collect()
            })
            .collect();
        // Routes with a cache: a counter per status (by `CacheStatus::ALL` order), and the
        // size gauges handed to the cache itself.
        let caches = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let cache = r.chain.cache.as_ref()?;
                let route = RouteLabels { route: r.label(i) };
                cache.attach_gauges(
                    metrics.cache_bytes.get_or_create_owned(&route),
                    metrics.cache_entries.get_or_create_owned(&route),
                );
                Some(
                    CacheStatus::ALL
                        .iter()
                        .map(|s| {
                            metrics.cache_requests.get_or_create_owned(&CacheLabels {
                                route: r.label(i),
                                status: s.as_str(),
                            })
                        })
                        .collect(),
                )
            })
            .collect();
        let client_refused = config
            .listeners
            .iter()
            .filter(|l| l.max_connections_per_client.is_some())
            .map(|l| {
                let labels = ListenerLabels {
                    listener: l.name.clone(),
                };
                let counter = metrics
                    .client_connections_refused
                    .get_or_create_owned(&labels);
                (l.name.clone(), counter)
            })
            .collect();
        ProxyMeters {
            live: Some(LiveMeters {
                rate_limits,
                caches,
                client_refused,
                metrics: metrics.clone(),
                pools,
                pool_names: config.pools.iter().map(|p| p.name.clone()).collect(),
                backends: config
                    .pools
                    .iter()
                    .map(|p| p.backends.iter().map(|b| b.addr.to_string()).collect())
                    .collect(),
                route_listeners: config.routes.iter().map(|r| r.listener.clone()).collect(),
                route_labels: config
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| r.label(i))
                    .collect(),
                route_traffic: match &self.traffic {
                    Some(t) => config
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| t.route(&r.label(i)))
                        .collect(),
                    None => Vec::new(),
                },
                requests: RwLock::default(),
                auth: RwLock::default(),
            }),
        }
    }
}

/// One pool's pre-resolved metric handles.
struct PoolMeters {
    duration: Histogram,
    retries: Counter,
    retries_denied: Counter,
    /// Requests shed, by `Shed::index` (empty for pools without guards).
    shed: Vec<Counter>,
    /// By backend index.
    connect_errors: Vec<Counter>,
}

/// One rate limit's pre-resolved counters.
struct LimitMeters {
    limited: Counter,
    dry_run: Counter,
    evictions: Counter,
    /// A redis-backed limit's.
    redis: Option<RedisMeters>,
}

struct RedisMeters {
    errors: Counter,
    fallback: Counter,
    prechecked: Counter,
}

/// (route index, pool index, backend index, status); `usize::MAX`: none (no route, no backend).
type RequestKey = (usize, usize, usize, u16);

struct LiveMeters {
    metrics: L7Metrics,
    /// By pool index (config order).
    pools: Vec<PoolMeters>,
    pool_names: Vec<String>,
    /// By pool index, then backend index.
    backends: Vec<Vec<String>>,
    /// By route index.
    route_listeners: Vec<String>,
    /// By route index: its name, or its index.
    route_labels: Vec<String>,
    /// By route index: the status page's totals.
    route_traffic: Vec<Arc<TrafficStats>>,
    requests: RwLock<HashMap<RequestKey, Counter>>,
    /// Authentication verdicts by (route index, policy, result), resolved on first use.
    auth: RwLock<HashMap<(usize, &'static str, &'static str), Counter>>,
    /// By route index, then limit index (empty for a route without limits).
    rate_limits: Vec<Vec<LimitMeters>>,
    /// Listeners with `max_connections_per_client`: connections refused.
    client_refused: HashMap<String, Counter>,
    /// By route index: routes with a cache, their counters by `CacheStatus::ALL` order.
    caches: Vec<Option<Vec<Counter>>>,
}

/// A proxy generation's metric handles; empty when the observer has no metrics.
#[derive(Default)]
pub(super) struct ProxyMeters {
    live: Option<LiveMeters>,
}

const NONE: usize = usize::MAX;

impl ProxyMeters {
    /// A failed connection attempt to backend `backend` of pool `pool` (indices).
    pub(super) fn connect_error(&self, pool: usize, backend: usize) {
        if let Some(c) = self
            .live
            .as_ref()
            .and_then(|l| l.pools.get(pool))
            .and_then(|p| p.connect_errors.get(backend))
        {
            c.inc();
        }
    }

    /// A tcp connection of `listener` ended with `outcome` (`StreamLabels`), having relayed
    /// `bytes_in` from the client and `bytes_out` to it.
    pub(super) fn stream_connection(
        &self,
        listener: &str,
        outcome: &'static str,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let Some(live) = &self.live else { return };
        let labels = |outcome| StreamLabels {
            listener: listener.to_owned(),
            outcome,
        };
        live.metrics
            .stream_connections
            .get_or_create(&labels(outcome))
            .inc();
        if bytes_in > 0 {
            live.metrics
                .stream_bytes
                .get_or_create(&labels("in"))
                .inc_by(bytes_in);
        }
        if bytes_out > 0 {
            live.metrics
                .stream_bytes
                .get_or_create(&labels("out"))
                .inc_by(bytes_out);
        }
    }

    /// A udp client's first datagram on `listener` led to `outcome` (`StreamLabels`).
    pub(super) fn stream_session(&self, listener: &str, outcome: &'static str) {
        let Some(live) = &self.live else { return };
        live.metrics
            .stream_sessions
            .get_or_create(&StreamLabels {
                listener: listener.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A connection of `listener` closed at accept (`max_connections_per_client`).
    pub(super) fn client_refused(&self, listener: &str) {
        if let Some(c) = self
            .live
            .as_ref()
            .and_then(|l| l.client_refused.get(listener))
        {
            c.inc();
        }
    }

    /// An HTTP/2 connection of `listener` ended for `close` (`h2_guard.rs`).
    pub(super) fn http2_closed(&self, listener: &str, close: super::h2_guard::H2Close) {
        let Some(live) = &self.live else { return };
        live.metrics
            .http2_connections_closed
            .get_or_create(&Http2CloseLabels {
                listener: listener.to_owned(),
                reason: close.label(),
            })
            .inc();
    }

    /// Counts one answered request.
    pub(super) fn request(&self, listener: &str, outcome: &RequestCtx<'_>) {
        let Some(live) = &self.live else { return };
        if let Some(t) = &outcome.conn.traffic {
            t.answered(outcome.status, outcome.duration);
        }
        if let Some(t) = outcome
            .route_index()
            .and_then(|r| live.route_traffic.get(r))
        {
            t.answered(outcome.status, outcome.duration);
        }
        // The global guard sheds before a pool is chosen.
        if outcome.pool.is_none()
            && let Some(shed) = outcome.shed
        {
            live.metrics
                .requests_shed
                .get_or_create(&ShedLabels {
                    pool: String::new(),
                    reason: shed.reason(),
                })
                .inc();
        }
        let key = (
            outcome.route_index().unwrap_or(NONE),
            outcome.pool.unwrap_or(NONE),
            outcome.backend.unwrap_or(NONE),
            outcome.status,
        );
        let cached = live
            .requests
            .read()
            .ok()
            .and_then(|m| m.get(&key).map(Counter::inc));
        if cached.is_none() {
            live.resolve(listener, key).inc();
        }
        if !outcome.rate_limits.is_empty()
            && let Some(route) = outcome.route_index()
        {
            live.rate_limits(route, &outcome.rate_limits);
        }
        if let Some(status) = outcome.cache
            && let Some(counters) = outcome
                .route_index()
                .and_then(|r| live.caches.get(r))
                .and_then(Option::as_ref)
            && let Some(c) = CacheStatus::ALL
                .iter()
                .position(|s| *s == status)
                .and_then(|i| counters.get(i))
        {
            c.inc();
        }
        if let Some(p) = outcome.pool.and_then(|p| live.pools.get(p)) {
            for shed in [outcome.shed, outcome.shed_retry].into_iter().flatten() {
                if let Some(c) = p.shed.get(shed.index()) {
                    c.inc();
                }
            }
            p.duration.observe(outcome.duration.as_secs_f64());
            if outcome.retries > 0 {
                p.retries.inc_by(u64::from(outcome.retries));
            }
            if outcome.retry_denied {
                p.retries_denied.inc();
            }
        }
    }
}

impl ProxyMeters {
    /// Counts an authentication policy's verdict (only routes with one call this).
    pub(super) fn auth(&self, route: Option<usize>, auth: AuthResult) {
        let Some(live) = &self.live else { return };
        let key = (route.unwrap_or(NONE), auth.policy, auth.result);
        let cached = live
            .auth
            .read()
            .ok()
            .and_then(|m| m.get(&key).map(Counter::inc));
        if cached.is_some() {
            return;
        }
        let labels = AuthLabels {
            route: live.route_labels.get(key.0).cloned().unwrap_or_default(),
            policy: auth.policy,
            result: auth.result,
        };
        let counter = live.metrics.auth.get_or_create_owned(&labels);
        counter.inc();
        if let Ok(mut m) = live.auth.write() {
            m.insert(key, counter);
        }
    }
}

impl LiveMeters {
    /// What route `route`'s rate limits decided about one request.
    fn rate_limits(&self, route: usize, outcomes: &[Outcome]) {
        let Some(meters) = self.rate_limits.get(route) else {
            return;
        };
        for o in outcomes {
            let Some(m) = meters.get(o.limit) else {
                continue;
            };
            match o.verdict {
                Verdict::Allowed => {}
                Verdict::Limited => {
                    m.limited.inc();
                }
                Verdict::DryRunLimited => {
                    m.dry_run.inc();
                }
            }
            if o.evicted {
                m.evictions.inc();
            }
            if let Some(r) = &m.redis {
                match o.via {
                    Via::PreCheck => {
                        r.prechecked.inc();
                    }
                    Via::Fallback { error } => {
                        r.fallback.inc();
                        if error {
                            r.errors.inc();
                        }
                    }
                    Via::Local | Via::Redis => {}
                }
            }
        }
    }

    /// The request counter for `key`, created (labels formatted) on first use.
    fn resolve(&self, listener: &str, key: RequestKey) -> Counter {
        let (route, pool, backend, status) = key;
        let labels = RequestLabels {
            // A route's listener; a request that matched no route is labelled by its own.
            listener: self
                .route_listeners
                .get(route)
                .map_or(listener, String::as_str)
                .to_owned(),
            route: self.route_labels.get(route).cloned().unwrap_or_default(),
            pool: self.pool_names.get(pool).cloned().unwrap_or_default(),
            backend: self
                .backends
                .get(pool)
                .and_then(|b| b.get(backend))
                .cloned()
                .unwrap_or_default(),
            status,
        };
        let counter = self.metrics.requests.get_or_create_owned(&labels);
        // The listener is part of the labels but not of the key: a request without a route
        // is keyed by no listener, so it is not cached (404s are cheap anyway).
        if route != NONE
            && let Ok(mut m) = self.requests.write()
        {
            m.insert(key, counter.clone());
        }
        counter
    }
}
