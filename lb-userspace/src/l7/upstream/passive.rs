//! Per-backend health: passive outlier ejection (nginx's `max_fails` / `fail_timeout`) and a
//! down flag for active health checks.
//!
//! Passive: `max_fails` consecutive failures (connect error, timeout, broken exchange or a 5xx
//! answer) eject a backend for `fail_timeout`. After that it gets requests again; one more
//! failure ejects it again at once, a success resets its count. `max_fails = 0` turns this off.
//! Active: `set_down` (the manager's health checks) takes a backend out until set up again.
//! Slow start: `set_ramp` (the manager, when a check brings a backend back) makes its weight
//! factor climb from 10% to 100% over the pool's `slow_start`; selection reads
//! `weight_factor`.
//! Outlier detection (`outlier.rs`), when the pool has it, lives here too: an ejected
//! backend is unavailable either way, and an active check bringing it back ends both.
use super::outlier::{Attempt, OutlierDetector, OutlierStatus};
use std::{
    sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// `ramp_start_ms` when the backend is not ramping.
const NO_RAMP: i64 = i64::MIN;

#[derive(Debug)]
struct BackendState {
    down: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `BackendHealth::epoch`; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Slow start: when the ramp began (ms from the epoch, negative when before it; `NO_RAMP`:
    /// none) and how long it lasts.
    ramp_start_ms: AtomicI64,
    ramp_ms: AtomicU64,
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            down: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ramp_start_ms: AtomicI64::new(NO_RAMP),
            ramp_ms: AtomicU64::new(0),
        }
    }
}

/// What one backend's health looks like now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// Set down by an active check.
    pub down: bool,
    /// Passively ejected for this much longer.
    pub ejected_for: Option<Duration>,
    pub consecutive_failures: u32,
    /// Outlier detection's view (default when the pool has none).
    pub outlier: OutlierStatus,
}

/// The health of a pool's backends (index as in the pool's backend list).
#[derive(Debug)]
pub struct BackendHealth {
    backends: Vec<BackendState>,
    max_fails: u32,
    fail_timeout: Duration,
    epoch: Instant,
    outlier: Option<OutlierDetector>,
}

impl BackendHealth {
    pub fn new(backends: usize, max_fails: u32, fail_timeout: Duration) -> Self {
        Self {
            backends: (0..backends).map(|_| BackendState::default()).collect(),
            max_fails,
            fail_timeout,
            epoch: Instant::now(),
            outlier: None,
        }
    }

    /// With outlier detection.
    pub fn with_outlier(mut self, outlier: Option<OutlierDetector>) -> Self {
        self.outlier = outlier;
        self
    }

    pub fn outlier(&self) -> Option<&OutlierDetector> {
        self.outlier.as_ref()
    }

