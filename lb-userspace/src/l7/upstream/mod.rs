//! The upstream side of a pool, one job per module:
//!
//! - `connector.rs`: opening one upstream connection (TCP, PROXY header, TLS).
//! - `h1_pool.rs`: lb's own keep-alive pool for plain HTTP/1.1 backends (the common case;
//!   hyper-util's client serves the others).
//! - `tls.rs`: HTTPS upstreams (rustls client configuration, protocol choice).
//! - `private.rs`: per-downstream-connection clients for pools that send a PROXY header, so an
//!   upstream connection never carries two different clients.
//! - `budget.rs`: the pool-wide retry budget and retry counters.
//! - `config.rs`: the upstream keys of `[[pool]]` (defaults, validation).
//! - `passive.rs`: per-backend health: passive ejection, down flag for active checks.
//! - `traffic.rs`: per-backend request and error totals (status page rates).
//! - `breaker.rs`: the pool's circuit breaker (caps on connections, pending requests,
//!   requests, retries) and `Shed`, why lb answered 503 itself.
//! - `outlier.rs`: outlier detection (consecutive 5xx / gateway errors, growing ejections,
//!   the ejected-percentage cap).
//! - `adaptive.rs`: the adaptive concurrency limit (gradient on live latency).
mod adaptive;
mod breaker;
mod budget;
mod connector;
mod h1_pool;
mod outlier;
mod passive;
mod private;
pub mod tls;
mod traffic;

pub use adaptive::{AdaptiveLimit, AdaptiveSettings, Admitted};
pub use breaker::{Breaker, BreakerSettings, Counted, Overflow, Shed, Slot};
pub use budget::{RetryBudget, RetryCounters};
pub use connector::UpstreamConnector;
pub use h1_pool::{Http1Pool, Lease, LeasedBody, PoolSendError};
pub use outlier::{Attempt, OutlierDetector, OutlierSettings, OutlierStatus};
pub use passive::{BackendHealth, BackendStatus};
pub use private::ConnInfo;
pub use tls::{UpstreamProtocol, UpstreamTls};
pub use traffic::BackendTraffic;

/// A pool's live upstream state, shared with the manager (metrics read it, health checks will
/// write it). `RunningL7::pool_state` hands it out by pool name.
#[derive(Debug)]
pub struct PoolState {
    pub retry_budget: RetryBudget,
    pub health: BackendHealth,
    pub traffic: BackendTraffic,
    /// Requests in flight per backend (the same counts selection reads).
    pub inflight: std::sync::Arc<crate::l7::selection::InFlight>,
    /// The pool's guards, when configured.
    pub breaker: Option<std::sync::Arc<Breaker>>,
    pub adaptive: Option<AdaptiveLimit>,
}
