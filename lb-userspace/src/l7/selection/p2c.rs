//! Power of two choices: two random eligible backends (drawn by weight), the one with fewer
//! requests in flight wins. Near least-connections balance without scanning the pool, and no
//! herd onto the single least-loaded backend when load information is stale.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::{Backend, BackendSelection, InFlight, eligible, scaled_weight, tiers};

pub struct PowerOfTwoChoices {
    backends: Vec<Backend>,
    tiers: [Vec<usize>; 2],
    inflight: Arc<InFlight>,
    rng: AtomicU64,
}

impl PowerOfTwoChoices {
    pub fn new(backends: Vec<Backend>, inflight: Arc<InFlight>, seed: u64) -> Self {
        let tiers = tiers(&backends);
        Self {
            backends,
            tiers,
            inflight,
            rng: AtomicU64::new(seed | 1),
        }
    }

    /// splitmix64 over an atomic counter: cheap, lock-free, good enough to pick backends.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random eligible backend of `candidates`, chosen with probability proportional to
    /// weight.
    fn weighted_draw(&self, candidates: &[usize], factor: &dyn Fn(usize) -> u32) -> Option<usize> {
        let weight = |i: usize| scaled_weight(self.backends[i].weight, factor(i));
        let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
        if total == 0 {
            return None;
        }
        let mut r = self.random() % total;
        for &i in candidates {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

impl BackendSelection for PowerOfTwoChoices {
    fn select_weighted(
        &self,
        _key: u64,
        excluded: &dyn Fn(usize) -> bool,
        factor: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        for tier in &self.tiers {
            let candidates: Vec<usize> = tier
                .iter()
                .copied()
                .filter(|&i| eligible(&self.backends, i, excluded))
                .collect();
            let Some(a) = self.weighted_draw(&candidates, factor) else {
                continue;
            };
            let b = self.weighted_draw(&candidates, factor).unwrap_or(a);
            let load = |i: usize| {
                u64::from(self.inflight.get(i)) * 1_000_000
                    / scaled_weight(self.backends[i].weight, factor(i)).max(1)
            };
            return Some(if load(b) < load(a) { b } else { a });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::selection::test_support::{none, pool};

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let inflight = Arc::new(InFlight::new(2));
        let p2c = PowerOfTwoChoices::new(pool(&[1, 1], &[]), inflight.clone(), 7);
        let _busy: Vec<_> = (0..10).map(|_| inflight.start(0)).collect();
        let picks = (0..1000)
            .filter(|_| p2c.select(0, &none) == Some(1))
            .count();
        // Backend 1 wins whenever it is one of the two draws: 3/4 of the time.
        assert!((700..=800).contains(&picks), "{picks}");
    }

    #[test]
    fn idle_pool_follows_weights() {
        let inflight = Arc::new(InFlight::new(2));
        let p2c = PowerOfTwoChoices::new(pool(&[3, 1], &[]), inflight, 11);
        let heavy = (0..4000)
            .filter(|_| p2c.select(0, &none) == Some(0))
            .count();
        // Both idle: the first draw wins, so shares follow weights (3/4).
        assert!((2800..=3200).contains(&heavy), "{heavy}");
    }

    #[test]
    fn never_picks_excluded_and_falls_back_to_backups() {
        let inflight = Arc::new(InFlight::new(3));
        let p2c = PowerOfTwoChoices::new(pool(&[1, 1], &[1]), inflight, 3);
        assert!((0..200).all(|_| p2c.select(0, &|i| i == 0) == Some(1)));
        assert_eq!(p2c.select(0, &|i| i < 2), Some(2));
    }
}
