//! `[[pool]]`: backends, algorithm, timeouts, retries, health checks; the upstream keys
//! (budget, ejection, keep-alive, protocol, TLS) are read by `upstream.rs`, the overload
//! guards (circuit breaker, outlier detection, adaptive concurrency) by `guards.rs`.
use std::{
    collections::HashSet,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError,
    health_check::{HealthCheckConfig, RawHealthCheck},
    value::duration,
};
use crate::l7::{proxy_header::ProxyVersion, selection::Backend};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConn,
    P2c,
    ConsistentHash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(hyper::header::HeaderName),
    Cookie(String),
}

/// Compared on reload (`==`): an unchanged pool keeps its state and connections. TLS
/// settings compare by what the connector was built from, the CA file by its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub backends: Vec<Backend>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    /// Send this PROXY protocol header first on every upstream connection (true client and
    /// the address it connected to).
    pub proxy_protocol: Option<ProxyVersion>,
    /// Active health checks of the backends (none: backends count as up).
    pub health_check: Option<HealthCheckConfig>,
    /// `[pool.discovery]`: more backends from DNS (the manager adds what it finds to
    /// `backends`; a file's pool as parsed holds only its listed ones).
    pub discovery: Option<super::discovery::DiscoveryConfig>,
    /// Retries in flight may be at most this percentage of requests in flight ...
    pub retry_budget_percent: u32,
    /// ... but this many concurrent retries are always allowed.
    pub retry_budget_min: u32,
    /// Consecutive failures that eject a backend (0: never) ...
    pub max_fails: u32,
    /// ... for this long.
    pub fail_timeout: Duration,
    /// Per backend (index as in `backends`): most requests in flight at once; None: no cap.
    pub backend_max_connections: Vec<Option<u32>>,
    /// Idle keep-alive connections kept per backend, and for how long.
    pub idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// HTTP/1.1, h2c or h2 (TLS) to the backends.
    pub protocol: crate::l7::upstream::UpstreamProtocol,
    /// HTTPS to the backends (None: plain TCP).
    pub tls: Option<crate::l7::upstream::UpstreamTls>,
    /// `[pool.circuit_breaker]`, `[pool.outlier_detection]`, `[pool.adaptive_concurrency]`
    /// (None: that guard is off). See `guards.rs`.
    pub breaker: Option<crate::l7::upstream::BreakerSettings>,
    pub outlier: Option<crate::l7::upstream::OutlierSettings>,
    pub adaptive: Option<crate::l7::upstream::AdaptiveSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) algorithm: Algorithm,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<String>>,
    pub(crate) request_timeout: Option<Spanned<String>>,
    #[serde(default = "one")]
    pub(crate) retries: u32,
    pub(crate) proxy_protocol: Option<ProxyVersion>,
    pub(crate) health_check: Option<RawHealthCheck>,
    pub(crate) discovery: Option<Spanned<super::discovery::RawDiscovery>>,
    #[serde(default, rename = "backend")]
    pub(crate) backends: Vec<Spanned<RawBackend>>,
    // Upstream keys, read by `upstream::config`.
    pub(crate) retry_budget_percent: Option<Spanned<u32>>,
    pub(crate) retry_budget_min: Option<u32>,
    pub(crate) max_fails: Option<Spanned<u32>>,
    pub(crate) fail_timeout: Option<Spanned<String>>,
    pub(crate) idle_per_backend: Option<usize>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) protocol: Option<Spanned<crate::l7::upstream::UpstreamProtocol>>,
    pub(crate) tls: Option<Spanned<bool>>,
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    pub(crate) tls_server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tls_insecure: bool,
    pub(crate) tls_client_cert: Option<Spanned<PathBuf>>,
    pub(crate) tls_client_key: Option<Spanned<PathBuf>>,
    // Overload guards, read by `guards`.
    pub(crate) circuit_breaker: Option<Spanned<super::guards::RawBreaker>>,
    pub(crate) outlier_detection: Option<Spanned<super::guards::RawOutlier>>,
    pub(crate) adaptive_concurrency: Option<Spanned<super::guards::RawAdaptive>>,
}

