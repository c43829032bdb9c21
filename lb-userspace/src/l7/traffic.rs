//! Traffic totals of one listener, route or backend for the status page (HAProxy's stats
//! columns): answers by status class, bytes in and out, a latency histogram, current and peak
//! concurrency. Plain relaxed atomics: the request path adds, the manager reads a
//! `TrafficSnapshot` about once a second and derives rates, trend lines and percentiles from
//! the difference between snapshots (`manager/history.rs`).
use std::collections::HashMap;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering::Relaxed},
};
use std::time::Duration;

use serde::Serialize;

/// Histogram buckets: two per power of two of microseconds (about 40% wide), from 1 us to
/// about 70 minutes; the last bucket takes everything longer.
pub const LATENCY_BUCKETS: usize = 64;

#[derive(Debug)]
pub struct TrafficStats {
    /// Answers by class: 1xx, 2xx, 3xx, 4xx, 5xx (anything else counts as 5xx).
    classes: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    current: AtomicU64,
    peak: AtomicU64,
}

impl Default for TrafficStats {
    fn default() -> Self {
        Self {
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            current: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }
}

impl TrafficStats {
    /// One answer with `status`, `latency` after the request arrived.
    pub fn answered(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_of(micros)].fetch_add(1, Relaxed);
    }

    pub fn add_bytes(&self, inbound: u64, outbound: u64) {
        if inbound > 0 {
            self.bytes_in.fetch_add(inbound, Relaxed);
        }
        if outbound > 0 {
            self.bytes_out.fetch_add(outbound, Relaxed);
        }
    }

    /// Concurrency counted elsewhere (a pool's in-flight counts): only the peak is kept here.
    pub fn observe_concurrency(&self, now: u64) {
        self.peak.fetch_max(now, Relaxed);
    }

    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Relaxed)),
            current: self.current.load(Relaxed),
            peak: self.peak.load(Relaxed),
        }
    }
}

/// One open connection of a listener, counted (current and peak) until dropped.
pub struct OpenConnection(Arc<TrafficStats>);

impl OpenConnection {
    pub fn new(stats: Arc<TrafficStats>) -> Self {
        let now = stats.current.fetch_add(1, Relaxed) + 1;
        stats.peak.fetch_max(now, Relaxed);
        Self(stats)
    }

    pub fn stats(&self) -> &Arc<TrafficStats> {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Relaxed);
    }
}

/// The bucket of a latency in microseconds: 0 and 1 us have their own, then two per power
/// of two (the bit below the leading one picks the half).
fn bucket_of(micros: u64) -> usize {
    if micros < 2 {
        return micros as usize;
    }
    let log2 = 63 - micros.leading_zeros() as usize;
    let half = ((micros >> (log2 - 1)) & 1) as usize;
    (2 * log2 + half).min(LATENCY_BUCKETS - 1)
}

/// The smallest latency (us) bucket `i` holds.
fn bucket_floor(i: usize) -> f64 {
    if i < 2 {
        return i as f64;
    }
    let (log2, half) = (i / 2, i % 2);
    let base = 2f64.powi(log2 as i32);
    base + half as f64 * base / 2.0
}

/// What a `TrafficStats` held at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSnapshot {
    pub classes: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: [u64; LATENCY_BUCKETS],
    pub current: u64,
    pub peak: u64,
}

impl Default for TrafficSnapshot {
    fn default() -> Self {
        Self {
            classes: [0; 5],
            bytes_in: 0,
            bytes_out: 0,
            latency: [0; LATENCY_BUCKETS],
            current: 0,
            peak: 0,
        }
    }
}

