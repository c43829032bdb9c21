//! Route `cache` end to end: real sockets on 127.0.0.1, the L7 tier in-process (and `lb run`
//! for purge, metrics and the access log), a backend that counts the requests it gets per
//! target. What is shown: fresh answers come from the store (HIT, one backend request, Age,
//! HEAD from a GET entry); what may not be shared is never stored (private, Set-Cookie,
//! no-store, Authorization unless public, no freshness unless `default_ttl`, too large);
//! Vary and `key_headers` keep variants apart; concurrent misses make one backend request;
//! stale-while-revalidate answers at once and refreshes in the background; stale-if-error
//! covers a failing backend; stale entries are revalidated with their ETag (REVALIDATED) and
//! a client's own If-None-Match gets a 304; a large answer streams to its first client while
//! it fills; `lb ctl purge` removes entries by URL and prefix; metrics and the access log
//! name what the cache did.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, header::HeaderValue, service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::l7::{self, L7Config};
use lb_tests::{
    lb_bin,
    lb_run::{LbRun, http, wait_for},
    raw_http::{Reply, request, request_to},
};
use tokio::{net::TcpListener, sync::watch};

/// The backend's state: requests seen per target, the failing switch, the gate of `/slow`.
struct Backend {
    addr: SocketAddr,
    seen: Mutex<HashMap<String, u32>>,
    /// Requests that carried If-None-Match, per target.
    conditional: Mutex<HashMap<String, u32>>,
    /// 0: answers; 1: `/sie` answers 500; 2: `/sie` drops the connection unanswered.
    failing: AtomicU8,
    gate: watch::Sender<bool>,
}

impl Backend {
    fn seen(&self, target: &str) -> u32 {
        self.seen
            .lock()
            .expect("lock")
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    fn conditional(&self, target: &str) -> u32 {
        self.conditional
            .lock()
            .expect("lock")
            .get(target)
            .copied()
            .unwrap_or(0)
    }
}

const BIG: usize = 1 << 20;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| b'a' + (i % 26) as u8).collect()
}

/// What the backend answers: (status, headers, body) for the target's path, the `n`th time.
fn answer(
    path: &str,
    req: &Request<Incoming>,
    n: u32,
    failing: bool,
) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let cc = |v: &str| ("cache-control", v.to_owned());
    let text = |s: String| s.into_bytes();
    match path {
        "/fresh" => (
            200,
            vec![cc("max-age=300"), ("etag", "\"f\"".to_owned())],
            text(format!("{path} {n}")),
        ),
        "/slow" => (200, vec![cc("max-age=300")], text(format!("{path} {n}"))),
        "/private" => (
            200,
            vec![cc("private, max-age=300")],
            text(format!("p {n}")),
        ),
        "/cookie" => (
            200,
            vec![cc("max-age=300"), ("set-cookie", "s=1".to_owned())],
            text(format!("c {n}")),
        ),
        "/nostore" => (200, vec![cc("no-store")], text(format!("ns {n}"))),
        "/public" => (
            200,
            vec![cc("public, max-age=300")],
            text(format!("pub {n}")),
        ),
        "/vary" => {
            let lang = req
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            (
                200,
                vec![cc("max-age=300"), ("vary", "Accept-Language".to_owned())],
                text(format!("lang {lang} {n}")),
            )
        }
        "/swr" => (
            200,
            vec![cc("max-age=1, stale-while-revalidate=600")],
            text(format!("swr {n}")),
        ),
        "/sie" if failing => (500, vec![], text("down".to_owned())),
        "/sie" => (
            200,
            vec![cc("max-age=1, stale-if-error=600")],
            text(format!("sie {n}")),
        ),
        "/etag" => {
            let validated = req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == b"\"v1\"");
            let headers = vec![cc("max-age=1"), ("etag", "\"v1\"".to_owned())];
            if validated {
                (304, headers, Vec::new())
            } else {
                (200, headers, text(format!("etag {n}")))
            }
        }
        "/big" | "/tiny/big" => (200, vec![cc("max-age=300")], big_body()),
        // No freshness information at all.
        _ => (200, vec![], text(format!("plain {n}"))),
    }
}

