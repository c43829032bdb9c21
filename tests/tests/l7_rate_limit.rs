//! Per-route rate limits (`[[route.rate_limit]]`) end to end through the in-process L7 tier:
//! exact allow/deny sequences with the 429's Retry-After and the draft-11 RateLimit fields,
//! one budget per key, requests without the key not counted, dry run, the least recently
//! used key evicted at `max_keys`, a request one limit rejects using no budget of another,
//! counters kept by a reload that leaves the limit unchanged, a verified JWT claim as the
//! key (authentication runs first), and the metrics of all of it.
//! Rates are 1/h: no request here can earn budget back while the test runs, so every
//! outcome is exact whatever the machine's speed. Also `max_connections_per_client` on http
//! (clients named by PROXY headers) and tcp listeners.
use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::{
    admin::metrics::Metrics,
    l7::{self, L7Config, Observer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A backend answering `ok` to everything.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// What a test looks at in an answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    policy: Vec<String>,
    ratelimit: Vec<String>,
}

/// One HTTP/1.1 request on a fresh connection.
async fn get(proxy: SocketAddr, path: &str, extra: &str) -> Answer {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: rl.test\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let head = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(h, _)| h);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut answer = Answer {
        status,
        retry_after: None,
        policy: Vec::new(),
        ratelimit: Vec::new(),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match name.to_ascii_lowercase().as_str() {
            "retry-after" => answer.retry_after = Some(value),
            "ratelimit-policy" => answer.policy.push(value),
            "ratelimit" => answer.ratelimit.push(value),
            _ => {}
        }
    }
    answer
}

fn allowed(policy: &str, ratelimit: &str) -> Answer {
    Answer {
        status: 200,
        retry_after: None,
        policy: vec![policy.to_owned()],
        ratelimit: vec![ratelimit.to_owned()],
    }
}

fn limited(retry_after: &str, policy: &str, ratelimit: &str) -> Answer {
    Answer {
        status: 429,
        retry_after: Some(retry_after.to_owned()),
        policy: vec![policy.to_owned()],
        ratelimit: vec![ratelimit.to_owned()],
    }
}

fn plain(status: u16) -> Answer {
    Answer {
        status,
        retry_after: None,
        policy: Vec::new(),
        ratelimit: Vec::new(),
    }
}

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("rl.toml")).expect("config")
}

/// The L7 tier on `text`, counting into fresh metrics.
async fn start(text: &str) -> (l7::RunningL7, SocketAddr, Metrics) {
    let metrics = Metrics::new(Arc::default());
    let observer = Observer::new(Some(metrics.l7.clone()), None);
    let running = l7::serve_observed(config(text), observer)
        .await
        .expect("serve");
    let addr = running.listeners[0].1;
    (running, addr, metrics)
}