/// Answers by status class, as the status page shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl TrafficSnapshot {
    pub fn answers(&self) -> u64 {
        self.classes.iter().sum()
    }

    pub fn classes(&self) -> Classes {
        let [c1xx, c2xx, c3xx, c4xx, c5xx] = self.classes;
        Classes {
            c1xx,
            c2xx,
            c3xx,
            c4xx,
            c5xx,
        }
    }

    /// The `q` quantile (0..=1) in milliseconds of the answers between `earlier` and this
    /// snapshot, interpolated within its bucket; None when there were none.
    pub fn latency_quantile_ms(&self, earlier: &TrafficSnapshot, q: f64) -> Option<f64> {
        let window: Vec<u64> = self
            .latency
            .iter()
            .zip(&earlier.latency)
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        let total: u64 = window.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the answer at quantile q (1-based), then the bucket holding it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in window.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if seen + count >= rank {
                let (low, high) = (bucket_floor(i), bucket_floor(i + 1));
                // The k-th of n answers in the bucket sits at (k - 1/2) / n of its width.
                let within = ((rank - seen) as f64 - 0.5) / *count as f64;
                return Some((low + (high - low) * within) / 1000.0);
            }
            seen += count;
        }
        None
    }
}

/// The totals of every listener and route by name, kept by the observer across reloads (a
/// listener or route keeps its totals while its name stays).
#[derive(Debug, Default)]
pub struct TrafficRegistry {
    listeners: Mutex<HashMap<String, Arc<TrafficStats>>>,
    routes: Mutex<HashMap<String, Arc<TrafficStats>>>,
}

impl TrafficRegistry {
    pub fn listener(&self, name: &str) -> Arc<TrafficStats> {
        entry(&self.listeners, name)
    }

    /// Route `label` (its name, or its index when unnamed).
    pub fn route(&self, label: &str) -> Arc<TrafficStats> {
        entry(&self.routes, label)
    }

    pub fn listener_snapshot(&self, name: &str) -> Option<TrafficSnapshot> {
        snapshot_of(&self.listeners, name)
    }

    pub fn route_snapshot(&self, label: &str) -> Option<TrafficSnapshot> {
        snapshot_of(&self.routes, label)
    }
}

fn entry(map: &Mutex<HashMap<String, Arc<TrafficStats>>>, key: &str) -> Arc<TrafficStats> {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(key.to_owned()).or_default().clone()
}

fn snapshot_of(
    map: &Mutex<HashMap<String, Arc<TrafficStats>>>,
    key: &str,
) -> Option<TrafficSnapshot> {
    let map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.get(key).map(|s| s.snapshot())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        let mut last = 0;
        for micros in [0u64, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1_000, 65_535, 1 << 40] {
            let b = bucket_of(micros);
            assert!(b >= last, "{micros}");
            last = b;
            if b + 1 < LATENCY_BUCKETS {
                assert!(bucket_floor(b) <= micros as f64, "{micros} in {b}");
                assert!((micros as f64) < bucket_floor(b + 1), "{micros} in {b}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_window_only() {
        let stats = TrafficStats::default();
        for _ in 0..99 {
            stats.answered(200, Duration::from_millis(1));
        }
        stats.answered(503, Duration::from_millis(100));
        let first = stats.snapshot();
        let p50 = first
            .latency_quantile_ms(&TrafficSnapshot::default(), 0.5)
            .unwrap_or_default();
        assert!((0.8..=1.3).contains(&p50), "{p50}");
        let p100 = first
            .latency_quantile_ms(&TrafficSnapshot::default(), 1.0)
            .unwrap_or_default();
        assert!((80.0..=130.0).contains(&p100), "{p100}");
        assert_eq!(first.classes().c2xx, 99);
        assert_eq!(first.classes().c5xx, 1);
        // A later window sees only what came after.
        for _ in 0..10 {
            stats.answered(404, Duration::from_millis(20));
        }
        let second = stats.snapshot();
        let p99 = second.latency_quantile_ms(&first, 0.99).unwrap_or_default();
        assert!((16.0..=25.0).contains(&p99), "{p99}");
        assert_eq!(second.latency_quantile_ms(&second, 0.5), None);
    }

    #[test]
    fn open_counts_current_and_peak() {
        let stats = Arc::new(TrafficStats::default());
        let a = OpenConnection::new(stats.clone());
        let b = OpenConnection::new(stats.clone());
        drop(a);
        let s = stats.snapshot();
        assert_eq!((s.current, s.peak), (1, 2));
        drop(b);
        assert_eq!(stats.snapshot().current, 0);
    }
}
