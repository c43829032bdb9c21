//! Choosing a backend from a pool, one module per algorithm, behind one small trait (the shape
//! of Pingora's `BackendSelection`). Every algorithm honours:
//!
//! - weights (0 = takes no new requests);
//! - exclusions: the caller says which backends may not be picked for this attempt (down,
//!   draining, at their connection cap, or already tried by a retry);
//! - backups: used only when no primary is eligible;
//! - slow start: a per-backend weight factor in permille (`FULL_WEIGHT` = 1000) scales the
//!   configured weight while a recovered backend ramps up (consistent hashing ignores it, as
//!   nginx's hash does: a ring slot cannot be a fraction of a backend).
//!
//! In-flight counts are shared with the proxy (`InFlight`), so least-connections and
//! power-of-two-choices see live load without locks.
mod consistent;
mod least_conn;
mod p2c;
mod round_robin;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
};

pub use consistent::ConsistentHash;
pub use least_conn::LeastConnections;
pub use p2c::PowerOfTwoChoices;
pub use round_robin::SmoothWeightedRoundRobin;

/// One upstream server of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Used only when no primary backend is eligible.
    pub backup: bool,
}

/// Requests in flight per backend (index as in the pool's backend list).
#[derive(Debug, Default)]
pub struct InFlight(Vec<AtomicU32>);

impl InFlight {
    pub fn new(backends: usize) -> Self {
        Self((0..backends).map(|_| AtomicU32::new(0)).collect())
    }

    pub fn get(&self, i: usize) -> u32 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a request on backend `i` until the guard is dropped.
    pub fn start(&self, i: usize) -> InFlightGuard<'_> {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        InFlightGuard { inflight: self, i }
    }
}

impl InFlight {
    /// As `start`, the guard owning a handle on the counts (for sessions that outlive a
    /// borrow of their pool, e.g. across reloads).
    pub fn start_owned(self: &std::sync::Arc<Self>, i: usize) -> OwnedInFlightGuard {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        OwnedInFlightGuard {
            inflight: self.clone(),
            i,
        }
    }
}

pub struct OwnedInFlightGuard {
    inflight: std::sync::Arc<InFlight>,
    i: usize,
}

impl Drop for OwnedInFlightGuard {
    fn drop(&mut self) {
        if let Some(c) = self.inflight.0.get(self.i) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub struct InFlightGuard<'a> {
    inflight: &'a InFlight,
    i: usize,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.inflight.0.get(self.i) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A backend-choosing algorithm over a fixed backend list (rebuilt on configuration change,
/// swapped atomically by the pool).
pub trait BackendSelection: Send + Sync {
    /// Picks the index of a backend for a request whose hash key is `key` (only consistent
    /// hashing uses it), never one for which `excluded(i)` is true, weighing backend `i` by
    /// its configured weight times `factor(i)` / `FULL_WEIGHT`. `None`: nothing eligible.
    fn select_weighted(
        &self,
        key: u64,
        excluded: &dyn Fn(usize) -> bool,
        factor: &dyn Fn(usize) -> u32,
    ) -> Option<usize>;

    /// `select_weighted` with every backend at its full weight.
    fn select(&self, key: u64, excluded: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.select_weighted(key, excluded, &|_| FULL_WEIGHT)
    }
}

/// The weight factor of a backend not ramping up (permille).
pub const FULL_WEIGHT: u32 = 1000;

/// A backend's configured weight scaled by `factor` (permille), never below 1 while both are
/// above zero (a ramping backend still gets its turns).
pub(crate) fn scaled_weight(weight: u32, factor: u32) -> u64 {
    let scaled = u64::from(weight) * u64::from(factor.min(FULL_WEIGHT));
    if weight > 0 && factor > 0 {
        scaled.max(1)
    } else {
        scaled
    }
}

/// The two tiers every algorithm walks: primaries, then backups.
pub(crate) fn tiers(backends: &[Backend]) -> [Vec<usize>; 2] {
    let primaries = (0..backends.len())
        .filter(|&i| !backends[i].backup)
        .collect();
    let backups = (0..backends.len())
        .filter(|&i| backends[i].backup)
        .collect();
    [primaries, backups]
}

/// Eligible: weight above zero and not excluded.
pub(crate) fn eligible(backends: &[Backend], i: usize, excluded: &dyn Fn(usize) -> bool) -> bool {
    backends[i].weight > 0 && !excluded(i)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Backend;

    pub fn pool(weights: &[u32], backups: &[u32]) -> Vec<Backend> {
        let mut out = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            out.push(Backend {
                addr: format!("10.0.0.{}:80", i + 1).parse().expect("addr"),
                weight: *w,
                backup: false,
            });
        }
        for (i, w) in backups.iter().enumerate() {
            out.push(Backend {
                addr: format!("10.0.1.{}:80", i + 1).parse().expect("addr"),
                weight: *w,
                backup: true,
            });
        }
        out
    }

    pub fn none(_: usize) -> bool {
        false
    }
}
