//! An upstream pool: its backends, the selection algorithm, in-flight counts and keep-alive
//! upstream connections: lb's own per-backend pool for plain HTTP/1.1 backends
//! (`upstream/h1_pool.rs`), hyper-util's pooled client for TLS and HTTP/2 ones. Pools that
//! send a PROXY header use one hyper-util client per downstream connection instead (see
//! `upstream/private.rs`).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::{
    Method, Request, Response, Uri,
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
        AdaptiveLimit, Admitted, Attempt, BackendHealth, BackendTraffic, Breaker, ConnInfo,
        Http1Pool, Lease, LeasedBody, OutlierDetector, PoolSendError, PoolState, RetryBudget, Shed,
        UpstreamConnector, UpstreamProtocol,
    },
};
use crate::maglev::MaglevError;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A backend's response, and the pooled connection it came on (lb's own pool only), which
/// goes back to the pool with the response body.
pub struct Sent {
    pub response: Response<Incoming>,
    pub lease: Option<Lease>,
}

impl Sent {
    pub fn status(&self) -> hyper::StatusCode {
        self.response.status()
    }

    /// The response with its body as the proxy sends it on.
    pub fn into_proxy_response(self) -> Response<ProxyBody> {
        let Self { response, lease } = self;
        match lease {
            Some(lease) => response.map(|body| LeasedBody::new(body, lease).boxed()),
            None => response.map(BodyExt::boxed),
        }
    }

    /// The response for an upgrade: its connection is handed over, never reused.
    pub fn into_upgrade(self) -> Response<Incoming> {
        if let Some(lease) = self.lease {
            lease.discard();
        }
        self.response
    }
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Http1(PoolSendError),
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
}

impl SendError {
    /// The connection could not be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Http1(e) => matches!(e, PoolSendError::Connect { .. }),
            Self::Client(e) => e.is_connect(),
        }
    }

    /// No connection was tried: the pool's breaker had no room for one.
    pub fn shed(&self) -> Option<Shed> {
        match self {
            Self::Http1(PoolSendError::Overloaded(shed)) => Some(shed.0),
            Self::Http1(_) => None,
            Self::Client(e) => {
                let mut source = std::error::Error::source(e);
                while let Some(err) = source {
                    // An io::Error's `source` skips its own inner error: look at it here.
                    let inner = err
                        .downcast_ref::<std::io::Error>()
                        .and_then(|io| io.get_ref())
                        .map_or(err, |inner| inner as &(dyn std::error::Error + 'static));
                    if let Some(overflow) = inner.downcast_ref::<super::upstream::Overflow>() {
                        return Some(overflow.0);
                    }
                    source = err.source();
                }
                None
            }
        }
    }
}

/// What the pool's guards granted one request: held until its response head.
pub struct Admission<'a> {
    _request: Option<super::upstream::Slot<'a>>,
    adaptive: Option<Admitted<'a>>,
}

impl Admission<'_> {
    /// The request got an answer (or timed out): its latency feeds the adaptive limit.
    pub fn answered(self) {
        if let Some(adaptive) = self.adaptive {
            adaptive.done();
        }
    }
}

/// hyper-util's pooled client over lb's connector.
pub type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

