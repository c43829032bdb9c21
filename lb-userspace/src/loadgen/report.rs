//! Results: per-connection recordings merged into one report (text and JSON).
use std::{collections::BTreeMap, fmt, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::conn::TransportError;

/// What one connection task recorded (merged at the end, read live for progress lines).
pub struct Recording {
    pub latency: Histogram<u64>,
    /// Latency of the non-2xx responses alone (made on the first one), so a report can tell
    /// admitted requests from refused ones (e.g. a load shedder's 503s).
    pub latency_non_2xx: Option<Histogram<u64>>,
    pub connect: Histogram<u64>,
    pub tls: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<TransportError, u64>,
    /// Requests resent on a new connection because the server closed the kept-alive one
    /// before taking them (as every HTTP client does; not errors).
    pub retried: u64,
    pub body_bytes: u64,
    /// Responses completed in each second of the measured time.
    pub per_second: Vec<u64>,
}

/// Microsecond histograms up to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            latency: histogram(),
            latency_non_2xx: None,
            connect: histogram(),
            tls: histogram(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            retried: 0,
            body_bytes: 0,
            per_second: Vec::new(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 3_600_000_000)
}

impl Recording {
    /// A response that completed `at` into the measured time.
    pub fn response(&mut self, latency: Duration, status: u16, body_bytes: u64, at: Duration) {
        let _ = self.latency.record(micros(latency));
        if !(200..300).contains(&status) {
            let _ = self
                .latency_non_2xx
                .get_or_insert_with(histogram)
                .record(micros(latency));
        }
        *self.statuses.entry(status).or_insert(0) += 1;
        self.body_bytes += body_bytes;
        let second = at.as_secs() as usize;
        if second < 24 * 3600 {
            if self.per_second.len() <= second {
                self.per_second.resize(second + 1, 0);
            }
            self.per_second[second] += 1;
        }
    }

    pub fn error(&mut self, kind: TransportError) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn setup(&mut self, connect: Duration, tls: Option<Duration>) {
        let _ = self.connect.record(micros(connect));
        if let Some(tls) = tls {
            let _ = self.tls.record(micros(tls));
        }
    }

    pub fn merge(&mut self, other: &Recording) {
        let _ = self.latency.add(&other.latency);
        if let Some(theirs) = &other.latency_non_2xx {
            let _ = self
                .latency_non_2xx
                .get_or_insert_with(histogram)
                .add(theirs);
        }
        let _ = self.connect.add(&other.connect);
        let _ = self.tls.add(&other.tls);
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
        self.retried += other.retried;
        self.body_bytes += other.body_bytes;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            *mine += theirs;
        }
    }
}

/// Percentiles in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// The result of a run. Field names are the `--json` schema (stable; tests pin it).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// "closed" (as fast as each connection can) or "open" (fixed rate, intended-time latency).
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub duration_s: f64,
    /// Responses plus transport errors, after warm-up.
    pub requests: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Responses with any other status.
    pub non_2xx: u64,
    /// Requests that got no response (connect, TLS, timeout, reset, protocol).
    pub errors: u64,
    pub error_kinds: BTreeMap<TransportError, u64>,
    /// Requests resent on a new connection because the server closed an idle kept-alive one
    /// before taking them (a server draining, a keep-alive timeout): not errors.
    pub retried: u64,
    pub status: BTreeMap<String, u64>,
    pub rps: f64,
    pub throughput_bytes_per_s: f64,
    pub latency_us: Option<LatencySummary>,
    /// The same, of 2xx responses only and of the others only (e.g. admitted requests and
    /// a load shedder's 503s).
    pub latency_2xx_us: Option<LatencySummary>,
    pub latency_non_2xx_us: Option<LatencySummary>,
    pub connect_us: Option<LatencySummary>,
    pub tls_handshake_us: Option<LatencySummary>,
    /// (percentile, latency in µs) points for the HTML report's percentile plot (and for
    /// `lb bench compare` from a saved `--json` report).
    pub percentile_curve: Vec<(f64, u64)>,
    /// Responses per second over the measured time, for the HTML report: whole seconds only.
    pub per_second: Vec<u64>,
    /// What the HTML report says about the run (target, command, date, version), set by the
    /// command line.
    pub meta: Vec<(String, String)>,
}

