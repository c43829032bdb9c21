//! An upstream pool: its backends, the selection algorithm, in-flight counts and a keep-alive
//! HTTP client (hyper-util's pooled client: idle connections are reused across requests).
//! Pools that send a PROXY header use one client per downstream connection instead (see
//! `upstream/private.rs`).
use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Request, Response, Uri,
    body::Incoming,
    http::uri::{Authority, PathAndQuery, Scheme},
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    body::UpstreamBody,
    config::{Algorithm, PoolConfig},
    selection::{
        BackendSelection, ConsistentHash, InFlight, InFlightGuard, LeastConnections,
        PowerOfTwoChoices, SmoothWeightedRoundRobin,
    },
    upstream::{
        BackendHealth, BackendTraffic, ConnInfo, PoolState, RetryBudget, UpstreamConnector,
        UpstreamProtocol,
    },
};
use crate::maglev::MaglevError;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// hyper-util's pooled client over lb's connector.
pub type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

pub struct Pool {
    pub config: PoolConfig,
    pub inflight: Arc<InFlight>,
    selection: Box<dyn BackendSelection>,
    connector: UpstreamConnector,
    /// Shared by all clients (pools without PROXY headers).
    client: UpstreamClient,
    /// Each backend's `IP:PORT` as a URI authority, made once.
    authorities: Vec<Option<Authority>>,
    pub state: Arc<PoolState>,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Result<Self, MaglevError> {
        let inflight = Arc::new(InFlight::new(config.backends.len()));
        let backends = config.backends.clone();
        let selection: Box<dyn BackendSelection> = match config.algorithm {
            Algorithm::RoundRobin => Box::new(SmoothWeightedRoundRobin::new(backends)),
            Algorithm::LeastConn => Box::new(LeastConnections::new(backends, inflight.clone())),
            Algorithm::P2c => Box::new(PowerOfTwoChoices::new(
                backends,
                inflight.clone(),
                0x5eed_1b0b,
            )),
            Algorithm::ConsistentHash => Box::new(ConsistentHash::new(backends)?),
        };
        let connector = UpstreamConnector::new(config.connect_timeout, config.tls.clone());
        let client = build_client(connector.clone(), &config);
        let authorities = config
            .backends
            .iter()
            // A socket address's text is always a valid authority.
            .map(|b| Authority::from_maybe_shared(Bytes::from(b.addr.to_string())).ok())
            .collect();
        Ok(Self {
            authorities,
            inflight: inflight.clone(),
            selection,
            connector,
            client,
            state: Arc::new(PoolState {
                retry_budget: RetryBudget::new(
                    config.retry_budget_percent,
                    config.retry_budget_min,
                ),
                health: BackendHealth::new(
                    config.backends.len(),
                    config.max_fails,
                    config.fail_timeout,
                ),
                traffic: BackendTraffic::new(config.backends.len()),
                inflight,
            }),
            config,
        })
    }

    /// Sends `req` (its URI names the backend) for the client `peer` that reached `conn`.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        peer: SocketAddr,
        conn: &ConnInfo,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self.config.proxy_protocol {
            None => self.client.request(req).await,
            Some(version) => {
                let client = conn.private_client(&self.config.name, || {
                    let header =
                        super::proxy_header::encode(version, peer, conn.local, conn.flow_id);
                    build_client(self.connector.with_proxy_header(header), &self.config)
                });
                client.request(req).await
            }
        }
    }

    /// A backend for this attempt, never one already `tried` or set down. Passively ejected
    /// backends are skipped too, unless nothing else is left (then a guess beats a certain 503,
    /// as Envoy's panic mode does).
    pub fn pick(&self, key: u64, tried: &[usize]) -> Option<usize> {
        self.pick_skipping(key, tried, &[])
    }

    /// `pick`, also skipping `full` (backends found over their cap).
    fn pick_skipping(&self, key: u64, tried: &[usize], full: &[usize]) -> Option<usize> {
        let health = &self.state.health;
        let factor = |i| health.weight_factor(i);
        let skip = |i| tried.contains(&i) || full.contains(&i) || self.at_cap(i);
        self.selection
            .select_weighted(key, &|i| skip(i) || !health.is_available(i), &factor)
            .or_else(|| {
                self.selection
                    .select_weighted(key, &|i| skip(i) || !health.is_up(i), &factor)
            })
    }

    /// The URI of a request for `target` on backend `i` (HTTP/2 sends the scheme as :scheme).
    pub fn upstream_uri(&self, i: usize, target: PathAndQuery) -> Uri {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(if self.config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = self.authorities.get(i).cloned().flatten();
        parts.path_and_query = Some(target);
        Uri::from_parts(parts).unwrap_or_default()
    }

    fn cap(&self, i: usize) -> Option<u32> {
        self.config
            .backend_max_connections
            .get(i)
            .copied()
            .flatten()
    }

    fn at_cap(&self, i: usize) -> bool {
        self.cap(i).is_some_and(|cap| self.inflight.get(i) >= cap)
    }

    /// Picks a backend (as `pick`) and counts the request on it; the count is taken before the
    /// cap is checked again, so concurrent requests never push a backend over its cap.
    pub fn acquire(&self, key: u64, tried: &[usize]) -> Option<(usize, InFlightGuard<'_>)> {
        // Allocates only when a backend turns out to be full.
        let mut full = Vec::new();
        loop {
            let i = self.pick_skipping(key, tried, &full)?;
            let guard = self.inflight.start(i);
            if self.cap(i).is_some_and(|cap| self.inflight.get(i) > cap) {
                full.push(i);
                continue;
            }
            return Some((i, guard));
        }
    }

    /// Feeds an attempt's outcome on backend `i` to passive health and the traffic totals.
    pub fn record(&self, i: usize, ok: bool) {
        self.state.traffic.record(i, ok);
        if ok {
            self.state.health.record_success(i);
        } else {
            self.state.health.record_failure(i);
        }
    }
}

fn build_client(connector: UpstreamConnector, config: &PoolConfig) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.idle_per_backend)
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new())
        .http2_only(config.protocol != UpstreamProtocol::Http1)
        .build(connector)
}
