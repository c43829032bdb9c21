//! An adaptive concurrency limit per pool (`[pool.adaptive_concurrency]`), after Envoy's
//! gradient controller and Netflix's concurrency-limits, with the minimum RTT taken from live
//! traffic only, so there are no periodic windows where concurrency is pinned low (Envoy's
//! minRTT re-measurement, the cause of its 503 bursts).
//!
//! Each `window` (by default 100 ms) of completed requests gives a sample RTT (the window's
//! mean time from admission to the response head) and updates the limit:
//!
//! ```text
//! gradient  = clamp((min_rtt × 1.25) / sample_rtt, 0.5, 2.0)
//! target    = gradient × limit (+ √limit when gradient ≥ 1)
//! new_limit = clamp(limit + 0.2 × (target − limit), min_limit, max_limit)
//! ```
//!
//! The limit does not grow while less than half of it is used (an idle pool keeps its limit).
//! `min_rtt` is the lowest RTT seen among requests that started while at most `min_limit` of
//! them were in flight (or, before any such request, the lowest seen at all): requests that
//! started with few others in flight did not queue behind lb's own traffic, so their RTT is the
//! backend's own. It is replaced every 100 windows by the lowest such RTT of those windows, if
//! any: a backend that became slower for good pulls the limit down to `min_limit`, where its
//! requests become uncongested samples and re-baseline `min_rtt` (no pinning, no probing).
//!
//! A request over the limit is shed at once: 503, `Retry-After`, `x-lb-overloaded: adaptive`.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// `[pool.adaptive_concurrency]`. Compared on reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveSettings {
    pub min_limit: u32,
    pub max_limit: u32,
    pub window: Duration,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        Self {
            min_limit: 3,
            max_limit: 1000,
            window: Duration::from_millis(100),
        }
    }
}

/// The limit before the first window.
const INITIAL_LIMIT: u32 = 20;
/// Share of each computed step the limit takes.
const SMOOTHING: f64 = 0.2;
/// min_rtt is re-based every this many windows.
const MIN_RTT_WINDOWS: u32 = 100;

#[derive(Debug)]
struct Window {
    start: Instant,
    sum: Duration,
    count: u32,
    /// Most requests in flight at once during the window.
    peak: u32,
    /// Lowest RTT of an uncongested request in this min_rtt epoch.
    epoch_min: Option<Duration>,
    epoch_windows: u32,
    min_rtt: Option<Duration>,
    /// An uncongested sample has been seen (min_rtt comes from those only, from then on).
    uncongested: bool,
    /// The limit as a real number (the atomic holds it rounded).
    limit: f64,
}

#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: AdaptiveSettings,
    limit: AtomicU32,
    in_flight: AtomicU32,
    window: Mutex<Window>,
}

/// One admitted request; give its RTT with `done` (dropped without: no sample).
pub struct Admitted<'a> {
    limit: &'a AdaptiveLimit,
    started: Instant,
    /// Requests in flight when this one started (itself included).
    in_flight: u32,
}

impl AdaptiveLimit {
    pub fn new(settings: AdaptiveSettings) -> Self {
        let initial = INITIAL_LIMIT.clamp(settings.min_limit, settings.max_limit);
        Self {
            settings,
            limit: AtomicU32::new(initial),
            in_flight: AtomicU32::new(0),
            window: Mutex::new(Window {
                start: Instant::now(),
                sum: Duration::ZERO,
                count: 0,
                peak: 0,
                epoch_min: None,
                epoch_windows: 0,
                min_rtt: None,
                uncongested: false,
                limit: f64::from(initial),
            }),
        }
    }

