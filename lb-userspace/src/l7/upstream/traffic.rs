//! Per-backend traffic totals for the status page: attempts sent and attempts that failed
//! (connect error, timeout, broken exchange or a 5xx answer). Kept with the pool's other
//! per-backend state, so a pool kept by a reload keeps its totals; the manager turns deltas
//! between snapshots into request and error rates.
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Totals per backend (index as in the pool's backend list).
#[derive(Debug)]
pub struct BackendTraffic(Vec<Totals>);

impl BackendTraffic {
    pub fn new(backends: usize) -> Self {
        Self((0..backends).map(|_| Totals::default()).collect())
    }

    /// Counts one attempt on backend `i`.
    pub fn record(&self, i: usize, ok: bool) {
        if let Some(t) = self.0.get(i) {
            t.requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
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