    /// Feeds an attempt's outcome to outlier detection (pools with it).
    pub fn record_outlier(&self, i: usize, attempt: Attempt) {
        if let Some(o) = &self.outlier {
            o.record(i, attempt);
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
                && !self.outlier.as_ref().is_some_and(|o| o.is_ejected(i))
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

    /// Active health checks: take backend `i` out (`true`) or put it back. Putting it back
    /// also ends a passive ejection: the active check just proved the backend answers, and the
    /// failures that ejected it were from before it went down (Envoy's
    /// `successful_active_health_check_uneject_host`, on by default there too). Without this a
    /// restarted backend would wait out `fail_timeout` after passing its checks.
    pub fn set_down(&self, i: usize, down: bool) {
        if let Some(b) = self.backends.get(i) {
            let was_down = b.down.swap(down, Ordering::Relaxed);
            if was_down && !down {
                b.consecutive_failures.store(0, Ordering::Relaxed);
                b.ejected_until_ms.store(0, Ordering::Relaxed);
                if let Some(o) = &self.outlier {
                    o.uneject(i);
                }
            }
        }
    }

    /// Slow start: backend `i` came back up at `since` and ramps over `length` (zero: no ramp).
    pub fn set_ramp(&self, i: usize, since: Instant, length: Duration) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        // A backend may have come up before this pool was built (a reload rebuilt it).
        let start = match since.checked_duration_since(self.epoch) {
            Some(after) => after.as_millis() as i64,
            None => -(self.epoch.saturating_duration_since(since).as_millis() as i64),
        };
        let length = length.as_millis() as u64;
        b.ramp_ms.store(length, Ordering::Relaxed);
        b.ramp_start_ms
            .store(if length == 0 { NO_RAMP } else { start }, Ordering::Relaxed);
    }

    /// Backend `i`'s share of its weight now, in permille (`selection::FULL_WEIGHT` = all):
    /// 10% when its ramp begins, linearly up to all of it when the ramp ends.
    pub fn weight_factor(&self, i: usize) -> u32 {
        const FULL: u32 = crate::l7::selection::FULL_WEIGHT;
        let Some(b) = self.backends.get(i) else {
            return FULL;
        };
        let start = b.ramp_start_ms.load(Ordering::Relaxed);
        if start == NO_RAMP {
            return FULL;
        }
        let length = b.ramp_ms.load(Ordering::Relaxed).max(1);
        let elapsed = (self.epoch.elapsed().as_millis() as i64)
            .saturating_sub(start)
            .max(0) as u64;
        if elapsed >= length {
            return FULL;
        }
        // The same line as `health::HealthState::weight_factor`: 0.1 + 0.9 * elapsed / length.
        (u64::from(FULL) / 10 + u64::from(FULL) * 9 / 10 * elapsed / length) as u32
    }

    pub fn status(&self, i: usize) -> Option<BackendStatus> {
        let b = self.backends.get(i)?;
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        let outlier = self
            .outlier
            .as_ref()
            .map(|o| o.status(i))
            .unwrap_or_default();
        let passive = (until > now).then(|| Duration::from_millis(until - now));
        Some(BackendStatus {
            down: b.down.load(Ordering::Relaxed),
            ejected_for: passive.max(outlier.ejected_for),
            consecutive_failures: b.consecutive_failures.load(Ordering::Relaxed),
            outlier,
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
    fn an_active_check_bringing_a_backend_back_ends_its_ejection() {
        let health = BackendHealth::new(1, 2, Duration::from_secs(60));
        health.record_failure(0);
        health.record_failure(0);
        health.set_down(0, true);
        assert!(!health.is_available(0));
        // Still down: a repeated "down" changes nothing.
        health.set_down(0, true);
        assert!(health.status(0).is_some_and(|s| s.ejected_for.is_some()));
        health.set_down(0, false);
        assert!(
            health.is_available(0),
            "back up, not waiting out fail_timeout"
        );
        assert_eq!(health.status(0).map(|s| s.consecutive_failures), Some(0));
        // An ejection of a backend that was never down is the passive check's own business.
        health.record_failure(0);
        health.record_failure(0);
        health.set_down(0, false);
        assert!(!health.is_available(0));
    }

    #[test]
    fn slow_start_ramps_the_weight_factor() {
        let health = BackendHealth::new(2, 0, Duration::from_secs(60));
        assert_eq!(health.weight_factor(0), 1000);
        let now = Instant::now();
        health.set_ramp(0, now, Duration::from_secs(100));
        let f = health.weight_factor(0);
        assert!((100..=110).contains(&f), "10% at the start, got {f}");
        health.set_ramp(0, now - Duration::from_secs(50), Duration::from_secs(100));
        let f = health.weight_factor(0);
        assert!((540..=560).contains(&f), "55% half way, got {f}");
        health.set_ramp(0, now - Duration::from_secs(200), Duration::from_secs(100));
        assert_eq!(health.weight_factor(0), 1000, "ramp over");
        health.set_ramp(0, now, Duration::ZERO);
        assert_eq!(health.weight_factor(0), 1000, "no slow start");
        assert_eq!(health.weight_factor(1), 1000);
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
