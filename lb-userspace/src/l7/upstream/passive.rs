//! Per-backend health: passive outlier ejection (nginx's `max_fails` / `fail_timeout`) and a
//! down flag for active health checks.
//!
//! Passive: `max_fails` consecutive failures (connect error, timeout, broken exchange or a 5xx
//! answer) eject a backend for `fail_timeout`. After that it gets requests again; one more
//! failure ejects it again at once, a success resets its count. `max_fails = 0` turns this off.
//! Active: `set_down` (the manager's health checks) takes a backend out until set up again.
use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
struct BackendState {
    down: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `BackendHealth::epoch`; 0: not ejected.
    ejected_until_ms: AtomicU64,
}

/// What one backend's health looks like now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// Set down by an active check.
    pub down: bool,
    /// Passively ejected for this much longer.
    pub ejected_for: Option<Duration>,
    pub consecutive_failures: u32,
}

/// The health of a pool's backends (index as in the pool's backend list).
#[derive(Debug)]
pub struct BackendHealth {
    backends: Vec<BackendState>,
    max_fails: u32,
    fail_timeout: Duration,
    epoch: Instant,
}

impl BackendHealth {
    pub fn new(backends: usize, max_fails: u32, fail_timeout: Duration) -> Self {
        Self {
            backends: (0..backends).map(|_| BackendState::default()).collect(),
            max_fails,
            fail_timeout,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1 so that 0 keeps meaning "not ejected".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Neither down nor ejected.
    pub fn is_available(&self, i: usize) -> bool {
        self.backends.get(i).is_some_and(|b| {
            !b.down.load(Ordering::Relaxed)
                && b.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
        })
    }

    /// Not set down by an active check (passive ejection aside).
    pub fn is_up(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| !b.down.load(Ordering::Relaxed))
    }

    pub fn record_success(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.consecutive_failures.store(0, Ordering::Relaxed);
            b.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; at `max_fails` in a row the backend is ejected for `fail_timeout`.
    pub fn record_failure(&self, i: usize) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        let failures = b.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_fails > 0 && failures >= self.max_fails {
            let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
            b.ejected_until_ms.store(until, Ordering::Relaxed);
        }
    }

    /// Active health checks: take backend `i` out (`true`) or put it back.
    pub fn set_down(&self, i: usize, down: bool) {
        if let Some(b) = self.backends.get(i) {
            b.down.store(down, Ordering::Relaxed);
        }
    }

    pub fn status(&self, i: usize) -> Option<BackendStatus> {
        let b = self.backends.get(i)?;
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        Some(BackendStatus {
            down: b.down.load(Ordering::Relaxed),
            ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
            consecutive_failures: b.consecutive_failures.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_in_a_row_eject_and_a_success_resets() {
        let health = BackendHealth::new(2, 3, Duration::from_secs(60));
        health.record_failure(0);
        health.record_failure(0);
        health.record_success(0);
        health.record_failure(0);
        health.record_failure(0);
        assert!(health.is_available(0), "not three in a row");
        health.record_failure(0);
        assert!(!health.is_available(0));
        let status = health.status(0).expect("backend");
        assert_eq!(status.consecutive_failures, 3);
        assert!(
            status
                .ejected_for
                .is_some_and(|d| d > Duration::from_secs(59))
        );
        assert!(health.is_available(1));
        health.record_success(0);
        assert!(health.is_available(0));
    }

    #[test]
    fn down_is_separate_from_ejection_and_zero_max_fails_never_ejects() {
        let health = BackendHealth::new(1, 0, Duration::from_secs(60));
        for _ in 0..10 {
            health.record_failure(0);
        }
        assert!(health.is_available(0));
        health.set_down(0, true);
        assert!(!health.is_available(0) && !health.is_up(0));
        health.set_down(0, false);
        assert!(health.is_available(0));
    }
}