async fn backend() -> Arc<Backend> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (gate, _) = watch::channel(false);
    let state = Arc::new(Backend {
        addr: listener.local_addr().expect("addr"),
        seen: Mutex::default(),
        conditional: Mutex::default(),
        failing: AtomicU8::new(0),
        gate,
    });
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let state = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let target = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |pq| pq.as_str())
                            .to_owned();
                        let n = {
                            let mut seen = state.seen.lock().expect("lock");
                            let n = seen.entry(target.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        if req.headers().contains_key("if-none-match") {
                            *state
                                .conditional
                                .lock()
                                .expect("lock")
                                .entry(target.clone())
                                .or_default() += 1;
                        }
                        let path = req.uri().path().to_owned();
                        if path == "/slow" {
                            let mut rx = state.gate.subscribe();
                            let _ = rx.wait_for(|open| *open).await;
                        }
                        let failing = state.failing.load(Ordering::SeqCst);
                        if failing == 2 && path == "/sie" {
                            // hyper closes the connection without an answer: lb's 502.
                            return Err(std::io::Error::other("backend down"));
                        }
                        let (status, headers, body) = answer(&path, &req, n, failing == 1);
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        for (name, value) in headers {
                            if let Ok(v) = HeaderValue::from_str(&value) {
                                response.headers_mut().append(name, v);
                            }
                        }
                        Ok::<_, std::io::Error>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    state
}

/// lb with three cached routes: `/tiny` (objects up to 1000 bytes), `/ttl` (`default_ttl`,
/// keyed by X-Tenant too), and everything else.
async fn start() -> (l7::RunningL7, SocketAddr, Arc<Backend>) {
    let backend = backend().await;
    let text = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/tiny\"\npool = \"web\"\n\
         [route.cache]\nmax_object_bytes = 1000\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/ttl\"\npool = \"web\"\n\
         [route.cache]\ndefault_ttl = \"1h\"\nkey_headers = [\"x-tenant\"]\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n\
         [route.cache]\nlock_timeout = \"1h\"\n",
        backend.addr
    );
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr, backend)
}

