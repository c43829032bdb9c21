//! Overload guards end to end through `lb run`: the pool's circuit breaker (`max_requests`,
//! `max_connections`, `max_pending_requests`, `max_retries`), outlier detection (ejections
//! that grow with repeats, the max-ejected-percent cap), the adaptive concurrency limit, and
//! the global guard (`--max-memory`, `--max-connections`) with the admin listener answering
//! throughout. Real sockets and a real lb process; the backend here holds requests until the
//! test releases them and counts what reaches it, so every step waits on a state (requests at
//! the backend, a counter in /metrics, a field in /api/status), never on time.
use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener as StdListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb_tests::lb_run::{LbRun, http, wait_for};

/// Generous bound for waits on lb's own state (a stuck test fails instead of hanging).
const PATIENCE: Duration = Duration::from_secs(60);

/// What the backend shares with the test.
#[derive(Default)]
struct Shared {
    /// Requests that reached the backend.
    arrived: AtomicU64,
    /// `/hold` requests wait until this is set.
    released: AtomicBool,
    release: tokio::sync::Notify,
    /// Every request is answered after this many milliseconds (0: at once).
    delay_ms: AtomicU64,
    /// Every request is answered with this status (0: by path).
    fail_status: AtomicU64,
}

/// A backend on its own runtime: `/hold` waits for `release`, `/status/N` answers N, the rest
/// `ok` after `delay_ms`.
struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Shared::default());
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = shared.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req.uri().path()).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            shared,
            _runtime: runtime,
        }
    }

    fn arrived(&self) -> u64 {
        self.shared.arrived.load(Ordering::SeqCst)
    }

    /// A backend answering `status` to everything.
    fn failing(status: u16) -> Self {
        let backend = Self::start();
        backend
            .shared
            .fail_status
            .store(u64::from(status), Ordering::SeqCst);
        backend
    }

    fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
        self.shared.release.notify_waiters();
    }
}

async fn answer(state: &Shared, path: &str) -> Response<Full<Bytes>> {
    state.arrived.fetch_add(1, Ordering::SeqCst);
    if path == "/hold" {
        loop {
            let released = state.release.notified();
            if state.released.load(Ordering::SeqCst) {
                break;
            }
            released.await;
        }
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = state.fail_status.load(Ordering::SeqCst);
    let status = u16::try_from(fail)
        .ok()
        .filter(|s| *s > 0)
        .or_else(|| path.strip_prefix("/status/").and_then(|s| s.parse().ok()))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *response.status_mut() = status;
    response
}

/// A listening socket that accepts connections and never says a word (a TLS backend whose
/// handshake never completes); counts what it accepted.
fn silent_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            held.push(conn);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, accepted)
}

/// An answer: status and headers (lowercased names).
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
}

/// One request on a fresh connection (`Connection: close`).
fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: guards.test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    parse(&text)
}

fn parse(text: &str) -> Answer {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers }
}

/// A shed request's answer: 503, Retry-After and which guard.
fn assert_shed(answer: &Answer, guard: &str) {
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        answer.headers.get("x-lb-overloaded").map(String::as_str),
        Some(guard)
    );
}

