//! Least connections: the eligible backend with the fewest requests in flight per unit of
//! weight; ties go round robin so an idle pool still spreads.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::{Backend, BackendSelection, InFlight, eligible, scaled_weight, tiers};

pub struct LeastConnections {
    backends: Vec<Backend>,
    tiers: [Vec<usize>; 2],
    inflight: Arc<InFlight>,
    next: AtomicUsize,
}

impl LeastConnections {
    pub fn new(backends: Vec<Backend>, inflight: Arc<InFlight>) -> Self {
        let tiers = tiers(&backends);
        Self {
            backends,
            tiers,
            inflight,
            next: AtomicUsize::new(0),
        }
    }
}

impl BackendSelection for LeastConnections {
    fn select_weighted(
        &self,
        _key: u64,
        excluded: &dyn Fn(usize) -> bool,
        factor: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for tier in &self.tiers {
            let n = tier.len();
            let mut best: Option<(usize, u64, u64)> = None; // (index, in flight, weight)
            for k in 0..n {
                let i = tier[(start + k) % n];
                if !eligible(&self.backends, i, excluded) {
                    continue;
                }
                let (load, weight) = (
                    u64::from(self.inflight.get(i)),
                    scaled_weight(self.backends[i].weight, factor(i)),
                );
                // load/weight < best_load/best_weight, without division.
                if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                    best = Some((i, load, weight));
                }
            }
            if let Some((i, _, _)) = best {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::selection::test_support::{none, pool};

    #[test]
    fn picks_the_least_loaded_per_weight() {
        let inflight = Arc::new(InFlight::new(3));
        let lc = LeastConnections::new(pool(&[1, 1, 2], &[]), inflight.clone());
        let _a = inflight.start(0);
        let _b = inflight.start(1);
        let _c1 = inflight.start(2);
        // 0: 1/1, 1: 1/1, 2: 1/2 -> 2
        assert_eq!(lc.select(0, &none), Some(2));
        let _c2 = inflight.start(2);
        let _c3 = inflight.start(2);
        // 2 is now 3/2 -> 0 or 1
        assert!(matches!(lc.select(0, &none), Some(0 | 1)));
        drop(_a);
        assert_eq!(lc.select(0, &none), Some(0));
    }

    #[test]
    fn idle_pool_spreads_round_robin_and_backups_wait() {
        let inflight = Arc::new(InFlight::new(3));
        let lc = LeastConnections::new(pool(&[1, 1], &[1]), inflight);
        let picks: Vec<_> = (0..4).map(|_| lc.select(0, &none).expect("pick")).collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 2);
        assert!(picks.iter().all(|p| *p < 2));
        assert_eq!(lc.select(0, &|i| i < 2), Some(2));
    }
}