impl BenchReport {
    pub fn new(
        rec: &Recording,
        mode: &'static str,
        target_rate: Option<f64>,
        connections: usize,
        elapsed: Duration,
    ) -> Self {
        let responses: u64 = rec.statuses.values().sum();
        let ok: u64 = rec
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let errors: u64 = rec.errors.values().sum();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            mode,
            target_rate,
            connections,
            duration_s: secs,
            requests: responses + errors,
            ok,
            non_2xx: responses - ok,
            errors,
            error_kinds: rec.errors.clone(),
            retried: rec.retried,
            status: rec
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            rps: responses as f64 / secs,
            throughput_bytes_per_s: rec.body_bytes as f64 / secs,
            latency_us: LatencySummary::of(&rec.latency),
            latency_2xx_us: match &rec.latency_non_2xx {
                None => LatencySummary::of(&rec.latency),
                Some(other) => {
                    let mut ok = rec.latency.clone();
                    let _ = ok.subtract(other);
                    LatencySummary::of(&ok)
                }
            },
            latency_non_2xx_us: rec.latency_non_2xx.as_ref().and_then(LatencySummary::of),
            connect_us: LatencySummary::of(&rec.connect),
            tls_handshake_us: LatencySummary::of(&rec.tls),
            percentile_curve: percentile_curve(&rec.latency),
            // A last, partial second would plot as a drop in the rate (50 ms of slack: the
            // measured time of a 2 s run can end a hair before 2 s).
            per_second: rec
                .per_second
                .iter()
                .take(((secs + 0.05).floor() as usize).max(1))
                .copied()
                .collect(),
            meta: Vec::new(),
        }
    }
}

/// Points evenly spaced in "nines" (90%, 99%, 99.9%, ...) up to the number of samples allows.
fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let max_nines = (h.len() as f64).log10().clamp(1.0, 6.0);
    let steps = 120;
    (0..=steps)
        .map(|i| {
            let nines = max_nines * f64::from(i) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, h.value_at_quantile(q))
        })
        .collect()
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target_rate {
            Some(rate) => writeln!(
                f,
                "open loop at {rate} req/s (latency from each request's intended send time)"
            )?,
            None => writeln!(
                f,
                "closed loop (each connection sends when the previous response arrives; \
                 latency hides server stalls, use --rate for that)"
            )?,
        }
        writeln!(
            f,
            "{} requests in {:.2}s over {} connections: {:.1} req/s, {:.2} MB/s",
            self.requests,
            self.duration_s,
            self.connections,
            self.rps,
            self.throughput_bytes_per_s / 1e6
        )?;
        writeln!(
            f,
            "ok (2xx) {}  non-2xx {}  transport errors {}",
            self.ok, self.non_2xx, self.errors
        )?;
        if !self.status.is_empty() {
            let s: Vec<_> = self
                .status
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "status: {}", s.join(" "))?;
        }
        if !self.error_kinds.is_empty() {
            let s: Vec<_> = self
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{k:?}={v}").to_lowercase())
                .collect();
            writeln!(f, "errors: {}", s.join(" "))?;
        }
        if self.retried > 0 {
            writeln!(
                f,
                "retried on a new connection (the server closed an idle one): {}",
                self.retried
            )?;
        }
        // Split by class only when both kinds of answer came.
        let split = self.ok > 0 && self.non_2xx > 0;
        for (name, summary) in [
            ("latency", &self.latency_us),
            ("  2xx", if split { &self.latency_2xx_us } else { &None }),
            (
                "  non-2xx",
                if split {
                    &self.latency_non_2xx_us
                } else {
                    &None
                },
            ),
            ("connect", &self.connect_us),
            ("tls", &self.tls_handshake_us),
        ] {
            if let Some(s) = summary {
                writeln!(
                    f,
                    "{name:<8} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.p99),
                    ms(s.p999),
                    ms(s.max)
                )?;
            }
        }
        Ok(())
    }
}