/// X-Cache-Status as lb wrote it (the raw client lowercases header lines).
fn status(r: &Reply) -> &'static str {
    match r.header("x-cache-status") {
        None => "none",
        Some(s) => ["HIT", "MISS", "EXPIRED", "STALE", "REVALIDATED", "BYPASS"]
            .into_iter()
            .find(|known| known.eq_ignore_ascii_case(s))
            .unwrap_or("unknown"),
    }
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Requests `path` until `done` holds for the answer (the entry's state changes with time:
/// each look is a request, never a blind sleep); panics after a minute.
async fn until(addr: SocketAddr, path: &str, mut done: impl FnMut(&Reply) -> bool) -> Reply {
    for _ in 0..3000 {
        let r = request(addr, "GET", path, "").await;
        if done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path}: the awaited answer never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_responses_are_served_from_the_cache() {
    let (_lb, addr, backend) = start().await;
    let first = request(addr, "GET", "/fresh", "").await;
    assert_eq!((first.status, status(&first)), (200, "MISS"));
    assert_eq!(body(&first), "/fresh 1");
    let second = request(addr, "GET", "/fresh", "").await;
    assert_eq!((second.status, status(&second)), (200, "HIT"));
    assert_eq!(body(&second), "/fresh 1", "the stored body");
    assert!(second.header("age").is_some(), "{:?}", second.headers);
    assert_eq!(second.header("cache-control"), Some("max-age=300"));
    assert_eq!(second.header("content-length"), Some("8"));
    assert_eq!(backend.seen("/fresh"), 1);
    // A client holding the ETag gets a 304 from the store.
    let r = request(addr, "GET", "/fresh", "If-None-Match: W/\"x\", \"f\"\r\n").await;
    assert_eq!((r.status, status(&r)), (304, "HIT"));
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"f\""));
    // HEAD is answered from the GET entry, without a body.
    let head = request(addr, "HEAD", "/fresh", "").await;
    assert_eq!((head.status, status(&head)), (200, "HIT"));
    assert!(head.body.is_empty());
    // The query, the host and the port are part of the key.
    let query = request(addr, "GET", "/fresh?x=1", "").await;
    assert_eq!(status(&query), "MISS");
    assert_eq!(backend.seen("/fresh?x=1"), 1);
    let other_host = request_to(addr, "GET", "/fresh", "other.test", "").await;
    assert_eq!(status(&other_host), "MISS");
    assert_eq!(backend.seen("/fresh"), 2);
    // A request with a body, or another method, passes by the cache.
    let post = request(addr, "POST", "/fresh", "Content-Length: 0\r\n").await;
    assert_eq!(status(&post), "BYPASS");
    assert_eq!(backend.seen("/fresh"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_may_not_be_shared_is_not_stored() {
    let (_lb, addr, backend) = start().await;
    for path in ["/private", "/cookie", "/nostore", "/plain", "/tiny/big"] {
        for _ in 0..2 {
            let r = request(addr, "GET", path, "").await;
            assert_eq!((r.status, status(&r)), (200, "MISS"), "{path}");
        }
        assert_eq!(backend.seen(path), 2, "{path}: both went to the backend");
    }
    // Authorization: stored only when the response says it may be shared.
    let auth = "Authorization: Bearer x\r\n";
    for _ in 0..2 {
        assert_eq!(status(&request(addr, "GET", "/fresh", auth).await), "MISS");
    }
    assert_eq!(backend.seen("/fresh"), 2);
    assert_eq!(status(&request(addr, "GET", "/public", auth).await), "MISS");
    assert_eq!(status(&request(addr, "GET", "/public", auth).await), "HIT");
    // `default_ttl` stores answers that state no freshness (the `/ttl` route).
    assert_eq!(
        status(&request(addr, "GET", "/ttl/plain", "").await),
        "MISS"
    );
    assert_eq!(status(&request(addr, "GET", "/ttl/plain", "").await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_and_key_headers_keep_variants_apart() {
    let (_lb, addr, backend) = start().await;
    let de = "Accept-Language: de\r\n";
    let en = "Accept-Language: en\r\n";
    assert_eq!(status(&request(addr, "GET", "/vary", de).await), "MISS");
    assert_eq!(status(&request(addr, "GET", "/vary", en).await), "MISS");
    let r = request(addr, "GET", "/vary", de).await;
    assert_eq!((status(&r), body(&r).as_str()), ("HIT", "lang de 1"));
    let r = request(addr, "GET", "/vary", en).await;
    assert_eq!((status(&r), body(&r).as_str()), ("HIT", "lang en 2"));
    assert_eq!(backend.seen("/vary"), 2);
    // `key_headers = ["x-tenant"]` on `/ttl`.
    let a = "X-Tenant: a\r\n";
    let b = "X-Tenant: b\r\n";
    assert_eq!(status(&request(addr, "GET", "/ttl/t", a).await), "MISS");
    assert_eq!(status(&request(addr, "GET", "/ttl/t", b).await), "MISS");
    assert_eq!(status(&request(addr, "GET", "/ttl/t", a).await), "HIT");
    assert_eq!(backend.seen("/ttl/t"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_backend_request() {
    let (_lb, addr, backend) = start().await;
    // The first miss reaches the backend, which holds it until the gate opens.
    let first = tokio::spawn(request(addr, "GET", "/slow", ""));
    while backend.seen("/slow") == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Seven more while it is held; then the backend answers the first.
    let others: Vec<_> = (0..7)
        .map(|_| tokio::spawn(request(addr, "GET", "/slow", "")))
        .collect();
    backend.gate.send_replace(true);
    let first = first.await.expect("join");
    assert_eq!((first.status, status(&first)), (200, "MISS"));
    for other in others {
        let r = other.await.expect("join");
        assert_eq!((r.status, status(&r)), (200, "HIT"));
        assert_eq!(body(&r), "/slow 1", "the first fetch's answer");
    }
    assert_eq!(
        backend.seen("/slow"),
        1,
        "one backend request for eight clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes() {
    let (_lb, addr, backend) = start().await;
    assert_eq!(status(&request(addr, "GET", "/swr", "").await), "MISS");
    // Once max-age=1 has passed: the stale answer, at once, and a background refresh.
    let stale = until(addr, "/swr", |r| status(r) == "STALE").await;
    assert_eq!(body(&stale), "swr 1");
    // The refresh lands; the next answers are the new body, fresh.
    let refreshed = until(addr, "/swr", |r| body(r) == "swr 2").await;
    assert_eq!(status(&refreshed), "HIT");
    assert_eq!(backend.seen("/swr"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_a_failing_backend() {
    let (_lb, addr, backend) = start().await;
    assert_eq!(status(&request(addr, "GET", "/sie", "").await), "MISS");
    backend.failing.store(1, Ordering::SeqCst);
    // Stale: lb asks the backend, gets a 500, answers with what it stored.
    let r = until(addr, "/sie", |r| status(r) == "STALE").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "sie 1"));
    let asked = backend.seen("/sie");
    assert!(asked >= 2, "the backend was asked");
    // The backend down (no answer at all: lb's own 502): still the stored answer.
    backend.failing.store(2, Ordering::SeqCst);
    let r = request(addr, "GET", "/sie", "").await;
    assert_eq!(
        (r.status, status(&r), body(&r).as_str()),
        (200, "STALE", "sie 1")
    );
    assert!(backend.seen("/sie") > asked, "the backend was tried");
    // The backend back: the next fetch replaces the entry.
    backend.failing.store(0, Ordering::SeqCst);
    let r = request(addr, "GET", "/sie", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(status(&r), "EXPIRED");
    assert!(body(&r).starts_with("sie "), "{}", body(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_revalidated_with_their_etag() {
    let (_lb, addr, backend) = start().await;
    let first = request(addr, "GET", "/etag", "").await;
    assert_eq!((status(&first), body(&first).as_str()), ("MISS", "etag 1"));
    // Stale: lb revalidates with If-None-Match, the backend says 304, the stored body goes.
    let r = until(addr, "/etag", |r| status(r) == "REVALIDATED").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "etag 1"));
    assert!(backend.conditional("/etag") >= 1);
    // Fresh again after the 304.
    let r = request(addr, "GET", "/etag", "").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "etag 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_streams_while_it_fills() {
    let (_lb, addr, backend) = start().await;
    let first = request(addr, "GET", "/big", "").await;
    assert_eq!(status(&first), "MISS");
    assert!(first.complete);
    assert_eq!(first.body, big_body());
    let second = request(addr, "GET", "/big", "").await;
    assert_eq!(status(&second), "HIT");
    assert_eq!(second.body, big_body());
    assert_eq!(backend.seen("/big"), 1);
}

#[test]
fn purge_metrics_and_access_log_through_lb_run() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(backend());
    let dir = std::env::temp_dir().join(format!("lb-cache-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let file = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\n\
         [route.cache]\ndefault_ttl = \"1h\"\n",
        backend.addr
    );
    let log_arg = log.to_string_lossy().into_owned();
    let lb = LbRun::start("cache", &file, &["--access-log", &log_arg]);
    let addr = lb.listener("l");
    for path in ["/a/1", "/a/2", "/b/1"] {
        assert_eq!(http("GET", addr, path).0, 200);
        assert_eq!(http("GET", addr, path).0, 200);
        assert_eq!(backend.seen(path), 1, "{path} cached");
    }
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(lb_bin())
            .args(["ctl", "--admin", &lb.admin.to_string(), "purge"])
            .args(args)
            .output()
            .expect("lb ctl");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let port = addr.port();
    // The key's URL: scheme, the Host the client sent, the port it connected to, the path.
    let out = ctl(&[&format!("http://t:{port}/a/1")]);
    assert!(out.contains("purged 1"), "{out}");
    let out = ctl(&["--prefix", &format!("http://t:{port}/a/")]);
    assert!(out.contains("purged 1"), "{out}");
    for path in ["/a/1", "/a/2", "/b/1"] {
        assert_eq!(http("GET", addr, path).0, 200);
    }
    assert_eq!(backend.seen("/a/1"), 2, "purged, fetched again");
    assert_eq!(backend.seen("/a/2"), 2, "purged by prefix");
    assert_eq!(backend.seen("/b/1"), 1, "kept");
    // Metrics count HITs and MISSes apart, and the store's size.
    let metrics = http("GET", lb.admin, "/metrics").1;
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line} not in {metrics}"))
    };
    assert_eq!(
        value("lb_http_cache_requests_total{route=\"site\",status=\"MISS\"}"),
        5.0
    );
    assert_eq!(
        value("lb_http_cache_requests_total{route=\"site\",status=\"HIT\"}"),
        4.0
    );
    assert!(value("lb_http_cache_bytes{route=\"site\"}") > 0.0);
    assert_eq!(value("lb_http_cache_entries{route=\"site\"}"), 3.0);
    // The access log names what the cache did.
    wait_for("the access log lines", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 9)
    });
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.matches("\"cache\":\"HIT\"").count(), 4, "{text}");
    assert_eq!(text.matches("\"cache\":\"MISS\"").count(), 5, "{text}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
