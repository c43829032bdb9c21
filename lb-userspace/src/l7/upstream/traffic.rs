//! Per-backend traffic totals for the status page: attempts sent and attempts that failed
//! (connect error, timeout, broken exchange or a 5xx answer). Kept with the pool's other
//! per-backend state, so a pool kept by a reload keeps its totals; the manager turns deltas
//! between snapshots into request and error rates. Each backend also has the status page's
//! `TrafficStats` (answers by class, latency, peak in flight).
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use super::super::traffic::{TrafficSnapshot, TrafficStats};

#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Shared with the backend's upstream connections, which count its bytes.
    stats: Arc<TrafficStats>,
}

/// Totals per backend (index as in the pool's backend list).
#[derive(Debug)]
pub struct BackendTraffic(Vec<Totals>);

impl BackendTraffic {
    pub fn new(backends: usize) -> Self {
        Self((0..backends).map(|_| Totals::default()).collect())
    }

    /// Counts one attempt on backend `i`: `answered` with its status when the backend
    /// answered, `latency` from sending to the answer's head.
    pub fn record(&self, i: usize, ok: bool, answered: Option<u16>, latency: Duration) {
        if let Some(t) = self.0.get(i) {
            t.requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(status) = answered {
                t.stats.answered(status, latency);
            }
        }
    }

    /// Backend `i` has `in_flight` requests now (for the peak).
    pub fn in_flight(&self, i: usize, in_flight: u64) {
        if let Some(t) = self.0.get(i) {
            t.stats.observe_concurrency(in_flight);
        }
    }

    /// Backend `i`'s totals, for its connections to count bytes in.
    pub fn stats(&self, i: usize) -> Option<Arc<TrafficStats>> {
        self.0.get(i).map(|t| t.stats.clone())
    }

    /// The status page's view of backend `i`.
    pub fn snapshot(&self, i: usize) -> TrafficSnapshot {
        self.0
            .get(i)
            .map(|t| t.stats.snapshot())
            .unwrap_or_default()
    }

    /// (requests, errors) of backend `i` so far.
    pub fn totals(&self, i: usize) -> (u64, u64) {
        self.0.get(i).map_or((0, 0), |t| {
            (
                t.requests.load(Ordering::Relaxed),
                t.errors.load(Ordering::Relaxed),
            )
        })
    }
}