/// The value of the exposition line `series` (0 when absent).
fn metric(lb: &LbRun, series: &str) -> u64 {
    let (code, body) = http("GET", lb.admin, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn shed(lb: &LbRun, pool: &str, reason: &str) -> u64 {
    metric(
        lb,
        &format!("lb_requests_shed_total{{pool=\"{pool}\",reason=\"{reason}\"}}"),
    )
}

/// Backend `addr` of pool `pool` in the status snapshot.
fn backend_status(lb: &LbRun, pool: &str, addr: SocketAddr) -> serde_json::Value {
    let status = lb.status();
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["backends"].as_array())
        .and_then(|b| b.iter().find(|b| b["address"] == addr.to_string()))
        .cloned()
        .unwrap_or_default()
}

fn lb_with(tag: &str, pool: &str, extra: &[&str]) -> (LbRun, SocketAddr) {
    let lb = LbRun::start(
        tag,
        &format!(
            "{pool}[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nlistener = \"main\"\npool = \"web\"\n"
        ),
        extra,
    );
    let addr = lb.listener("main");
    (lb, addr)
}

/// Runs `n` requests for `path` on threads; their answers come back when joined.
fn in_background(
    addr: SocketAddr,
    path: &'static str,
    n: usize,
) -> Vec<std::thread::JoinHandle<Answer>> {
    (0..n)
        .map(|_| std::thread::spawn(move || get(addr, path)))
        .collect()
}

#[test]
fn max_requests_sheds_at_once_with_retry_after_and_counts_it() {
    let backend = Backend::start();
    let log = std::env::temp_dir().join(format!("lb-guards-{}.jsonl", std::process::id()));
    let (lb, addr) = lb_with(
        "guards-requests",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 0\n\
               [pool.circuit_breaker]\nmax_requests = 2\n\
               [[pool.backend]]\naddress = \"{}\"\n",
            backend.addr
        ),
        &["--access-log", log.to_str().expect("path")],
    );
    let held = in_background(addr, "/hold", 2);
    wait_for("two requests held at the backend", PATIENCE, || {
        backend.arrived() == 2
    });
    // Two in flight: the third is refused without reaching the backend.
    assert_shed(&get(addr, "/"), "breaker");
    assert_eq!(backend.arrived(), 2);
    assert_eq!(shed(&lb, "web", "max_requests"), 1);
    backend.release();
    for h in held {
        assert_eq!(h.join().expect("client").status, 200);
    }
    assert_eq!(get(addr, "/").status, 200, "slots came back");
    assert_eq!(shed(&lb, "web", "max_requests"), 1);
    wait_for("the access log names the guard", PATIENCE, || {
        std::fs::read_to_string(&log).is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains("\"status\":503") && l.contains("\"shed\":\"max_requests\""))
        })
    });
    let _ = std::fs::remove_file(&log);
}

#[test]
fn max_connections_counts_open_upstream_connections() {
    let backend = Backend::start();
    let (lb, addr) = lb_with(
        "guards-conns",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 0\n\
               [pool.circuit_breaker]\nmax_connections = 1\n\
               [[pool.backend]]\naddress = \"{}\"\n",
            backend.addr
        ),
        &[],
    );
    let held = in_background(addr, "/hold", 1);
    wait_for(
        "a request held on the pool's only connection",
        PATIENCE,
        || backend.arrived() == 1,
    );
    // The open connection is busy: the next request would need a second one.
    assert_shed(&get(addr, "/"), "breaker");
    assert_eq!(shed(&lb, "web", "max_connections"), 1);
    backend.release();
    assert_eq!(
        held.into_iter()
            .map(|h| h.join().expect("client").status)
            .collect::<Vec<_>>(),
        [200]
    );
    // The connection is idle again: reused, within the cap.
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn max_pending_requests_counts_connects_in_progress() {
    // A TLS pool whose backend accepts TCP and never answers the ClientHello: the first
    // request stays pending (handshake in progress), the second is over the cap.
    let (silent, accepted) = silent_backend();
    let (lb, addr) = lb_with(
        "guards-pending",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 0\ntls = true\ntls_insecure = true\n\
             connect_timeout = \"1h\"\n\
               [pool.circuit_breaker]\nmax_pending_requests = 1\n\
               [[pool.backend]]\naddress = \"{silent}\"\n"
        ),
        &[],
    );
    let _pending = in_background(addr, "/", 1);
    wait_for(
        "a connection accepted, its handshake pending",
        PATIENCE,
        || accepted.load(Ordering::SeqCst) == 1,
    );
    assert_shed(&get(addr, "/"), "breaker");
    assert_eq!(shed(&lb, "web", "max_pending_requests"), 1);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no second connect tried"
    );
}

