//! Backend discovery (`[pool.discovery]`): one task per pool asks DNS again when the answer's
//! TTL ends (between 1 s and the pool's `refresh`), or watches etcd, and reports each change
//! of the set, or of the error, to the manager, which applies it like a reload of the file.
//!
//! - `dns.rs`: the lookups (A/AAAA on a port, SRV).
//! - `etcd.rs`: the keys under a prefix, read and watched through etcd's v3 HTTP API.
pub mod dns;
pub mod etcd;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::discovery::{DiscoveryConfig, DiscoverySource, MIN_REFRESH};
use crate::l7::selection::Backend;

/// After a failed lookup, the next try comes at most this soon (or at `refresh`, if shorter).
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// What a pool's discovery found: its backends now (sorted), or why the lookup failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    pub pool: String,
    pub result: Result<Vec<Backend>, String>,
}

/// Starts `pool`'s discovery; it runs until the handle is aborted (or the manager is gone).
pub fn spawn(
    pool: String,
    config: DiscoveryConfig,
    events: mpsc::UnboundedSender<Discovered>,
) -> tokio::task::JoinHandle<()> {
    let reporter = Reporter {
        pool,
        events,
        last: None,
    };
    tokio::spawn(async move {
        match &config.source {
            DiscoverySource::Dns { name, port } => {
                dns_loop(&config, dns::Query::Ip { name, port: *port }, reporter).await;
            }
            DiscoverySource::DnsSrv { name } => {
                dns_loop(&config, dns::Query::Srv { name }, reporter).await;
            }
            DiscoverySource::Etcd { endpoints, prefix } => {
                etcd::watch(endpoints, prefix, config.refresh, reporter).await;
            }
        }
    })
}

/// Sends a pool's results to the manager, each change once.
pub struct Reporter {
    pool: String,
    events: mpsc::UnboundedSender<Discovered>,
    last: Option<Result<Vec<Backend>, String>>,
}

impl Reporter {
    /// Reports `result` if it differs from the last one; false when the manager is gone.
    pub fn report(&mut self, result: Result<Vec<Backend>, String>) -> bool {
        if self.last.as_ref() == Some(&result) {
            return true;
        }
        self.last = Some(result.clone());
        self.events
            .send(Discovered {
                pool: self.pool.clone(),
                result,
            })
            .is_ok()
    }
}

/// Asks DNS again when the answer's TTL ends (between 1 s and `refresh`).
async fn dns_loop(config: &DiscoveryConfig, query: dns::Query<'_>, mut reporter: Reporter) {
    let resolver = match dns::resolver(config) {
        Ok(r) => r,
        Err(err) => {
            reporter.report(Err(err.to_string()));
            return;
        }
    };
    loop {
        let (result, next) = match dns::lookup(&resolver, &query, config.weight).await {
            Ok((backends, ttl)) => (Ok(backends), ttl),
            Err(err) => (Err(err.to_string()), RETRY_AFTER_FAILURE),
        };
        if !reporter.report(result) {
            return;
        }
        tokio::time::sleep(next.clamp(MIN_REFRESH, config.refresh.max(MIN_REFRESH))).await;
    }
}
