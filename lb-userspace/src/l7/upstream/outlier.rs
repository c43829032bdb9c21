//! Outlier detection per pool (Envoy's `outlier_detection`), beyond nginx-style passive
//! ejection (`passive.rs`): two separate consecutive-failure thresholds, ejections that grow
//! with each repeat and decay while the backend behaves, and a cap on how much of the pool may
//! be ejected at once.
//!
//! - `consecutive_5xx`: this many 5xx answers (or local failures: connect error, timeout,
//!   broken exchange) in a row eject the backend. A non-5xx answer resets the count.
//! - `consecutive_gateway_errors`: this many gateway errors in a row (502, 503, 504, connect
//!   error, timeout, broken exchange) eject it. A 500 or any non-5xx answer resets the count.
//! - Ejection time: `base_ejection_time` × the backend's ejection count, at most
//!   `max_ejection_time` (never less than the base). The count drops by one for each
//!   `base_ejection_time` the backend spends un-ejected (computed when it is next ejected, so
//!   no timer runs), so a backend that misbehaves once in a long while is ejected briefly.
//! - `max_ejected_percent`: an ejection that would make more than this share of the pool's
//!   backends ejected at once is not made (counted as skipped); as in Envoy, one backend may
//!   always be ejected.
//!
//! The request path pays one atomic load per candidate backend (`is_ejected`); the rest runs
//! when an attempt ends.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// `[pool.outlier_detection]` (a threshold of 0: that check is off). Compared on reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 10,
        }
    }
}

/// How one attempt on a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The backend answered with this status.
    Answered(u16),
    /// No answer: connect error, timeout or broken exchange.
    Failed,
    /// A tcp/udp listener's connection (or session) to the backend was made: a success.
    Connected,
}

impl Attempt {
    /// Not a failure for passive health and the traffic totals: an answer below 500.
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Answered(..500) | Self::Connected)
    }

    fn is_5xx(self) -> bool {
        !self.is_ok()
    }

    fn is_gateway_error(self) -> bool {
        matches!(self, Self::Failed | Self::Answered(502..=504))
    }
}

/// Why a backend was ejected (metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    GatewayErrors,
}

#[derive(Debug, Default)]
struct Backend {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since the epoch; 0: never ejected.
    ejected_until_ms: AtomicU64,
    /// The ejection multiplier (decays while healthy).
    ejections: AtomicU32,
    /// Times ejected in all (never decays), and the length of the latest ejection.
    total_ejections: AtomicU64,
    last_ejection_ms: AtomicU64,
}

/// One backend's outlier state, for the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutlierStatus {
    pub ejected_for: Option<Duration>,
    /// Times ejected since the pool was built.
    pub ejections: u64,
    /// How long the latest ejection was (base × multiplier).
    pub last_ejection: Duration,
}

#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    backends: Vec<Backend>,
    epoch: Instant,
    /// Serialises ejection decisions (so the percentage cap holds under concurrency).
    ejecting: Mutex<()>,
    /// Ejections made, by reason, and ejections the percentage cap refused.
    pub ejected_5xx: AtomicU64,
    pub ejected_gateway: AtomicU64,
    pub skipped: AtomicU64,
}