#[test]
fn max_retries_refuses_the_retry_and_the_failure_stands() {
    let a = Backend::start();
    let b = Backend::start();
    let (lb, addr) = lb_with(
        "guards-retries",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 1\nmax_fails = 0\n\
               [pool.circuit_breaker]\nmax_retries = 0\n\
               [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n",
            a.addr, b.addr
        ),
        &[],
    );
    let answer = get(addr, "/status/503");
    assert_eq!(answer.status, 503, "the backend's own 503");
    assert_eq!(
        answer.headers.get("x-lb-overloaded"),
        None,
        "not shed: not retried"
    );
    assert_eq!(a.arrived() + b.arrived(), 1, "one attempt only");
    assert_eq!(shed(&lb, "web", "max_retries"), 1);
}

#[test]
fn outlier_ejections_grow_with_repeats() {
    let good = Backend::start();
    let bad = Backend::failing(503);
    let (lb, addr) = lb_with(
        "guards-outlier",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 0\n\
               [pool.outlier_detection]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 2\n\
               base_ejection_time = \"1s\"\nmax_ejection_time = \"1h\"\nmax_ejected_percent = 50\n\
               [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n",
            good.addr, bad.addr
        ),
        &[],
    );
    // Round robin: the bad backend gets every other request and fails each one; once its
    // ejection ends it fails twice more and is ejected again, for longer.
    for (times, length_ms) in [(1, 1000), (2, 2000)] {
        wait_for("the bad backend ejected (again)", PATIENCE, || {
            let _ = get(addr, "/");
            backend_status(&lb, "web", bad.addr)["ejections"]
                .as_u64()
                .is_some_and(|e| e >= times)
        });
        let status = backend_status(&lb, "web", bad.addr);
        assert_eq!(status["ejections"].as_u64(), Some(times), "{status}");
        assert_eq!(
            status["last_ejection_ms"].as_u64(),
            Some(length_ms),
            "base x times ejected: {status}"
        );
    }
    assert_eq!(
        metric(
            &lb,
            &format!(
                "lb_outlier_ejections_total{{pool=\"web\",backend=\"{}\"}}",
                bad.addr
            )
        ),
        2
    );
    assert_eq!(
        metric(
            &lb,
            "lb_outlier_events_total{pool=\"web\",event=\"ejected_gateway_errors\"}"
        ),
        2
    );
    assert_eq!(
        backend_status(&lb, "web", good.addr)["ejections"].as_u64(),
        Some(0)
    );
}

#[test]
fn never_more_than_max_ejected_percent_of_the_pool() {
    let good = Backend::start();
    let bad: Vec<Backend> = (0..3).map(|_| Backend::failing(502)).collect();
    let mut file = "[[pool]]\nname = \"web\"\nretries = 0\n\
        [pool.outlier_detection]\nconsecutive_gateway_errors = 1\n\
        base_ejection_time = \"1h\"\nmax_ejected_percent = 50\n"
        .to_owned();
    for b in std::iter::once(&good).chain(&bad) {
        file += &format!("[[pool.backend]]\naddress = \"{}\"\n", b.addr);
    }
    let (lb, addr) = lb_with("guards-percent", &file, &[]);
    // 4 backends, 50%: two may be ejected. Every bad backend fails all it gets and one
    // failure ejects (an ejected one gets nothing more); send until each has failed and
    // one of them has failed again after the other two were ejected.
    let failed_twice = || {
        bad.iter().all(|b| b.arrived() >= 1) && bad.iter().map(Backend::arrived).sum::<u64>() >= 5
    };
    let mut sent = 0;
    while !failed_twice() {
        let _ = get(addr, "/");
        sent += 1;
        assert!(
            sent < 10_000,
            "round robin never reached every backend: {:?} good {}",
            bad.iter().map(Backend::arrived).collect::<Vec<_>>(),
            good.arrived()
        );
    }
    // The snapshot is from after those requests once it counts them all.
    let total: u64 = bad.iter().map(Backend::arrived).sum::<u64>() + good.arrived();
    wait_for("a status snapshot with every request", PATIENCE, || {
        let status = lb.status();
        let counted: u64 = status["pools"][0]["backends"]
            .as_array()
            .map_or(0, |b| b.iter().filter_map(|b| b["requests"].as_u64()).sum());
        counted >= total
    });
    let status = lb.status();
    let healths: Vec<&str> = status["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["health"].as_str())
        .collect();
    assert_eq!(
        healths.iter().filter(|h| **h == "ejected").count(),
        2,
        "{healths:?}"
    );
    assert_ne!(
        healths[0], "ejected",
        "the good backend stays in: {healths:?}"
    );
}

#[test]
fn the_adaptive_limit_sheds_when_the_backend_slows() {
    let backend = Backend::start();
    let (lb, addr) = lb_with(
        "guards-adaptive",
        &format!(
            "[[pool]]\nname = \"web\"\nretries = 0\n\
               [pool.adaptive_concurrency]\nmin_limit = 2\nmax_limit = 50\nwindow = \"20ms\"\n\
               [[pool.backend]]\naddress = \"{}\"\n",
            backend.addr
        ),
        &[],
    );
    // Fast and one at a time: the minimum RTT is the backend's own.
    for _ in 0..50 {
        assert_eq!(get(addr, "/").status, 200);
    }
    assert_eq!(shed(&lb, "web", "adaptive_concurrency"), 0);
    // The backend slows down under 8 concurrent clients: the limit falls below 8 and the
    // excess is shed, at once, as 503s saying so.
    backend.shared.delay_ms.store(50, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    answers.push(get(addr, "/"));
                }
                answers
            })
        })
        .collect();
    wait_for("requests shed by the adaptive limit", PATIENCE, || {
        shed(&lb, "web", "adaptive_concurrency") > 0
    });
    stop.store(true, Ordering::SeqCst);
    let answers: Vec<Answer> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!refused.is_empty());
    for a in refused {
        assert_shed(a, "adaptive");
    }
    wait_for("the limit gauge below the clients", PATIENCE, || {
        metric(&lb, "lb_adaptive_concurrency_limit{pool=\"web\"}") < 8
    });
}