pub struct Pool {
    pub config: PoolConfig,
    pub inflight: Arc<InFlight>,
    selection: Box<dyn BackendSelection>,
    connector: UpstreamConnector,
    /// Shared by all clients (pools without PROXY headers); TLS and HTTP/2 upstreams, and
    /// CONNECT requests.
    client: UpstreamClient,
    /// Plain HTTP/1.1 backends without PROXY headers.
    http1: Option<Arc<Http1Pool>>,
    /// Each backend's `IP:PORT` as a URI authority, made once.
    authorities: Vec<Option<Authority>>,
    pub state: Arc<PoolState>,
    /// A breaker or an adaptive limit is configured (`admit` has work to do).
    guarded: bool,
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
        let breaker = config.breaker.map(|b| Arc::new(Breaker::new(b)));
        let traffic = BackendTraffic::new(config.backends.len());
        let backend_traffic = |i: usize| (config.backends[i].addr, traffic.stats(i));
        let connector = UpstreamConnector::new(config.connect_timeout, config.tls.clone())
            .with_breaker(breaker.clone())
            .with_traffic(
                (0..config.backends.len())
                    .filter_map(|i| {
                        let (addr, stats) = backend_traffic(i);
                        Some((addr, stats?))
                    })
                    .collect(),
            );
        let client = build_client(connector.clone(), &config);
        let plain_http1 = config.tls.is_none()
            && config.protocol == UpstreamProtocol::Http1
            && config.proxy_protocol.is_none();
        let http1 = plain_http1.then(|| {
            let backends: Vec<_> = (0..config.backends.len()).map(backend_traffic).collect();
            Http1Pool::new(
                &backends,
                config.idle_per_backend,
                config.idle_timeout,
                config.connect_timeout,
                breaker.clone(),
            )
        });
        let authorities = config
            .backends
            .iter()
            // A socket address's text is always a valid authority.
            .map(|b| Authority::from_maybe_shared(Bytes::from(b.addr.to_string())).ok())
            .collect();
        Ok(Self {
            guarded: breaker.is_some() || config.adaptive.is_some(),
            http1,
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
                )
                .with_outlier(
                    config
                        .outlier
                        .map(|o| OutlierDetector::new(config.backends.len(), o)),
                ),
                traffic,
                inflight,
                breaker,
                adaptive: config.adaptive.map(AdaptiveLimit::new),
            }),
            config,
        })
    }

    /// Sends `req` (its URI names backend `i`) for the client `peer` that reached `conn`.
    pub async fn send(
        &self,
        i: usize,
        req: Request<UpstreamBody>,
        peer: SocketAddr,
        conn: &ConnInfo,
    ) -> Result<Sent, SendError> {
        if let Some(http1) = self
            .http1
            .as_ref()
            .filter(|_| req.method() != Method::CONNECT)
        {
            let (response, lease) = http1.send(i, req).await.map_err(SendError::Http1)?;
            return Ok(Sent {
                response,
                lease: Some(lease),
            });
        }
        let response = match self.config.proxy_protocol {
            None => self.client.request(req).await,
            Some(version) => {
                let client = conn.private_client(&self.config.name, || {
                    let header =
                        super::proxy_header::encode(version, peer, conn.local, conn.flow_id);
                    build_client(self.connector.with_proxy_header(header), &self.config)
                });
                client.request(req).await
            }
        };
        response
            .map(|response| Sent {
                response,
                lease: None,
            })
            .map_err(SendError::Client)
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
            let in_flight = self.inflight.get(i);
            self.state.traffic.in_flight(i, u64::from(in_flight));
            if self.cap(i).is_some_and(|cap| in_flight > cap) {
                full.push(i);
                continue;
            }
            return Some((i, guard));
        }
    }

    /// Feeds an attempt's outcome on backend `i` to passive health, outlier detection and the
    /// traffic totals.
    pub fn record(&self, i: usize, attempt: Attempt) {
        self.record_timed(i, attempt, Duration::ZERO);
    }

    /// As `record`, for an HTTP attempt that took `latency` to its answer's head.
    pub fn record_timed(&self, i: usize, attempt: Attempt, latency: Duration) {
        let ok = attempt.is_ok();
        let answered = match attempt {
            Attempt::Answered(status) => Some(status),
            Attempt::Failed | Attempt::Connected => None,
        };
        self.state.traffic.record(i, ok, answered, latency);
        if ok {
            self.state.health.record_success(i);
        } else {
            self.state.health.record_failure(i);
        }
        self.state.health.record_outlier(i, attempt);
    }

    /// The pool's guards admit one more request (`max_requests`, the adaptive limit), or say
    /// why not. A pool without guards answers at once.
    pub fn admit(&self) -> Result<Option<Admission<'_>>, Shed> {
        if !self.guarded {
            return Ok(None);
        }
        let request = self
            .state
            .breaker
            .as_ref()
            .map(|b| b.request())
            .transpose()?;
        let adaptive = match &self.state.adaptive {
            None => None,
            Some(limit) => Some(limit.try_admit().ok_or(Shed::Adaptive)?),
        };
        Ok(Some(Admission {
            _request: request,
            adaptive,
        }))
    }

    /// Room for one more retry under `max_retries` (always, without a breaker).
    pub fn retry_slot(&self) -> Result<Option<super::upstream::Slot<'_>>, Shed> {
        self.state.breaker.as_ref().map(|b| b.retry()).transpose()
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
