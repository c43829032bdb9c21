//! Smooth weighted round robin (NGINX's algorithm): weights 5,1,1 give a a b a c a a, spreading
//! the heavy backend's turns instead of sending it five in a row.
use std::sync::Mutex;

use super::{Backend, BackendSelection, eligible, scaled_weight, tiers};

pub struct SmoothWeightedRoundRobin {
    backends: Vec<Backend>,
    tiers: [Vec<usize>; 2],
    current: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    pub fn new(backends: Vec<Backend>) -> Self {
        let tiers = tiers(&backends);
        let current = Mutex::new(vec![0; backends.len()]);
        Self {
            backends,
            tiers,
            current,
        }
    }
}

impl BackendSelection for SmoothWeightedRoundRobin {
    fn select_weighted(
        &self,
        _key: u64,
        excluded: &dyn Fn(usize) -> bool,
        factor: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        let mut current = self.current.lock().ok()?;
        for tier in &self.tiers {
            let mut total = 0i64;
            let mut best: Option<usize> = None;
            for &i in tier {
                if !eligible(&self.backends, i, excluded) {
                    continue;
                }
                // Weights scaled by the same 1000 keep the sequence of unscaled ones.
                let weight = scaled_weight(self.backends[i].weight, factor(i)) as i64;
                current[i] += weight;
                total += weight;
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                current[b] -= total;
                return Some(b);
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
    fn nginx_sequence_for_5_1_1() {
        let rr = SmoothWeightedRoundRobin::new(pool(&[5, 1, 1], &[]));
        let picks: Vec<_> = (0..7).map(|_| rr.select(0, &none).expect("pick")).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_follow_weights_exactly_over_a_cycle() {
        let rr = SmoothWeightedRoundRobin::new(pool(&[95, 5], &[]));
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[rr.select(0, &none).expect("pick")] += 1;
        }
        assert_eq!(counts, [950, 50]);
    }

    #[test]
    fn exclusions_zero_weight_and_backups() {
        let rr = SmoothWeightedRoundRobin::new(pool(&[1, 0, 1], &[1]));
        for _ in 0..10 {
            let pick = rr.select(0, &|i| i == 0).expect("pick");
            assert_eq!(pick, 2, "0 excluded, 1 has no weight");
        }
        assert_eq!(
            rr.select(0, &|i| i == 0 || i == 2),
            Some(3),
            "backup when no primary"
        );
        assert_eq!(rr.select(0, &|_| true), None);
    }

    #[test]
    fn a_ramping_backend_gets_its_factor_of_the_turns() {
        let rr = SmoothWeightedRoundRobin::new(pool(&[1, 1], &[]));
        let mut counts = [0; 2];
        for _ in 0..1100 {
            let pick = rr.select_weighted(0, &none, &|i| if i == 1 { 100 } else { 1000 });
            counts[pick.expect("pick")] += 1;
        }
        assert_eq!(counts, [1000, 100], "1 at 10% of its weight");
    }
}