#[test]
fn over_max_memory_requests_get_503_and_the_admin_listener_answers() {
    let backend = Backend::start();
    let (lb, addr) = lb_with(
        "guards-memory",
        &format!(
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\n",
            backend.addr
        ),
        // Any process is over one megabyte.
        &["--max-memory", "1MB"],
    );
    assert_shed(&get(addr, "/"), "memory");
    assert_eq!(backend.arrived(), 0);
    assert_eq!(shed(&lb, "", "memory"), 1);
    assert!(lb.status()["pools"].is_array(), "status keeps answering");
}

/// One keep-alive request on `tcp`: its status (the connection stays open).
fn keep_alive_get(tcp: &mut TcpStream) -> u16 {
    write!(tcp, "GET / HTTP/1.1\r\nHost: guards.test\r\n\r\n").expect("write");
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
        head += &line;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    parse(&head).status
}

#[test]
fn over_max_connections_lb_stops_accepting_and_the_admin_listener_answers() {
    let backend = Backend::start();
    let (lb, addr) = lb_with(
        "guards-global-conns",
        &format!(
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\n",
            backend.addr
        ),
        &["--max-connections", "1"],
    );
    let mut first = TcpStream::connect(addr).expect("connect");
    assert_eq!(keep_alive_get(&mut first), 200);
    // A second client: its connection waits in the kernel's queue, unanswered.
    let mut second = TcpStream::connect(addr).expect("connect");
    write!(
        second,
        "GET / HTTP/1.1\r\nHost: guards.test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let requests = "lb_http_requests_total{listener=\"main\",route=\"0\",pool=\"web\",backend=\"";
    let served = |lb: &LbRun| {
        let (code, body) = http("GET", lb.admin, "/metrics");
        assert_eq!(code, 200, "the admin listener answers");
        body.lines()
            .filter(|l| l.starts_with(requests))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    wait_for("the status counting the open connection", PATIENCE, || {
        lb.status()["l7_connections"].as_u64() == Some(1)
    });
    assert_eq!(served(&lb), 1, "the second connection is not served");
    assert_eq!(backend.arrived(), 1);
    // The first client leaves: the second is accepted and answered.
    drop(first);
    let mut text = String::new();
    second.read_to_string(&mut text).expect("read");
    assert_eq!(parse(&text).status, 200);
    assert_eq!(served(&lb), 2);
}