impl RawPool {
    pub(crate) fn name(&self) -> String {
        self.name.get_ref().clone()
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) address: Spanned<String>,
    pub(crate) weight: Option<u32>,
    #[serde(default)]
    pub(crate) backup: bool,
    pub(crate) max_connections: Option<Spanned<u32>>,
}

/// Checks and compiles the `[[pool]]` sections, in file order.
pub(super) fn parse(
    raw_pools: Vec<Spanned<RawPool>>,
    text: &str,
    path: &Path,
) -> Result<Vec<PoolConfig>, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);

    let mut pools = Vec::new();
    let mut names = HashSet::new();
    for pool in raw_pools {
        let mut pool = pool.into_inner();
        let name = pool.name.get_ref().clone();
        if !names.insert(name.clone()) {
            return Err(err(pool.name.span(), format!("duplicate pool {name:?}")));
        }
        let hash_key = match &pool.hash_key {
            None => HashKey::ClientIp,
            Some(k) => match k.get_ref().as_str() {
                "client_ip" => HashKey::ClientIp,
                other => {
                    if let Some(h) = other.strip_prefix("header:") {
                        HashKey::Header(
                            hyper::header::HeaderName::from_bytes(h.as_bytes())
                                .map_err(|_| err(k.span(), format!("bad header name {h:?}")))?,
                        )
                    } else if let Some(c) = other.strip_prefix("cookie:") {
                        HashKey::Cookie(c.to_owned())
                    } else {
                        return Err(err(
                            k.span(),
                            format!(
                                "hash_key {other:?}: expected client_ip, header:NAME or cookie:NAME"
                            ),
                        ));
                    }
                }
            },
        };
        let caps = super::upstream::backend_caps(&pool.backends, &err)?;
        let mut backends = Vec::new();
        for b in std::mem::take(&mut pool.backends) {
            let b = b.into_inner();
            let addr: SocketAddr = b.address.get_ref().parse().map_err(|_| {
                err(
                    b.address.span(),
                    format!(
                        "backend address {:?} is not ADDRESS:PORT",
                        b.address.get_ref()
                    ),
                )
            })?;
            backends.push(Backend {
                addr,
                weight: b.weight.unwrap_or(1),
                backup: b.backup,
            });
        }
        let health_check = pool
            .health_check
            .take()
            .map(|raw| HealthCheckConfig::from_raw(raw, text, path))
            .transpose()?;
        let discovery = pool
            .discovery
            .take()
            .map(|raw| super::discovery::DiscoveryConfig::from_raw(raw, text, path))
            .transpose()?;
        let mut pool_config = PoolConfig {
            name,
            algorithm: pool.algorithm,
            hash_key,
            backends,
            connect_timeout: duration(
                &pool.connect_timeout,
                Duration::from_secs(2),
                "connect_timeout",
                &err,
            )?,
            request_timeout: duration(
                &pool.request_timeout,
                Duration::from_secs(30),
                "request_timeout",
                &err,
            )?,
            retries: pool.retries,
            proxy_protocol: pool.proxy_protocol,
            retry_budget_percent: 0,
            retry_budget_min: 0,
            max_fails: 0,
            fail_timeout: Duration::ZERO,
            backend_max_connections: caps,
            idle_per_backend: 0,
            idle_timeout: Duration::ZERO,
            protocol: crate::l7::upstream::UpstreamProtocol::Http1,
            tls: None,
            health_check,
            discovery,
            breaker: None,
            outlier: None,
            adaptive: None,
        };
        super::upstream::apply(&pool, &mut pool_config, &err)?;
        super::guards::apply(&pool, &mut pool_config, &err)?;
        pools.push(pool_config);
    }
    Ok(pools)
}
