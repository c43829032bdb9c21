//! The load: connection tasks taking numbered tickets.
//!
//! Closed loop: a connection sends its next request when the previous response has arrived;
//! latency runs from the send. Open loop (`--rate R`): ticket `i` is due at `start + i / R`,
//! whichever connection is free takes it, and latency runs from the due time. A server that
//! stalls makes tickets wait, and that waiting is in the percentiles (the wrk2 method): there
//! is no coordinated omission.
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    HttpVersion, ProxyHeaderVersion, Target, TargetError,
    conn::{Conn, Connector, TlsOptions, TransportError},
    report::{BenchReport, Recording},
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadMode {
    Closed,
    Open { rate: f64 },
}

pub struct BenchConfig {
    pub target: Target,
    pub connections: usize,
    /// Measured time (after warm-up). With neither this nor `requests`, 10 s.
    pub duration: Option<Duration>,
    /// Stop after this many requests (warm-up requests included).
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub mode: LoadMode,
    pub version: HttpVersion,
    /// false: a new connection for every request.
    pub keep_alive: bool,
    pub proxy: Option<ProxyHeaderVersion>,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub resumption: bool,
    /// Per connect, handshake and request.
    pub timeout: Duration,
    /// Per-second progress lines on stderr.
    pub progress: bool,
}

struct Shared {
    tickets: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    start: Instant,
    warmup_end: Instant,
    end: Option<Instant>,
    limit: Option<u64>,
    rate: Option<f64>,
}

impl Shared {
    /// The next ticket and its due time, or `None` when the run is over.
    fn next(&self) -> Option<(u64, Instant)> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|limit| ticket >= limit) {
            return None;
        }
        let due = match self.rate {
            Some(rate) => self.start + Duration::from_secs_f64(ticket as f64 / rate),
            None => Instant::now(),
        };
        if self.end.is_some_and(|end| due >= end) {
            return None;
        }
        Some((ticket, due))
    }
}

pub async fn run(config: BenchConfig) -> Result<BenchReport, TargetError> {
    let connector = Arc::new(Connector::new(
        Arc::new(config.target),
        config.version,
        config.proxy,
        &TlsOptions {
            insecure: config.insecure,
            ca_file: config.ca_file.as_deref(),
            resumption: config.resumption,
        },
        config.timeout,
    )?);
    let start = Instant::now();
    let warmup_end = start + config.warmup;
    let duration = match (config.duration, config.requests) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let shared = Arc::new(Shared {
        tickets: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        start,
        warmup_end,
        end: duration.map(|d| warmup_end + d),
        limit: config.requests,
        rate: match config.mode {
            LoadMode::Open { rate } => Some(rate),
            LoadMode::Closed => None,
        },
    });
    let connections = config.connections.max(1);
    let recordings: Vec<Arc<Mutex<Recording>>> = (0..connections)
        .map(|_| Arc::new(Mutex::new(Recording::default())))
        .collect();
    let tasks: Vec<_> = recordings
        .iter()
        .map(|rec| {
            tokio::spawn(connection_task(
                connector.clone(),
                shared.clone(),
                rec.clone(),
                config.keep_alive,
                config.timeout,
            ))
        })
        .collect();
    let progress = config
        .progress
        .then(|| tokio::spawn(progress_lines(shared.clone(), recordings.clone())));
    for task in tasks {
        let _ = task.await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let finished = Instant::now();
    let mut merged = Recording::default();
    for rec in &recordings {
        if let Ok(rec) = rec.lock() {
            merged.merge(&rec);
        }
    }
    let measured_from = warmup_end.min(finished);
    let elapsed = match shared.end {
        Some(end) => end.min(finished) - measured_from,
        None => finished - measured_from,
    };
    let (mode, rate) = match config.mode {
        LoadMode::Closed => ("closed", None),
        LoadMode::Open { rate } => ("open", Some(rate)),
    };
    Ok(BenchReport::new(&merged, mode, rate, connections, elapsed))
}

async fn connection_task(
    connector: Arc<Connector>,
    shared: Arc<Shared>,
    recording: Arc<Mutex<Recording>>,
    keep_alive: bool,
    timeout: Duration,
) {
    let mut conn: Option<Conn> = None;
    while let Some((ticket, due)) = shared.next() {
        if shared.rate.is_some() {
            wait_until(due).await;
        }
        let measured = due >= shared.warmup_end;
        let sent_at = Instant::now();
        if !conn.as_ref().is_some_and(Conn::is_open) {
            match connector.connect().await {
                Ok((c, times)) => {
                    record(&recording, measured, |rec| {
                        rec.setup(times.connect, times.tls)
                    });
                    conn = Some(c);
                }
                Err(kind) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    record(&recording, measured, |rec| rec.error(kind));
                    // Do not spin on a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut result = c.send(&connector, ticket, timeout).await;
        if result.as_ref().err() == Some(&TransportError::IdleClosed) {
            // The server closed the idle connection without taking the request: once more on
            // a new connection, as HTTP clients do.
            record(&recording, measured, |rec| rec.retried += 1);
            result = match connector.connect().await {
                Ok((mut c, times)) => {
                    record(&recording, measured, |rec| {
                        rec.setup(times.connect, times.tls)
                    });
                    let retried = c.send(&connector, ticket, timeout).await;
                    conn = Some(c);
                    retried
                }
                Err(kind) => Err(kind),
            };
        }
        let finished = Instant::now();
        // Open loop: from the due time. Closed loop: from the send (a new connection per
        // request includes its connect, as the client experiences it).
        let started = if shared.rate.is_some() { due } else { sent_at };
        match result {
            Ok(response) => {
                shared.done.fetch_add(1, Ordering::Relaxed);
                let at = finished.saturating_duration_since(shared.warmup_end);
                record(&recording, measured, |rec| {
                    rec.response(finished - started, response.status, response.body_bytes, at)
                });
            }
            Err(kind) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                record(&recording, measured, |rec| rec.error(kind));
                conn = None;
            }
        }
        if !keep_alive {
            conn = None;
        }
    }
}

/// Sleeps until `due`. Tokio's timer has millisecond granularity, which would add up to 1 ms
/// to every open-loop latency; the last millisecond is spent yielding instead.
async fn wait_until(due: Instant) {
    let slack = Duration::from_millis(1);
    if let Some(early) = due.checked_sub(slack).filter(|e| Instant::now() < *e) {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Applies `f` to the connection's recording, unless the request fell in the warm-up.
fn record(recording: &Mutex<Recording>, measured: bool, f: impl FnOnce(&mut Recording)) {
    if !measured {
        return;
    }
    if let Ok(mut rec) = recording.lock() {
        f(&mut rec);
    }
}

async fn progress_lines(shared: Arc<Shared>, recordings: Vec<Arc<Mutex<Recording>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_done, mut last_errors) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let mut merged = Recording::default();
        for rec in &recordings {
            if let Ok(rec) = rec.lock() {
                merged.merge(&rec);
            }
        }
        let p99 = if !merged.latency.is_empty() {
            format!(
                "{:.2}ms",
                merged.latency.value_at_quantile(0.99) as f64 / 1000.0
            )
        } else {
            "-".to_owned()
        };
        let warm = if Instant::now() < shared.warmup_end {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "[{:>4.0}s] {:>9} req/s  errors {:>6}  p99 so far {p99}{warm}",
            shared.start.elapsed().as_secs_f64(),
            done - last_done,
            errors - last_errors
        );
        (last_done, last_errors) = (done, errors);
    }
}
