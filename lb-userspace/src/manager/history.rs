//! The last minute of samples of every listener, route, backend, VIP and real, one per status
//! tick: the status page's rates, trend lines and latency percentiles are differences between
//! these samples (the counters themselves only ever grow).
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::admin::status::TrafficView;
use crate::l7::traffic::TrafficSnapshot;

/// Samples kept per series: a minute of ticks, plus the one the first rate starts from.
const KEEP: usize = 61;
/// Publishes closer together than this (a change published between ticks) add no sample.
const MIN_STEP: Duration = Duration::from_millis(900);

pub struct History<K, S> {
    series: HashMap<K, VecDeque<(Instant, S)>>,
    /// Keys sampled since the last `forget_unseen`.
    seen: Vec<K>,
}

impl<K: Hash + Eq + Clone, S: Clone> Default for History<K, S> {
    fn default() -> Self {
        Self {
            series: HashMap::new(),
            seen: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, S: Clone> History<K, S> {
    /// Adds `sample` of `key` at `now` (unless the latest is less than a tick old) and
    /// returns the series, oldest first.
    pub fn record(&mut self, key: K, now: Instant, sample: S) -> &VecDeque<(Instant, S)> {
        self.seen.push(key.clone());
        let series = self.series.entry(key).or_default();
        if series
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= MIN_STEP)
        {
            series.push_back((now, sample));
            if series.len() > KEEP {
                series.pop_front();
            }
        }
        series
    }

    /// Drops the series of keys not sampled since the last call (removed by a reload).
    pub fn forget_unseen(&mut self) {
        let seen: std::collections::HashSet<K> = self.seen.drain(..).collect();
        self.series.retain(|k, _| seen.contains(k));
    }
}

/// Whose traffic a series is.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum TrafficKey {
    Listener(String),
    Route(String),
    Backend(String, SocketAddr),
}

/// A VIP (`real` None) or one of its reals.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PacketKey {
    pub vip: String,
    pub real: Option<String>,
}

/// Packets and bytes so far.
#[derive(Clone, Copy, Debug)]
pub struct PacketTotals {
    pub packets: u64,
    pub bytes: u64,
}

/// A backend's attempts so far, and those that failed.
#[derive(Clone, Copy, Debug)]
pub struct AttemptTotals {
    pub requests: u64,
    pub errors: u64,
}

/// Attempts per second and the share that failed, over the last tick.
pub struct AttemptRates {
    pub per_second: f64,
    pub error_rate: f64,
}

/// Rates over the last tick and the trend, as the status page shows a VIP or real.
pub struct PacketRates {
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub trend: Vec<f64>,
}

/// Every series the status snapshot draws on.
#[derive(Default)]
pub struct Histories {
    traffic: History<TrafficKey, TrafficSnapshot>,
    attempts: History<TrafficKey, AttemptTotals>,
    packets: History<PacketKey, PacketTotals>,
}

impl Histories {
    /// The view of `key` given its totals now; `current` overrides the snapshot's
    /// concurrency when it is counted elsewhere (a backend's requests in flight).
    pub fn traffic_view(
        &mut self,
        key: TrafficKey,
        now: Instant,
        snapshot: TrafficSnapshot,
        current: Option<u64>,
    ) -> TrafficView {
        let series = self.traffic.record(key, now, snapshot.clone());
        let trend = rates(series, TrafficSnapshot::answers);
        let window_start = series.front().map(|(_, s)| s);
        let quantile = |q| window_start.and_then(|w| snapshot.latency_quantile_ms(w, q));
        TrafficView {
            current: current.unwrap_or(snapshot.current),
            peak: snapshot.peak.max(current.unwrap_or(0)),
            answers: snapshot.classes(),
            bytes_in: snapshot.bytes_in,
            bytes_out: snapshot.bytes_out,
            answers_per_second: trend.last().copied().unwrap_or(0.0),
            latency_p50_ms: quantile(0.5),
            latency_p99_ms: quantile(0.99),
            trend,
        }
    }

    /// A backend's attempt and error rates over the last tick (0 until there is one).
    pub fn attempt_rates(
        &mut self,
        key: TrafficKey,
        now: Instant,
        totals: AttemptTotals,
    ) -> AttemptRates {
        let series = self.attempts.record(key, now, totals);
        let per_second = rates(series, |t| t.requests).last().copied().unwrap_or(0.0);
        let failed = rates(series, |t| t.errors).last().copied().unwrap_or(0.0);
        AttemptRates {
            per_second,
            error_rate: if per_second > 0.0 {
                failed / per_second
            } else {
                0.0
            },
        }
    }

    pub fn packet_rates(
        &mut self,
        key: PacketKey,
        now: Instant,
        totals: PacketTotals,
    ) -> PacketRates {
        let series = self.packets.record(key, now, totals);
        let trend = rates(series, |t| t.packets);
        let bytes = rates(series, |t| t.bytes);
        PacketRates {
            packets_per_second: trend.last().copied().unwrap_or(0.0),
            bytes_per_second: bytes.last().copied().unwrap_or(0.0),
            trend,
        }
    }

    /// After a snapshot: series of what is no longer configured go.
    pub fn forget_unseen(&mut self) {
        self.traffic.forget_unseen();
        self.attempts.forget_unseen();
        self.packets.forget_unseen();
    }
}

/// Per-second rates of `value` between consecutive samples, oldest first.
pub fn rates<S>(series: &VecDeque<(Instant, S)>, value: impl Fn(&S) -> u64) -> Vec<f64> {
    series
        .iter()
        .zip(series.iter().skip(1))
        .map(|((t0, a), (t1, b))| {
            let seconds = t1.saturating_duration_since(*t0).as_secs_f64();
            if seconds > 0.0 {
                value(b).saturating_sub(value(a)) as f64 / seconds
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_minute_of_ticks_and_rates_between_them() {
        let mut h: History<&str, u64> = History::default();
        let start = Instant::now();
        for tick in 0..100u64 {
            let at = start + Duration::from_secs(tick);
            h.record("a", at, tick * 10);
            // A publish between ticks adds nothing.
            h.record("a", at + Duration::from_millis(100), tick * 10 + 5);
        }
        let series = h.record("a", start + Duration::from_secs(99), 990);
        assert_eq!(series.len(), KEEP);
        let r = rates(series, |v| *v);
        assert_eq!(r.len(), KEEP - 1);
        assert!(r.iter().all(|v| (*v - 10.0).abs() < 1e-9), "{r:?}");
        h.forget_unseen();
        h.forget_unseen();
        assert!(h.series.is_empty(), "unseen series go");
    }
}
