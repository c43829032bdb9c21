//! `lb bench compare A.json B.json`: two saved `--json` reports side by side (throughput,
//! outcomes, latency percentiles, B/A ratios), and with `--html` both runs in each plot.
use std::{fmt::Write as _, path::Path};

use serde::Deserialize;

/// What a comparison reads from a saved report (fields a report from an older lb lacks are
/// empty: its table cells say `-`, its plots stay empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SavedRun {
    pub requests: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub retried: u64,
    pub rps: f64,
    pub throughput_bytes_per_s: f64,
    pub latency_us: Option<SavedLatency>,
    pub percentile_curve: Vec<(f64, u64)>,
    pub per_second: Vec<u64>,
    pub meta: Vec<(String, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SavedLatency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an lb bench --json report: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl SavedRun {
    pub fn load(path: &Path) -> Result<Self, CompareError> {
        let text = std::fs::read(path).map_err(|source| CompareError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| CompareError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The comparison table: one row per measure, A, B and B/A.
pub fn table((name_a, a): (&str, &SavedRun), (name_b, b): (&str, &SavedRun)) -> String {
    let mut rows: Vec<(&str, Option<f64>, Option<f64>, &str)> = vec![
        ("requests/s", Some(a.rps), Some(b.rps), ""),
        (
            "MB/s",
            Some(a.throughput_bytes_per_s / 1e6),
            Some(b.throughput_bytes_per_s / 1e6),
            "",
        ),
        (
            "requests",
            Some(a.requests as f64),
            Some(b.requests as f64),
            "",
        ),
        ("ok (2xx)", Some(a.ok as f64), Some(b.ok as f64), ""),
        (
            "non-2xx",
            Some(a.non_2xx as f64),
            Some(b.non_2xx as f64),
            "",
        ),
        (
            "transport errors",
            Some(a.errors as f64),
            Some(b.errors as f64),
            "",
        ),
        (
            "retried",
            Some(a.retried as f64),
            Some(b.retried as f64),
            "",
        ),
    ];
    let ms = |run: &SavedRun, pick: fn(&SavedLatency) -> u64| {
        run.latency_us.as_ref().map(|l| pick(l) as f64 / 1000.0)
    };
    type Pick = fn(&SavedLatency) -> u64;
    let latencies: [(&str, Pick); 5] = [
        ("latency p50", |l| l.p50),
        ("latency p90", |l| l.p90),
        ("latency p99", |l| l.p99),
        ("latency p99.9", |l| l.p999),
        ("latency max", |l| l.max),
    ];
    for (name, pick) in latencies {
        rows.push((name, ms(a, pick), ms(b, pick), " ms"));
    }
    let width = name_a.len().max(name_b.len()).max(12);
    let mut out = format!(
        "{:18} {:>width$} {:>width$} {:>8}\n",
        "", name_a, name_b, "B/A"
    );
    let cell = |v: Option<f64>, unit: &str| match v {
        Some(v) if v.fract() == 0.0 && unit.is_empty() => format!("{v:.0}"),
        Some(v) => format!("{v:.2}{unit}"),
        None => "-".to_owned(),
    };
    for (name, va, vb, unit) in rows {
        let ratio = match (va, vb) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{name:18} {:>width$} {:>width$} {ratio:>8}",
            cell(va, unit),
            cell(vb, unit)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_b_over_a_and_missing_values_are_dashes() {
        let a: SavedRun = serde_json::from_str(
            r#"{"rps": 1000.0, "ok": 10, "latency_us": {"p50": 2000, "p99": 8000}}"#,
        )
        .expect("a");
        let b: SavedRun = serde_json::from_str(r#"{"rps": 1500.0, "ok": 15}"#).expect("b");
        let text = table(("a.json", &a), ("b.json", &b));
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("requests/s")[1..], ["1000", "1500", "1.50x"]);
        assert_eq!(line("latency p99")[2..], ["8.00", "ms", "-", "-"]);
        assert!(SavedRun::load(Path::new("/nonexistent.json")).is_err());
    }
}
