//! How closely `lb bench`'s open loop holds its rate on this machine: achieved req/s (and
//! datagrams/s for `udp://`) against the target, on loopback against the test server of
//! tests/src/http_server.rs. The tests assert only what does not depend on machine speed (the
//! number of requests the schedule sends); this is where the accuracy figure lives.
use std::time::Duration;

use bytes::Bytes;
use lb::loadgen::{self, BenchConfig, HttpVersion, LoadMode, Target};
use lb_tests::http_server::{self, Behaviour};

const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = http_server::start(Behaviour::default()).await;
        println!("open loop, HTTP/1.1 keep-alive, 8 connections, 3 s after 0.2 s warm-up");
        println!(
            "{:>8} {:>12} {:>8} {:>10} {:>10}",
            "target", "achieved", "off", "p50 ms", "p99 ms"
        );
        for rate in [1000.0, 5000.0] {
            for _ in 0..ROUNDS {
                let report = loadgen::run(BenchConfig {
                    target: Target::parse(
                        &[format!("http://{}/", server.addr)],
                        "GET",
                        &[],
                        Bytes::new(),
                    )?,
                    connections: 8,
                    duration: Some(Duration::from_secs(3)),
                    requests: None,
                    warmup: Duration::from_millis(200),
                    mode: LoadMode::Open { rate },
                    version: HttpVersion::Http1,
                    keep_alive: true,
                    proxy: None,
                    insecure: false,
                    ca_file: None,
                    resumption: true,
                    timeout: Duration::from_secs(10),
                    progress: false,
                })
                .await?;
                let latency = report.latency_us.as_ref();
                println!(
                    "{rate:>8.0} {:>12.1} {:>7.2}% {:>10.2} {:>10.2}",
                    report.rps,
                    (report.rps - rate) / rate * 100.0,
                    latency.map_or(0.0, |l| l.p50 as f64 / 1e3),
                    latency.map_or(0.0, |l| l.p99 as f64 / 1e3),
                );
            }
        }

        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        println!("\nopen loop, udp, 2 sockets, 2 s");
        println!(
            "{:>8} {:>12} {:>8} {:>10}",
            "target", "achieved", "off", "replies"
        );
        for rate in [1000.0, 20000.0] {
            for _ in 0..ROUNDS {
                let report = loadgen::run_l4(loadgen::L4Config {
                    protocol: loadgen::L4Protocol::Udp,
                    addr,
                    concurrency: 2,
                    duration: Duration::from_secs(2),
                    payload: Bytes::from_static(b"ping"),
                    expect_reply: true,
                    rate: Some(rate),
                    timeout: Duration::from_secs(1),
                })
                .await?;
                println!(
                    "{rate:>8.0} {:>12.1} {:>7.2}% {:>10}",
                    report.ok_per_s,
                    (report.ok_per_s - rate) / rate * 100.0,
                    report.replies
                );
            }
        }
        Ok(())
    })
}
