//! A pool-wide retry budget (Envoy's `retry_budget`): retries in flight may be at most
//! `percent` of the requests in flight, and `min` retries are always allowed. Per-request retry
//! counts alone let a struggling pool receive (1 + retries) times its load exactly when it can
//! least take it; the budget caps the extra load at a fraction of the real one.
use std::sync::atomic::{AtomicU64, Ordering};

/// Retry counters the metrics read.
#[derive(Debug, Default)]
pub struct RetryCounters {
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries not sent because the budget was spent (the failure went to the client).
    pub budget_denied: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min: u64,
    requests: AtomicU64,
    retries: AtomicU64,
    pub counters: RetryCounters,
}

impl RetryBudget {
    pub fn new(percent: u32, min: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min: u64::from(min),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            counters: RetryCounters::default(),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn request(&self) -> InFlightRequest<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlightRequest(self)
    }

    /// A retry permit if the budget allows one more retry now (counted either way).
    pub fn try_retry(&self) -> Option<RetryPermit<'_>> {
        let allowed = (self.requests.load(Ordering::Relaxed) * self.percent / 100).max(self.min);
        let before = self.retries.fetch_add(1, Ordering::Relaxed);
        if before < allowed {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            Some(RetryPermit(self))
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            self.counters.budget_denied.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

pub struct InFlightRequest<'a>(&'a RetryBudget);

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RetryPermit<'a>(&'a RetryBudget);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_requests_with_a_floor() {
        let budget = RetryBudget::new(20, 2);
        let requests: Vec<_> = (0..10).map(|_| budget.request()).collect();
        // 20% of 10 requests: two retries at once, the third is denied.
        let a = budget.try_retry().expect("first");
        let _b = budget.try_retry().expect("second");
        assert!(budget.try_retry().is_none());
        drop(a);
        assert!(
            budget.try_retry().is_some(),
            "a finished retry frees its slot"
        );
        drop(requests);
        // No requests: the floor (2) still allows a second one beside `_b`.
        let _c = budget.try_retry().expect("min");
        let c = &budget.counters;
        assert_eq!(c.retries.load(Ordering::Relaxed), 4);
        assert_eq!(c.budget_denied.load(Ordering::Relaxed), 1);
    }
}