    /// The current limit (the metrics gauge).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Admits a request if fewer than the limit are in flight.
    pub fn try_admit(&self) -> Option<Admitted<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit.load(Ordering::Relaxed) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted {
            limit: self,
            started: Instant::now(),
            in_flight: before + 1,
        })
    }

    fn sample(&self, rtt: Duration, in_flight: u32, now: Instant) {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        w.sum += rtt;
        w.count += 1;
        w.peak = w.peak.max(in_flight);
        if in_flight <= self.settings.min_limit {
            w.epoch_min = Some(w.epoch_min.map_or(rtt, |m| m.min(rtt)));
            w.uncongested = true;
            w.min_rtt = Some(w.min_rtt.map_or(rtt, |m| m.min(rtt)));
        } else if !w.uncongested {
            // Before any uncongested sample, the lowest seen stands in.
            w.min_rtt = Some(w.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        if now.duration_since(w.start) < self.settings.window {
            return;
        }
        let sample = w.sum / w.count.max(1);
        let limit = next_limit(
            w.limit,
            w.min_rtt.unwrap_or(sample),
            sample,
            w.peak,
            &self.settings,
        );
        w.limit = limit;
        self.limit.store(limit.round() as u32, Ordering::Relaxed);
        w.epoch_windows += 1;
        if w.epoch_windows >= MIN_RTT_WINDOWS {
            if let Some(m) = w.epoch_min.take() {
                w.min_rtt = Some(m);
            }
            w.epoch_windows = 0;
        }
        w.start = now;
        w.sum = Duration::ZERO;
        w.count = 0;
        w.peak = self.in_flight.load(Ordering::Relaxed);
    }
}

/// The gradient step.
fn next_limit(
    limit: f64,
    min_rtt: Duration,
    sample: Duration,
    peak: u32,
    settings: &AdaptiveSettings,
) -> f64 {
    let sample = sample.as_secs_f64().max(1e-6);
    let min_rtt = min_rtt.as_secs_f64();
    let gradient = (min_rtt * 1.25 / sample).clamp(0.5, 2.0);
    // Headroom (√limit) only while latency is within the buffer: under congestion the
    // limit only shrinks, so it can reach min_limit.
    let mut next = gradient * limit;
    if gradient >= 1.0 {
        next += limit.sqrt();
    }
    // Not using half of it: no reason to grow.
    if next > limit && f64::from(peak) < limit / 2.0 {
        next = limit;
    }
    // Smoothed (Netflix's Gradient2 default): a window's samples answer requests admitted
    // a window or more earlier, so full steps overshoot both ways.
    next = limit + SMOOTHING * (next - limit);
    next.clamp(f64::from(settings.min_limit), f64::from(settings.max_limit))
}

impl Admitted<'_> {
    /// The request got its response head after `rtt` (or timed out after it).
    pub fn done(self) {
        let now = Instant::now();
        self.limit
            .sample(now.duration_since(self.started), self.in_flight, now);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_gradient_grows_when_fast_and_shrinks_when_slow() {
        let s = AdaptiveSettings::default();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // At min_rtt: gradient 1.25, plus the headroom, a fifth of the way.
        let up = next_limit(20.0, ms(10), ms(10), 20, &s);
        assert!(close(up, 20.0 + 0.2 * (5.0 + 20f64.sqrt())), "{up}");
        // Ten times slower: towards half (the floor of the gradient), no headroom.
        assert!(close(next_limit(20.0, ms(10), ms(100), 20, &s), 18.0));
        // Within the 25% buffer: grows.
        let near = next_limit(20.0, ms(10), ms(12), 20, &s);
        assert!(near > 20.0, "{near}");
        // Idle: no growth; bounded by min and max.
        assert_eq!(next_limit(20.0, ms(10), ms(10), 5, &s), 20.0);
        assert_eq!(next_limit(3.0, ms(10), ms(1000), 3, &s), 3.0);
        assert_eq!(next_limit(999.0, ms(10), ms(1), 999, &s), 1000.0);
    }

    #[test]
    fn over_the_limit_is_refused_and_slots_come_back() {
        let a = AdaptiveLimit::new(AdaptiveSettings {
            min_limit: 2,
            max_limit: 2,
            window: ms(100),
        });
        assert_eq!(a.limit(), 2);
        let one = a.try_admit().expect("1");
        let _two = a.try_admit().expect("2");
        assert!(a.try_admit().is_none());
        drop(one);
        assert!(a.try_admit().is_some());
    }

    #[test]
    fn a_slower_backend_lowers_the_limit_and_min_rtt_follows_uncongested_samples() {
        let s = AdaptiveSettings {
            min_limit: 3,
            max_limit: 100,
            window: ms(100),
        };
        let a = AdaptiveLimit::new(s);
        let mut now = Instant::now();
        // Fast, uncongested: min_rtt 10 ms.
        for _ in 0..5 {
            now += ms(101);
            a.sample(ms(10), 1, now);
        }
        // Congested windows at 100 ms: the limit falls to its minimum.
        for _ in 0..40 {
            now += ms(101);
            a.sample(ms(100), 20, now);
        }
        assert_eq!(a.limit(), 3);
        // The backend is now 100 ms for good: samples at the minimum re-base min_rtt after an
        // epoch, and the limit grows again.
        for _ in 0..(2 * MIN_RTT_WINDOWS) {
            now += ms(101);
            a.sample(ms(100), 3, now);
        }
        assert!(a.limit() > 3, "re-based: {}", a.limit());
    }
}
