//! Backend discovery (`[pool.discovery]`): one task per pool asks DNS again when the answer's
//! TTL ends (between 1 s and the pool's `refresh`) and reports each change of the set, or
//! of the error, to the manager, which applies it like a reload of the file.
//!
//! - `dns.rs`: the lookups (A/AAAA on a port, SRV).
pub mod dns;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::discovery::{DiscoveryConfig, MIN_REFRESH};
use crate::l7::selection::Backend;

/// After a failed lookup, the next try comes at most this soon (or at `refresh`, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

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
    tokio::spawn(async move {
        let resolver = match dns::resolver(&config) {
            Ok(r) => r,
            Err(err) => {
                let _ = events.send(Discovered {
                    pool,
                    result: Err(err.to_string()),
                });
                return;
            }
        };
        let mut last: Option<Result<Vec<Backend>, String>> = None;
        loop {
            let (result, next) = match dns::lookup(&resolver, &config.source, config.weight).await {
                Ok((backends, ttl)) => (Ok(backends), ttl),
                Err(err) => (Err(err.to_string()), RETRY_AFTER_FAILURE),
            };
            if last.as_ref() != Some(&result) {
                let event = Discovered {
                    pool: pool.clone(),
                    result: result.clone(),
                };
                if events.send(event).is_err() {
                    return;
                }
                last = Some(result);
            }
            tokio::time::sleep(next.clamp(MIN_REFRESH, config.refresh.max(MIN_REFRESH))).await;
        }
    })
}
