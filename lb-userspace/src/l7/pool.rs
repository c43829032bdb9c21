//! An upstream pool: its backends, the selection algorithm, in-flight counts and a keep-alive
//! HTTP client (hyper-util's pooled client: idle connections are reused across requests).
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{
    body::UpstreamBody,
    config::{Algorithm, PoolConfig},
    selection::{
        BackendSelection, ConsistentHash, InFlight, LeastConnections, PowerOfTwoChoices,
        SmoothWeightedRoundRobin,
    },
};
use crate::maglev::MaglevError;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub struct Pool {
    pub config: PoolConfig,
    pub inflight: Arc<InFlight>,
    selection: Box<dyn BackendSelection>,
    pub client: Client<HttpConnector, UpstreamBody>,
}

/// Idle upstream connections kept per backend, and for how long.
const IDLE_PER_BACKEND: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_BACKEND)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            config,
            inflight,
            selection,
            client,
        })
    }

    /// A backend for this attempt, never one already `tried`.
    pub fn pick(&self, key: u64, tried: &[usize]) -> Option<usize> {
        self.selection.select(key, &|i| tried.contains(&i))
    }
}
