//! `lb bench` against a server with known behaviour (tests/src/http_server.rs) on loopback.
use std::{collections::BTreeSet, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use lb::loadgen::{self, BenchConfig, HttpVersion, LoadMode, ProxyHeaderVersion, Target};
use lb_tests::http_server::{self, Behaviour};

fn config(url: &str) -> BenchConfig {
    BenchConfig {
        target: Target::parse(&[url.to_owned()], "GET", &[], Bytes::new()).expect("target"),
        connections: 8,
        duration: None,
        requests: None,
        warmup: Duration::ZERO,
        mode: LoadMode::Closed,
        version: HttpVersion::Http1,
        keep_alive: true,
        proxy: None,
        insecure: false,
        ca_file: None,
        resumption: true,
        timeout: Duration::from_secs(10),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_match_the_server_exactly() {
    let server = http_server::start(Behaviour::default()).await;
    let mut cfg = config(&format!("http://{}/a", server.addr));
    cfg.requests = Some(1000);
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!(server.seen.requests.load(Ordering::Relaxed), 1000);
    assert_eq!((report.requests, report.ok, report.errors), (1000, 1000, 0));
    assert_eq!(report.status.get("200"), Some(&1000));
    assert_eq!(report.mode, "closed");
    assert!(report.latency_us.is_some());
    // Keep-alive: one connection per client connection, not per request.
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 8);
}

/// A server that answers one request per connection, says nothing about closing, then closes
/// (as a draining server or a keep-alive timeout does): the next request on that connection
/// is never taken, so lb bench resends it once on a new connection and counts that apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_server_never_took_are_resent_on_a_new_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = taken.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut cfg = config(&format!("http://{addr}/"));
    cfg.connections = 2;
    cfg.requests = Some(200);
    let report = loadgen::run(cfg).await.expect("run");
    server.abort();
    assert_eq!((report.ok, report.errors), (200, 0), "{report:?}");
    assert_eq!(taken.load(Ordering::SeqCst), 200);
    assert!(report.retried > 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_resets_are_counted_never_as_successes() {
    let server = http_server::start(Behaviour {
        fail_every: 10,
        ..Behaviour::default()
    })
    .await;
    let mut cfg = config(&format!("http://{}/", server.addr));
    cfg.requests = Some(1000);
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!((report.ok, report.non_2xx, report.errors), (900, 100, 0));
    assert_eq!(report.status.get("500"), Some(&100));

    let server = http_server::start(Behaviour {
        reset_every_connection: 4,
        ..Behaviour::default()
    })
    .await;
    let mut cfg = config(&format!("http://{}/", server.addr));
    cfg.requests = Some(400);
    cfg.keep_alive = false;
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 400);
    assert_eq!((report.ok, report.errors), (300, 100), "{report:?}");
    assert_eq!(report.requests, 400);
    assert_eq!(report.error_kinds.values().sum::<u64>(), 100);
    assert_eq!(
        report.connect_us.as_ref().map(|_| ()),
        Some(()),
        "connects timed"
    );
}

/// A server that stalls (the whole server) for 1 s every 100 requests: the open loop's
/// percentiles show it (requests due during the stall wait, and that wait is counted); the
/// closed loop's median does not (its connections simply stop sending), and its report says it
/// is closed loop. The bounds come from the stalls themselves, not from machine speed: in the
/// open loop ticket i is due at i/200 s and request n cannot finish before floor(n/100)
/// stalls have passed, so two thirds of the tickets wait at least 0.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_shows_a_stalling_server_that_closed_loop_hides() {
    let behaviour = Behaviour {
        stall_every: 100,
        stall: Duration::from_secs(1),
        ..Behaviour::default()
    };
    let server = http_server::start(behaviour.clone()).await;
    let mut open = config(&format!("http://{}/", server.addr));
    open.mode = LoadMode::Open { rate: 200.0 };
    open.duration = Some(Duration::from_secs(3));
    let open = loadgen::run(open).await.expect("open run");

    let server = http_server::start(behaviour).await;
    let mut closed = config(&format!("http://{}/", server.addr));
    // A count, not a duration: three stalls whatever the machine's speed.
    closed.requests = Some(300);
    let closed = loadgen::run(closed).await.expect("closed run");

    let (o, c) = (
        open.latency_us.expect("open latencies"),
        closed.latency_us.expect("closed latencies"),
    );
    assert_eq!((open.mode, closed.mode), ("open", "closed"));
    assert!(
        o.p50 >= 100_000,
        "open-loop median {}us should show the stalls",
        o.p50
    );
    assert!(o.max >= 900_000, "open-loop max {}us", o.max);
    // The closed loop met the stalls too (its slowest request waited one out), yet its median
    // is below the open loop's: only the few requests in flight during a stall waited.
    assert!(c.max >= 900_000, "closed-loop max {}us", c.max);
    assert!(
        c.p50 < o.p50,
        "closed-loop median {}us hides them (open loop {}us)",
        c.p50,
        o.p50
    );
}

/// The open loop sends exactly rate x time on its own schedule (ticket i due at i / rate),
/// however late the machine runs it: 0.2 s of warm-up (200 tickets, sent, not measured) then
/// 3 s measured (3000). How closely the achieved rate follows the schedule is a property of
/// the machine: `cargo bench -p lb-benches --bench loadgen_rate` measures it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_rate_times_duration_on_its_schedule() {
    let server = http_server::start(Behaviour::default()).await;
    let mut cfg = config(&format!("http://{}/", server.addr));
    cfg.mode = LoadMode::Open { rate: 1000.0 };
    cfg.duration = Some(Duration::from_secs(3));
    cfg.warmup = Duration::from_millis(200);
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!((report.requests, report.ok, report.errors), (3000, 3000, 0));
    assert_eq!(server.seen.requests.load(Ordering::Relaxed), 3200);
    assert_eq!(report.target_rate, Some(1000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_post_with_body_and_headers() {
    let server = http_server::start(Behaviour::default()).await;
    let mut cfg = config(&format!("http://{}/submit", server.addr));
    cfg.target = Target::parse(
        &[
            format!("http://{}/one", server.addr),
            format!("http://{}/two", server.addr),
        ],
        "POST",
        &["X-Test: yes".to_owned()],
        Bytes::from_static(b"payload"),
    )
    .expect("target");
    cfg.version = HttpVersion::Http2;
    cfg.requests = Some(200);
    cfg.connections = 4;
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!(report.ok, 200);
    assert_eq!(server.seen.http2_requests.load(Ordering::Relaxed), 200);
    assert_eq!(server.seen.bodies.load(Ordering::Relaxed), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_and_without_session_resumption() {
    let server = http_server::start(Behaviour {
        tls: true,
        ..Behaviour::default()
    })
    .await;
    let ca = std::env::temp_dir().join(format!("lbt-{}-ca.pem", std::process::id()));
    std::fs::write(&ca, &server.cert_pem).expect("write ca");
    let url = format!("https://localhost:{}/", server.addr.port());
    let mut cfg = config(&url);
    cfg.ca_file = Some(ca.clone());
    cfg.keep_alive = false;
    cfg.connections = 2;
    cfg.requests = Some(40);
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!(report.ok, 40);
    assert!(report.tls_handshake_us.is_some());
    let resumed = server.seen.resumed_tls.load(Ordering::Relaxed);
    assert!(resumed >= 30, "sessions resumed: {resumed} of 40");

    let server = http_server::start(Behaviour {
        tls: true,
        ..Behaviour::default()
    })
    .await;
    std::fs::write(&ca, &server.cert_pem).expect("write ca");
    let mut cfg = config(&format!("https://localhost:{}/", server.addr.port()));
    cfg.ca_file = Some(ca.clone());
    cfg.keep_alive = false;
    cfg.resumption = false;
    cfg.requests = Some(20);
    let report = loadgen::run(cfg).await.expect("run");
    let _ = std::fs::remove_file(&ca);
    assert_eq!(report.ok, 20);
    assert_eq!(server.seen.resumed_tls.load(Ordering::Relaxed), 0);
    assert_eq!(server.seen.full_tls.load(Ordering::Relaxed), 20);

    // A certificate the client does not trust is a TLS error, not a success.
    let server = http_server::start(Behaviour {
        tls: true,
        ..Behaviour::default()
    })
    .await;
    let other = http_server::start(Behaviour {
        tls: true,
        ..Behaviour::default()
    })
    .await;
    std::fs::write(&ca, &other.cert_pem).expect("write ca");
    let mut cfg = config(&format!("https://localhost:{}/", server.addr.port()));
    cfg.ca_file = Some(ca.clone());
    cfg.requests = Some(5);
    cfg.connections = 1;
    let report = loadgen::run(cfg).await.expect("run");
    let _ = std::fs::remove_file(&ca);
    assert_eq!((report.ok, report.errors), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_name_the_client() {
    for version in [ProxyHeaderVersion::V1, ProxyHeaderVersion::V2] {
        let server = http_server::start(Behaviour {
            expect_proxy_header: true,
            ..Behaviour::default()
        })
        .await;
        let mut cfg = config(&format!("http://{}/", server.addr));
        cfg.proxy = Some(version);
        cfg.requests = Some(50);
        cfg.connections = 2;
        let report = loadgen::run(cfg).await.expect("run");
        assert_eq!(report.ok, 50, "{version:?}");
        let sources = server.seen.proxy_sources.lock().expect("lock").clone();
        // One header per connection the server accepted. (Two connection tasks run, but on a
        // busy machine the first may take all 50 tickets before the second connects: the count
        // of connections is the generator's scheduling, not what this test checks.)
        let accepted = server
            .seen
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=2).contains(&accepted),
            "{version:?}: {accepted} connections"
        );
        assert_eq!(
            sources.len() as u64,
            accepted,
            "{version:?}: one header per connection"
        );
        assert!(
            sources
                .iter()
                .all(|s| s.ip().is_loopback() && s.port() != 0)
        );
    }
}

#[test]
fn json_output_schema_is_stable() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(http_server::start(Behaviour::default()));
    let out = std::process::Command::new(lb_tests::lb_bin())
        .args(["bench", "--json", "-n", "100", "-c", "2"])
        .arg(format!("http://{}/", server.addr))
        .output()
        .expect("run lb bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    let expected: BTreeSet<String> = [
        "mode",
        "target_rate",
        "connections",
        "duration_s",
        "requests",
        "ok",
        "non_2xx",
        "errors",
        "error_kinds",
        "retried",
        "status",
        "rps",
        "throughput_bytes_per_s",
        "latency_us",
        "latency_2xx_us",
        "latency_non_2xx_us",
        "connect_us",
        "tls_handshake_us",
        "percentile_curve",
        "per_second",
        "meta",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(keys(&json), expected);
    let latency: BTreeSet<String> = ["min", "mean", "p50", "p90", "p99", "p999", "max"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(keys(&json["latency_us"]), latency);
    assert_eq!(json["latency_2xx_us"], json["latency_us"], "all were 2xx");
    assert!(json["latency_non_2xx_us"].is_null());
    assert_eq!(json["requests"], 100);
    assert_eq!(json["ok"], 100);
    assert_eq!(json["mode"], "closed");
    assert!(json["tls_handshake_us"].is_null());
}

/// A raw HTTP/1.1 server answering every request on a connection with `response`, then
/// closing if `close_after` is set. Counts requests.
async fn raw_server(
    response: &'static [u8],
    close_after: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counter.fetch_add(1, Ordering::Relaxed);
                        if tcp.write_all(response).await.is_err() {
                            return;
                        }
                        if close_after {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_chunked_close_and_until_eof() {
    let cases: [(&'static [u8], bool, u64); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
            11,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            true,
            3,
        ),
        (b"HTTP/1.0 404 Not Found\r\n\r\nno length, ends at close", true, 24),
    ];
    for (response, close_after, body_len) in cases {
        let (addr, count) = raw_server(response, close_after).await;
        let mut cfg = config(&format!("http://{addr}/"));
        cfg.requests = Some(60);
        cfg.connections = 3;
        let report = loadgen::run(cfg).await.expect("run");
        assert_eq!(count.load(Ordering::Relaxed), 60, "{response:?}");
        assert_eq!(report.errors, 0, "{report:?}");
        assert_eq!(report.requests, 60);
        let expected_bytes = 60 * body_len;
        let got = (report.throughput_bytes_per_s * report.duration_s).round() as u64;
        assert_eq!(got, expected_bytes, "{response:?}");
        if close_after {
            assert!(report.connect_us.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_post_sends_its_body() {
    let server = http_server::start(Behaviour::default()).await;
    let mut cfg = config(&format!("http://{}/", server.addr));
    cfg.target = Target::parse(
        &[format!("http://{}/form", server.addr)],
        "POST",
        &["Content-Type: text/plain".to_owned()],
        Bytes::from_static(b"field=value"),
    )
    .expect("target");
    cfg.requests = Some(100);
    let report = loadgen::run(cfg).await.expect("run");
    assert_eq!(report.ok, 100);
    assert_eq!(server.seen.bodies.load(Ordering::Relaxed), 100);
}

#[test]
fn html_report_is_self_contained_with_both_plots() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(http_server::start(Behaviour::default()));
    let html = std::env::temp_dir().join(format!("lbt-{}-report.html", std::process::id()));
    let out = std::process::Command::new(lb_tests::lb_bin())
        .args(["bench", "-d", "2s", "--rate", "300", "-c", "2", "--html"])
        .arg(&html)
        .arg(format!("http://{}/", server.addr))
        .output()
        .expect("run lb bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    let _ = std::fs::remove_file(&html);
    assert_eq!(page.matches("<svg").count(), 2);
    assert!(page.contains("Latency by percentile") && page.contains("Requests per second"));
    assert!(page.contains("open loop at 300 req/s"));
    for external in ["src=", "href=", "<script", "<link"] {
        assert!(!page.contains(external), "self-contained: found {external}");
    }
    // The run's metadata.
    for meta in [
        "<th align=\"left\">target</th>",
        "lb version",
        "<th align=\"left\">date</th>",
    ] {
        assert!(page.contains(meta), "{meta}");
    }
    assert!(page.contains(&format!("http://{}/", server.addr)));
    assert!(page.contains("responses/s") && page.contains("percentile</text>"));
    // Two seconds of load: the req/s polyline has a point per whole second (a last, partial
    // second is left out).
    let last_polyline = page.rsplit("<polyline").next().expect("polyline");
    let points = last_polyline.split("points=\"").nth(1).expect("points");
    let n = points
        .split('"')
        .next()
        .expect("end")
        .split_whitespace()
        .count();
    assert_eq!(n, 2, "per-second points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_tcp_connection_rate_counts_every_connection() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = tcp.write_all(b"x").await;
            });
        }
    });
    let report = loadgen::run_l4(loadgen::L4Config {
        protocol: loadgen::L4Protocol::Tcp,
        addr,
        concurrency: 4,
        duration: Duration::from_secs(1),
        payload: Bytes::new(),
        expect_reply: true,
        rate: None,
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("run");
    assert_eq!(report.mode, "tcp_connect");
    assert_eq!(report.errors, 0);
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.ok, report.attempts);
    // A connection is ok once the server's byte arrived, which it sends after counting the
    // accept: no wait needed.
    assert_eq!(report.ok, accepted.load(Ordering::Relaxed));
    assert!(report.latency_us.is_some());

    // Open loop: exactly rate x duration connections, on the generator's own schedule.
    let before = accepted.load(Ordering::Relaxed);
    let report = loadgen::run_l4(loadgen::L4Config {
        protocol: loadgen::L4Protocol::Tcp,
        addr,
        concurrency: 4,
        duration: Duration::from_secs(1),
        payload: Bytes::new(),
        expect_reply: true,
        rate: Some(200.0),
        timeout: Duration::from_secs(10),
    })
    .await
    .expect("run");
    assert_eq!((report.attempts, report.ok, report.errors), (200, 200, 0));
    assert_eq!(accepted.load(Ordering::Relaxed) - before, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_udp_rate_and_replies() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    let report = loadgen::run_l4(loadgen::L4Config {
        protocol: loadgen::L4Protocol::Udp,
        addr,
        concurrency: 2,
        duration: Duration::from_secs(2),
        payload: Bytes::from_static(b"ping"),
        expect_reply: true,
        rate: Some(1000.0),
        timeout: Duration::from_secs(10),
    })
    .await
    .expect("run");
    assert_eq!(report.mode, "udp");
    // Exactly rate x duration datagrams, on the generator's own schedule.
    assert_eq!((report.attempts, report.ok, report.errors), (2000, 2000, 0));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < report.ok {
        assert!(
            std::time::Instant::now() < deadline,
            "server got {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received.load(Ordering::Relaxed), report.ok);
    assert_eq!(report.replies, report.ok);
}

#[test]
fn exit_status_and_argument_habits() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(http_server::start(Behaviour::default()));
    let bench = |args: &[&str]| {
        std::process::Command::new(lb_tests::lb_bin())
            .arg("bench")
            .args(args)
            .output()
            .expect("run lb bench")
    };
    // `-d 1` is one second, as wrk and oha read it.
    let url = format!("http://{}/", server.addr);
    let out = bench(&["-d", "1", "-c", "1", "--json", &url]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let seconds = json["duration_s"].as_f64().expect("duration_s");
    // Seconds, not milliseconds or minutes.
    assert!((0.9..30.0).contains(&seconds), "{seconds}");
    // Every request failing is a failed run.
    let refused = lb_tests::lb_run::RefusedPort::new();
    let out = bench(&["-n", "5", "-c", "1", &format!("http://{}/", refused.addr)]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("every request failed"),
        "{out:?}"
    );
    // HOST:PORT without a scheme: the error names the schemes.
    let out = bench(&["-n", "1", &server.addr.to_string()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("http://") && text.contains("tcp://") && text.contains("udp://"),
        "{text}"
    );
}

/// `lb bench compare A.json B.json`: two saved runs side by side with B/A ratios, and with
/// `--html` both runs in each plot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_prints_and_plots_two_saved_runs() {
    let server = http_server::start(Behaviour::default()).await;
    let dir = std::env::temp_dir().join(format!("lb-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("http://{}/", server.addr);
    for (name, connections) in [("a.json", "1"), ("b.json", "4")] {
        let out = tokio::process::Command::new(lb_tests::lb_bin())
            .args(["bench", "--json", "-n", "200", "-c", connections, &url])
            .output()
            .await
            .expect("lb bench");
        assert!(out.status.success(), "{out:?}");
        std::fs::write(dir.join(name), &out.stdout).expect("save");
    }
    let html = dir.join("compare.html");
    let out = tokio::process::Command::new(lb_tests::lb_bin())
        .args(["bench", "compare"])
        .arg(dir.join("a.json"))
        .arg(dir.join("b.json"))
        .arg("--html")
        .arg(&html)
        .output()
        .await
        .expect("lb bench compare");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("requests ")[1..], ["200", "200", "1.00x"]);
    assert_eq!(row("ok (2xx)")[2..], ["200", "200", "1.00x"]);
    assert!(
        row("latency p99").last().is_some_and(|r| r.ends_with('x')),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).expect("html");
    assert_eq!(
        page.matches("<polyline").count(),
        4,
        "two runs in each of two plots"
    );
    assert!(page.contains("a.json") && page.contains("b.json"));
    // A file that is not a report: a clear error, exit 1.
    let out = tokio::process::Command::new(lb_tests::lb_bin())
        .args(["bench", "compare"])
        .arg(&html)
        .arg(dir.join("b.json"))
        .output()
        .await
        .expect("lb bench compare");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an lb bench --json report"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb bench ... | head`: a reader that leaves before the report is written costs the report,
/// not a panic; the run's own outcome decides the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_went_away_is_no_panic() {
    let server = http_server::start(Behaviour::default()).await;
    let mut child = std::process::Command::new(lb_tests::lb_bin())
        .args(["bench", "--json", "-n", "10"])
        .arg(format!("http://{}/a", server.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lb bench");
    // The read end closed before anything is written: every write fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