impl OutlierDetector {
    pub fn new(backends: usize, settings: OutlierSettings) -> Self {
        Self {
            settings,
            backends: (0..backends).map(|_| Backend::default()).collect(),
            epoch: Instant::now(),
            ejecting: Mutex::new(()),
            ejected_5xx: AtomicU64::new(0),
            ejected_gateway: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    pub fn is_ejected(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| b.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms())
    }

    /// Feeds one attempt's outcome; returns the ejection it caused, if any.
    pub fn record(&self, i: usize, attempt: Attempt) -> Option<Ejection> {
        let b = self.backends.get(i)?;
        if !attempt.is_5xx() {
            b.consecutive_5xx.store(0, Ordering::Relaxed);
            b.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let fives = b.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let gateway = if attempt.is_gateway_error() {
            b.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            b.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let s = &self.settings;
        let reason = if s.consecutive_gateway_errors > 0 && gateway >= s.consecutive_gateway_errors
        {
            Ejection::GatewayErrors
        } else if s.consecutive_5xx > 0 && fives >= s.consecutive_5xx {
            Ejection::Consecutive5xx
        } else {
            return None;
        };
        self.eject(i, reason).then_some(reason)
    }

    /// Ejects backend `i` unless it already is or the percentage cap forbids it.
    fn eject(&self, i: usize, reason: Ejection) -> bool {
        let _one_at_a_time = self
            .ejecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.now_ms();
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        if until > now {
            return false;
        }
        let ejected = self
            .backends
            .iter()
            .filter(|o| o.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count() as u64;
        let n = self.backends.len() as u64;
        if ejected > 0 && (ejected + 1) * 100 > u64::from(self.settings.max_ejected_percent) * n {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let (multiplier, length) = next_ejection(
            b.ejections.load(Ordering::Relaxed),
            until,
            now,
            &self.settings,
        );
        b.ejections.store(multiplier, Ordering::Relaxed);
        b.ejected_until_ms.store(now + length, Ordering::Relaxed);
        b.last_ejection_ms.store(length, Ordering::Relaxed);
        b.total_ejections.fetch_add(1, Ordering::Relaxed);
        b.consecutive_5xx.store(0, Ordering::Relaxed);
        b.consecutive_gateway.store(0, Ordering::Relaxed);
        match reason {
            Ejection::Consecutive5xx => &self.ejected_5xx,
            Ejection::GatewayErrors => &self.ejected_gateway,
        }
        .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// An active health check brought backend `i` back: its ejection ends (as passive's).
    pub fn uneject(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.ejected_until_ms.store(0, Ordering::Relaxed);
            b.consecutive_5xx.store(0, Ordering::Relaxed);
            b.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }

    pub fn status(&self, i: usize) -> OutlierStatus {
        let Some(b) = self.backends.get(i) else {
            return OutlierStatus::default();
        };
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        OutlierStatus {
            ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
            ejections: b.total_ejections.load(Ordering::Relaxed),
            last_ejection: Duration::from_millis(b.last_ejection_ms.load(Ordering::Relaxed)),
        }
    }
}

/// The multiplier and length (ms) of an ejection at `now` of a backend whose multiplier was
/// `before` and whose last ejection ended at `until` (0: never ejected): the multiplier first
/// decays one step per base time spent un-ejected, then counts this ejection.
fn next_ejection(before: u32, until: u64, now: u64, settings: &OutlierSettings) -> (u32, u64) {
    let base = settings.base_ejection_time.as_millis().max(1) as u64;
    let max = (settings.max_ejection_time.as_millis() as u64).max(base);
    let mut multiplier = u64::from(before);
    if until > 0 {
        multiplier = multiplier.saturating_sub(now.saturating_sub(until) / base);
    }
    multiplier += 1;
    let length = base.saturating_mul(multiplier).min(max);
    (multiplier.min(u64::from(u32::MAX)) as u32, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(n: usize, settings: OutlierSettings) -> OutlierDetector {
        OutlierDetector::new(n, settings)
    }

    fn settings(fives: u32, gateway: u32, base_ms: u64, max_ms: u64, pct: u32) -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: fives,
            consecutive_gateway_errors: gateway,
            base_ejection_time: Duration::from_millis(base_ms),
            max_ejection_time: Duration::from_millis(max_ms),
            max_ejected_percent: pct,
        }
    }

    #[test]
    fn the_two_thresholds_count_separately() {
        let d = detector(10, settings(3, 2, 60_000, 600_000, 100));
        // 500s count as 5xx but reset the gateway count.
        assert_eq!(d.record(0, Attempt::Answered(500)), None);
        assert_eq!(d.record(0, Attempt::Answered(502)), None);
        assert_eq!(
            d.record(0, Attempt::Answered(500)),
            Some(Ejection::Consecutive5xx)
        );
        assert!(d.is_ejected(0));
        assert_eq!(d.record(1, Attempt::Failed), None);
        assert_eq!(
            d.record(1, Attempt::Answered(504)),
            Some(Ejection::GatewayErrors)
        );
        // A success resets both.
        d.record(2, Attempt::Answered(503));
        d.record(2, Attempt::Answered(200));
        assert_eq!(d.record(2, Attempt::Answered(503)), None);
        assert!(!d.is_ejected(2));
        assert_eq!(d.ejected_5xx.load(Ordering::Relaxed), 1);
        assert_eq!(d.ejected_gateway.load(Ordering::Relaxed), 1);
        // Zero turns a threshold off.
        let off = detector(1, settings(0, 0, 1000, 1000, 100));
        for _ in 0..100 {
            assert_eq!(off.record(0, Attempt::Failed), None);
        }
    }

    #[test]
    fn ejection_time_grows_with_repeats_up_to_the_max_and_decays() {
        let s = settings(1, 0, 10_000, 25_000, 100);
        // First ejection: base.
        assert_eq!(next_ejection(0, 0, 5_000, &s), (1, 10_000));
        // Again right after the last one ended: twice, then capped.
        assert_eq!(next_ejection(1, 15_000, 15_000, &s), (2, 20_000));
        assert_eq!(next_ejection(2, 35_000, 35_100, &s), (3, 25_000));
        // Two base times healthy since the last ejection ended: 3 - 2 + 1.
        assert_eq!(next_ejection(3, 60_000, 80_000, &s), (2, 20_000));
        // Long healthy: back to the base.
        assert_eq!(next_ejection(3, 60_000, 1_000_000, &s), (1, 10_000));
        // max below base: the base.
        let s = settings(1, 0, 10_000, 1_000, 100);
        assert_eq!(next_ejection(4, 1, 1, &s), (5, 10_000));
    }

    #[test]
    fn a_repeated_ejection_is_longer() {
        let d = detector(1, settings(1, 0, 10_000, 25_000, 100));
        d.record(0, Attempt::Answered(500));
        assert_eq!(d.status(0).last_ejection, Duration::from_secs(10));
        assert!(d.status(0).ejected_for.is_some());
        // End the ejection now: no healthy time, no decay.
        d.backends[0]
            .ejected_until_ms
            .store(d.now_ms(), Ordering::Relaxed);
        d.record(0, Attempt::Answered(500));
        let status = d.status(0);
        assert_eq!(status.last_ejection, Duration::from_secs(20));
        assert_eq!(status.ejections, 2);
    }

    #[test]
    fn never_more_than_the_percentage_but_always_one() {
        // 3 backends, 50%: one ejected (33%); a second would be 67%.
        let d = detector(3, settings(1, 0, 60_000, 60_000, 50));
        assert!(d.record(0, Attempt::Answered(500)).is_some());
        assert!(d.record(1, Attempt::Answered(500)).is_none());
        assert!(d.is_ejected(0) && !d.is_ejected(1));
        assert_eq!(d.skipped.load(Ordering::Relaxed), 1);
        // 0%: still one.
        let d = detector(4, settings(1, 0, 60_000, 60_000, 0));
        assert!(d.record(3, Attempt::Failed).is_some());
        assert!(d.record(2, Attempt::Failed).is_none());
        // Unejecting makes room again.
        d.uneject(3);
        assert!(d.record(2, Attempt::Failed).is_some());
    }
}