/// The value of the exposition line starting with `series` (0 when absent).
fn metric(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const LISTENER: &str = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";

fn pool(backend: SocketAddr) -> String {
    format!("[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_429_with_retry_after_and_ratelimit_fields() {
    let web = backend().await;
    let (_lb, addr, metrics) = start(&format!(
        "{}{LISTENER}\
         [[route]]\nname = \"api\"\nlistener = \"l\"\npool = \"web\"\n\
           [[route.rate_limit]]\nname = \"per-ip\"\nkey = \"client_ip\"\nrate = \"1/h\"\nburst = 3\n",
        pool(web)
    ))
    .await;
    let policy = "\"per-ip\";q=1;w=3600";
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(get(addr, "/", "").await);
    }
    assert_eq!(
        seen,
        [
            allowed(policy, "\"per-ip\";r=2;t=3600"),
            allowed(policy, "\"per-ip\";r=1;t=7200"),
            allowed(policy, "\"per-ip\";r=0;t=10800"),
            // The next request is allowed one emission interval after the third's TAT
            // minus the burst tolerance: one hour; rejections move nothing.
            limited("3600", policy, "\"per-ip\";r=0;t=10800"),
            limited("3600", policy, "\"per-ip\";r=0;t=10800"),
        ]
    );
    let labels = "{route=\"api\",limit=\"per-ip\",key=\"client_ip\"}";
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limited_total{labels}")),
        2
    );
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limit_dry_run_total{labels}")),
        0
    );
    assert_eq!(
        metric(
            &metrics,
            "lb_http_requests_total{listener=\"l\",route=\"api\",pool=\"\",backend=\"\",status=\"429\"}"
        ),
        2,
        "a 429 is answered before a pool is chosen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_budget_and_a_request_without_the_key_is_not_counted() {
    let web = backend().await;
    let (_lb, addr, metrics) = start(&format!(
        "{}{LISTENER}\
         [[route]]\nname = \"users\"\nlistener = \"l\"\npool = \"web\"\n\
           [[route.rate_limit]]\nkey = \"header:x-user\"\nrate = \"1/h\"\n\
         [[route]]\nname = \"claims\"\nlistener = \"l\"\npath = \"/claims\"\npool = \"web\"\n\
           [[route.rate_limit]]\nkey = \"claim:sub\"\nrate = \"1/h\"\n\
           [[route.rate_limit]]\nkey = \"consumer\"\nrate = \"1/h\"\n",
        pool(web)
    ))
    .await;
    let policy = "\"0\";q=1;w=3600";
    let user = |name: &str| format!("X-User: {name}\r\n");
    assert_eq!(
        get(addr, "/", &user("a")).await,
        allowed(policy, "\"0\";r=0;t=3600")
    );
    assert_eq!(
        get(addr, "/", &user("a")).await,
        limited("3600", policy, "\"0\";r=0;t=3600")
    );
    assert_eq!(
        get(addr, "/", &user("b")).await,
        allowed(policy, "\"0\";r=0;t=3600")
    );
    assert_eq!(get(addr, "/", &user("b")).await.status, 429);
    // No key (no header, or an empty one): not limited, no fields.
    for extra in ["", "", "X-User: \r\n"] {
        assert_eq!(get(addr, "/", extra).await, plain(200));
    }
    // Nothing set an identity (no authentication policy on the route): claim and consumer
    // keys are absent, so those limits never count.
    for _ in 0..3 {
        assert_eq!(get(addr, "/claims", "").await, plain(200));
    }
    let labels = "{route=\"users\",limit=\"0\",key=\"header\"}";
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limited_total{labels}")),
        2
    );
    let claim = "lb_rate_limited_total{route=\"claims\",limit=\"0\",key=\"claim\"}";
    assert!(metrics.render().contains(claim), "pre-resolved at zero");
    assert_eq!(metric(&metrics, claim), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lets_everything_through_and_counts_would_be_rejections() {
    let web = backend().await;
    let (_lb, addr, metrics) = start(&format!(
        "{}{LISTENER}\
         [[route]]\nname = \"dry\"\nlistener = \"l\"\npool = \"web\"\n\
           [[route.rate_limit]]\nname = \"trial\"\nkey = \"route\"\nrate = \"1/h\"\nburst = 2\ndry_run = true\n",
        pool(web)
    ))
    .await;
    for _ in 0..5 {
        // Dry-run limits add no fields: clients are not told about a limit not enforced.
        assert_eq!(get(addr, "/", "").await, plain(200));
    }
    let labels = "{route=\"dry\",limit=\"trial\",key=\"route\"}";
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limit_dry_run_total{labels}")),
        3
    );
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limited_total{labels}")),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_key_is_evicted_at_max_keys() {
    let web = backend().await;
    let (_lb, addr, metrics) = start(&format!(
        "{}{LISTENER}\
         [[route]]\nname = \"lru\"\nlistener = \"l\"\npool = \"web\"\n\
           [[route.rate_limit]]\nkey = \"header:x-user\"\nrate = \"1/h\"\nmax_keys = 2\n",
        pool(web)
    ))
    .await;
    let status = |name: &'static str| async move {
        get(addr, "/", &format!("X-User: {name}\r\n")).await.status
    };
    assert_eq!((status("a").await, status("b").await), (200, 200));
    assert_eq!(status("a").await, 429, "a is held; now the most recent");
    assert_eq!(status("c").await, 200, "evicts b, the least recently used");
    assert_eq!(status("a").await, 429, "a is still held");
    assert_eq!(
        status("b").await,
        200,
        "b was forgotten: a full budget; evicts c"
    );
    assert_eq!(status("c").await, 200, "c was forgotten; evicts a");
    let labels = "{route=\"lru\",limit=\"0\",key=\"header\"}";
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limit_evictions_total{labels}")),
        3
    );
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limited_total{labels}")),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_one_limit_rejects_uses_no_budget_of_the_others() {
    let web = backend().await;
    let (_lb, addr, _metrics) = start(&format!(
        "{}{LISTENER}\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n\
           [[route.rate_limit]]\nname = \"user\"\nkey = \"header:x-user\"\nrate = \"1/h\"\n\
           [[route.rate_limit]]\nname = \"all\"\nkey = \"route\"\nrate = \"1/h\"\nburst = 2\n",
        pool(web)
    ))
    .await;
    let user = |name: &str| format!("X-User: {name}\r\n");
    let both = |status, retry: Option<&str>, user_rl: &str, all_rl: &str| Answer {
        status,
        retry_after: retry.map(str::to_owned),
        policy: vec!["\"user\";q=1;w=3600".into(), "\"all\";q=1;w=3600".into()],
        ratelimit: vec![user_rl.into(), all_rl.into()],
    };
    assert_eq!(
        get(addr, "/", &user("a")).await,
        both(200, None, "\"user\";r=0;t=3600", "\"all\";r=1;t=3600")
    );
    // "user" rejects; "all" counted it, then gave it back: still one left.
    assert_eq!(
        get(addr, "/", &user("a")).await,
        both(
            429,
            Some("3600"),
            "\"user\";r=0;t=3600",
            "\"all\";r=1;t=3600"
        )
    );
    assert_eq!(
        get(addr, "/", &user("b")).await,
        both(200, None, "\"user\";r=0;t=3600", "\"all\";r=0;t=7200")
    );
    // Now "all" rejects c, and c's own budget is given back: c is still fresh.
    let c = get(addr, "/", &user("c")).await;
    assert_eq!(
        (c.status, c.ratelimit.as_slice()),
        (
            429,
            &[
                "\"user\";r=1;t=0".to_owned(),
                "\"all\";r=0;t=7200".to_owned()
            ][..]
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counters_of_an_unchanged_limit() {
    let web = backend().await;
    let route = |burst: u32| {
        format!(
            "[[route]]\nname = \"api\"\nlistener = \"l\"\npool = \"web\"\n\
               [[route.rate_limit]]\nkey = \"client_ip\"\nrate = \"1/h\"\nburst = {burst}\n"
        )
    };
    let text = format!("{}{LISTENER}{}", pool(web), route(1));
    let (mut lb, addr, _metrics) = start(&text).await;
    assert_eq!(get(addr, "/", "").await.status, 200);
    assert_eq!(get(addr, "/", "").await.status, 429);
    // Another route added before it (its label is its name, so it is the same limit).
    let listener = format!("[[listener]]\nname = \"l\"\naddress = \"{addr}\"\n");
    let other = "[[route]]\nlistener = \"l\"\npath = \"/other\"\npool = \"web\"\n";
    let same = format!("{}{listener}{other}{}", pool(web), route(1));
    lb.reload(&config(&same)).await.expect("reload");
    assert_eq!(get(addr, "/", "").await.status, 429, "counters kept");
    // A changed limit starts over.
    let changed = format!("{}{listener}{other}{}", pool(web), route(2));
    lb.reload(&config(&changed)).await.expect("reload");
    assert_eq!(
        get(addr, "/", "").await.status,
        200,
        "new limit, new counters"
    );
    assert_eq!(get(addr, "/", "").await.status, 200);
    assert_eq!(get(addr, "/", "").await.status, 429);
}

#[test]
fn rate_limit_keys_are_checked_at_load() {
    let pool = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    for (limit, reason) in [
        (
            "key = \"client_ip\"\nrate = \"0/s\"\n",
            "rl.toml:13: rate_limit: rate \"0/s\": use N/s, N/m or N/h with N of 1 or more",
        ),
        (
            "key = \"ip\"\nrate = \"1/s\"\n",
            "rl.toml:12: rate_limit: key \"ip\": use client_ip, consumer, route, \"claim:NAME\" or \"header:NAME\"",
        ),
        (
            "key = \"header:bad name\"\nrate = \"1/s\"\n",
            "rl.toml:12: rate_limit: key \"header:bad name\": \"bad name\" is not a header name",
        ),
        (
            "key = \"route\"\nrate = \"1/s\"\nburst = 0\n",
            "rl.toml:14: rate_limit: burst 0 must be 1 or more",
        ),
        (
            "key = \"route\"\nrate = \"1/s\"\nmax_keys = 0\n",
            "rl.toml:14: rate_limit: max_keys 0 is not in 1..=10000000",
        ),
        (
            "key = \"route\"\nrat = \"1/s\"\n",
            "rl.toml:13: unknown field `rat`, expected one of `key`, `rate`, `burst`, `dry_run`, `max_keys`, `name`, `store`, `redis`, `redis_timeout`, `nodes`",
        ),
    ] {
        let text = format!(
            "{pool}{LISTENER}[[route]]\nlistener = \"l\"\npool = \"web\"\n[[route.rate_limit]]\n{limit}"
        );
        let err = L7Config::parse(&text, Path::new("rl.toml")).expect_err(limit);
        assert_eq!(err.to_string(), reason, "{limit}");
    }
    // A route that answers itself may be limited; a tcp route may not.
    let ok = format!(
        "{pool}{LISTENER}[[route]]\nlistener = \"l\"\nrespond = {{ status = 200 }}\n\
         [[route.rate_limit]]\nkey = \"client_ip\"\nrate = \"1/s\"\n"
    );
    L7Config::parse(&ok, Path::new("rl.toml")).expect("respond + rate_limit");
    let stream = format!(
        "{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[route]]\nlistener = \"t\"\npool = \"web\"\n\
         [[route.rate_limit]]\nkey = \"client_ip\"\nrate = \"1/s\"\n"
    );
    let err = L7Config::parse(&stream, Path::new("rl.toml")).expect_err("tcp rate_limit");
    assert!(
        err.to_string()
            .contains("rate_limit applies to http routes"),
        "{err}"
    );
}

/// Reads one HTTP/1.1 response (head and Content-Length body) off a keep-alive connection;
/// its status.
async fn response(tcp: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
}

/// The connection was closed by lb without a byte of answer (EOF, or a reset because the
/// request it had sent was never read).
async fn closed_without_answer(tcp: &mut TcpStream) -> bool {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    out.is_empty()
}

#[test]
fn max_connections_per_client_is_checked_at_load() {
    let pool = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    for (listener, reason) in [
        (
            "max_connections_per_client = 0\n",
            "rl.toml:8: max_connections_per_client must be at least 1",
        ),
        (
            "mode = \"udp\"\nmax_connections_per_client = 5\n",
            "rl.toml:9: max_connections_per_client applies to http and tcp listeners (udp: max_sessions)",
        ),
    ] {
        let text = format!(
            "{pool}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n{listener}\
             [[route]]\nlistener = \"l\"\npool = \"web\"\n"
        );
        let err = L7Config::parse(&text, Path::new("rl.toml")).expect_err(listener);
        assert_eq!(err.to_string(), reason, "{listener}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_beyond_max_per_client_are_closed_at_accept() {
    let web = backend().await;
    let (_lb, addr, metrics) = start(&format!(
        "{}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol_from = [\"127.0.0.1/32\"]\nmax_connections_per_client = 2\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n",
        pool(web)
    ))
    .await;
    let open = |client: &'static str| async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head =
            format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.expect("write");
        tcp
    };
    // Two connections of client A answered (and kept open): both admitted.
    let mut a1 = open("192.0.2.1").await;
    assert_eq!(response(&mut a1).await, 200);
    let mut a2 = open("192.0.2.1").await;
    assert_eq!(response(&mut a2).await, 200);
    // A third of A is closed unanswered; B has its own count.
    let mut a3 = open("192.0.2.1").await;
    assert!(closed_without_answer(&mut a3).await);
    let mut b1 = open("192.0.2.2").await;
    assert_eq!(response(&mut b1).await, 200);
    // The admitted ones still work.
    a1.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(response(&mut a1).await, 200);
    assert_eq!(
        metric(
            &metrics,
            "lb_client_connections_refused_total{listener=\"l\"}"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_beyond_max_per_client_are_closed_at_accept() {
    // A TCP echo backend.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (_lb, addr, metrics) = start(&format!(
        "[[pool]]\nname = \"echo\"\n[[pool.backend]]\naddress = \"{echo_addr}\"\n\
         [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         max_connections_per_client = 1\n\
         [[route]]\nlistener = \"t\"\npool = \"echo\"\n"
    ))
    .await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    first.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping", "the first connection is relayed");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert!(closed_without_answer(&mut second).await);
    assert_eq!(
        metric(
            &metrics,
            "lb_client_connections_refused_total{listener=\"t\"}"
        ),
        1
    );
}

/// A token signed with the RSA fixture key `rsa1` (kid `k1`) carrying `claims`.
fn token(claims: &serde_json::Value) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt");
    let pem = std::fs::read(dir.join("rsa1.pem")).expect("rsa1.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_the_verified_token_is_the_key() {
    let web = backend().await;
    // The provider's key set: the fixture's public RSA key as kid k1, from a file.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt");
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("public.json")).expect("public.json"))
            .expect("json");
    let mut jwk = public["rsa1"].clone();
    jwk["kid"] = serde_json::json!("k1");
    let jwks = std::env::temp_dir().join(format!("lb-rl-jwks-{}.json", std::process::id()));
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).expect("write");
    let (_lb, addr, metrics) = start(&format!(
        "{}{LISTENER}\
         [[jwt_provider]]\nname = \"idp\"\nissuer = \"https://issuer.test/\"\njwks_file = \"{}\"\n\
         [[route]]\nname = \"orgs\"\nlistener = \"l\"\npool = \"web\"\njwt = {{ provider = \"idp\" }}\n\
           [[route.rate_limit]]\nname = \"per-org\"\nkey = \"claim:org.id\"\nrate = \"1/h\"\n",
        pool(web),
        jwks.display()
    ))
    .await;
    let _ = std::fs::remove_file(&jwks);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let bearer = |sub: &str, org: Option<&str>| {
        let mut claims =
            serde_json::json!({ "iss": "https://issuer.test/", "sub": sub, "exp": exp });
        if let Some(org) = org {
            claims["org"] = serde_json::json!({ "id": org });
        }
        format!("Authorization: Bearer {}\r\n", token(&claims))
    };
    let policy = "\"per-org\";q=1;w=3600";
    assert_eq!(
        get(addr, "/", &bearer("u1", Some("acme"))).await,
        allowed(policy, "\"per-org\";r=0;t=3600")
    );
    // Another user of the same organisation shares its budget; another organisation has
    // its own; a token without the claim is not counted.
    assert_eq!(
        get(addr, "/", &bearer("u2", Some("acme"))).await,
        limited("3600", policy, "\"per-org\";r=0;t=3600")
    );
    assert_eq!(
        get(addr, "/", &bearer("u3", Some("globex"))).await.status,
        200
    );
    assert_eq!(get(addr, "/", &bearer("u4", None)).await, plain(200));
    // Authentication runs first: no token, 401, and no limit counted it.
    assert_eq!(get(addr, "/", "").await.status, 401);
    let labels = "{route=\"orgs\",limit=\"per-org\",key=\"claim\"}";
    assert_eq!(
        metric(&metrics, &format!("lb_rate_limited_total{labels}")),
        1
    );
}
