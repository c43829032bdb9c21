//! L4 mode, for the XDP tier: TCP connection rate (connect, optional small exchange, close
//! with RST so the client keeps no TIME_WAIT) and UDP datagram rate (optionally counting
//! replies).
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use super::LatencySummary;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Protocol {
    Tcp,
    Udp,
}

pub struct L4Config {
    pub protocol: L4Protocol,
    pub addr: SocketAddr,
    /// Concurrent connections (TCP) or sockets (UDP).
    pub concurrency: usize,
    pub duration: Duration,
    /// Sent after connecting (TCP) or as each datagram (UDP; empty = 1 zero byte).
    pub payload: Bytes,
    /// TCP: wait for at least one byte back before closing. UDP: count replies.
    pub expect_reply: bool,
    /// Total operations per second (open loop); `None`: as fast as possible.
    pub rate: Option<f64>,
    pub timeout: Duration,
}

/// The L4 result. `--json` schema.
#[derive(Clone, Debug, Serialize)]
pub struct L4Report {
    /// "tcp_connect" or "udp".
    pub mode: &'static str,
    pub duration_s: f64,
    /// Connections attempted / datagrams sent.
    pub attempts: u64,
    /// Connections that completed (and got a reply when one was expected) / datagrams sent
    /// without error.
    pub ok: u64,
    pub errors: u64,
    /// UDP with `expect_reply`: datagrams that came back.
    pub replies: u64,
    pub ok_per_s: f64,
    /// TCP: connect (+ exchange) time. UDP: none.
    pub latency_us: Option<LatencySummary>,
}

impl std::fmt::Display for L4Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} attempts in {:.2}s, ok {} ({:.1}/s), errors {}{}",
            self.mode,
            self.attempts,
            self.duration_s,
            self.ok,
            self.ok_per_s,
            self.errors,
            if self.mode == "udp" {
                format!(", replies {}", self.replies)
            } else {
                String::new()
            }
        )?;
        if let Some(l) = &self.latency_us {
            writeln!(
                f,
                "latency  p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  max {:.2}ms",
                l.p50 as f64 / 1e3,
                l.p90 as f64 / 1e3,
                l.p99 as f64 / 1e3,
                l.max as f64 / 1e3
            )?;
        }
        Ok(())
    }
}

struct Counters {
    attempts: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    replies: AtomicU64,
    tickets: AtomicU64,
}

pub async fn run_l4(config: L4Config) -> std::io::Result<L4Report> {
    let counters = Arc::new(Counters {
        attempts: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
    });
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid"),
    ));
    let start = Instant::now();
    let end = start + config.duration;
    let config = Arc::new(config);
    let mut tasks = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let (config, counters, latency) = (config.clone(), counters.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            match config.protocol {
                L4Protocol::Tcp => tcp_task(&config, &counters, &latency, start, end).await,
                L4Protocol::Udp => udp_task(&config, &counters, start, end).await,
            }
        }));
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            return Err(e);
        }
    }
    let elapsed = start
        .elapsed()
        .min(config.duration)
        .max(Duration::from_millis(1));
    let ok = counters.ok.load(Ordering::Relaxed);
    let latency = latency.lock().map(|h| h.clone()).ok();
    Ok(L4Report {
        mode: match config.protocol {
            L4Protocol::Tcp => "tcp_connect",
            L4Protocol::Udp => "udp",
        },
        duration_s: elapsed.as_secs_f64(),
        attempts: counters.attempts.load(Ordering::Relaxed),
        ok,
        errors: counters.errors.load(Ordering::Relaxed),
        replies: counters.replies.load(Ordering::Relaxed),
        ok_per_s: ok as f64 / elapsed.as_secs_f64(),
        latency_us: latency.as_ref().and_then(LatencySummary::of),
    })
}

/// Waits for the next ticket's due time in open loop; `None` once past `end`.
async fn next_due(
    config: &L4Config,
    counters: &Counters,
    start: Instant,
    end: Instant,
) -> Option<()> {
    match config.rate {
        Some(rate) => {
            let ticket = counters.tickets.fetch_add(1, Ordering::Relaxed);
            let due = start + Duration::from_secs_f64(ticket as f64 / rate);
            if due >= end {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
            Some(())
        }
        None => (Instant::now() < end).then_some(()),
    }
}

async fn tcp_task(
    config: &L4Config,
    counters: &Counters,
    latency: &Mutex<Histogram<u64>>,
    start: Instant,
    end: Instant,
) -> std::io::Result<()> {
    while next_due(config, counters, start, end).await.is_some() {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        let exchange = async {
            let mut stream = TcpStream::connect(config.addr).await?;
            if !config.payload.is_empty() {
                stream.write_all(&config.payload).await?;
            }
            if config.expect_reply {
                let mut buf = [0u8; 1];
                if stream.read(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            // RST instead of FIN: the client keeps no TIME_WAIT, so the rate is not capped by
            // ephemeral ports.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(config.timeout, exchange).await {
            Ok(Ok(())) => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = latency.lock() {
                    let _ = h.record((began.elapsed().as_micros() as u64).max(1));
                }
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    Ok(())
}

async fn udp_task(
    config: &L4Config,
    counters: &Counters,
    start: Instant,
    end: Instant,
) -> std::io::Result<()> {
    let bind: SocketAddr = if config.addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = Arc::new(UdpSocket::bind(bind).await?);
    socket.connect(config.addr).await?;
    let receiver = config.expect_reply.then(|| {
        let socket = socket.clone();
        let replies = Arc::new(AtomicU64::new(0));
        let counted = replies.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while socket.recv(&mut buf).await.is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        (task, replies)
    });
    let payload = if config.payload.is_empty() {
        Bytes::from_static(&[0])
    } else {
        config.payload.clone()
    };
    let mut sent = 0u64;
    while next_due(config, counters, start, end).await.is_some() {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        match socket.send(&payload).await {
            Ok(_) => {
                sent += 1;
                counters.ok.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
        };
        if config.rate.is_none() {
            // Let the receiver (and the other sockets) run between sends.
            tokio::task::yield_now().await;
        }
    }
    if let Some((task, replies)) = receiver {
        // Late replies still count: until every datagram this socket sent has one, or for
        // up to `timeout` after the last send (lost ones never come).
        let waited = Instant::now();
        while replies.load(Ordering::Relaxed) < sent && waited.elapsed() < config.timeout {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        counters
            .replies
            .fetch_add(replies.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    Ok(())
}
