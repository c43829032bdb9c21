//! The L7 proxy with real sockets: small hyper backends started here, the proxy in-process,
//! real HTTP clients (lb's own load generator and raw TCP).
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::l7::{self, L7Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What a backend saw: (backend name, path, headers) per request.
type Log = Arc<Mutex<Vec<(String, String, HashMap<String, String>)>>>;

/// Connections each backend accepted, by name.
static CONNECTIONS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn connections_to(name: &str) -> usize {
    CONNECTIONS
        .lock()
        .map_or(0, |c| c.iter().filter(|n| **n == name).count())
}

/// A backend answering "<name> <path>" and logging each request.
async fn backend(name: &'static str, log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut c) = CONNECTIONS.lock() {
                c.push(name);
            }
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        if let Ok(mut l) = log.lock() {
                            l.push((name.to_owned(), path.clone(), headers));
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "{name} {path}"
                        )))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 request; returns (status, body).
async fn get(proxy: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn request(method: &str, host: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
}

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("l7.toml")).expect("config")
}

/// A closed-loop HTTP/1.1 keep-alive run of `requests` over `connections` against `url`.
fn bench(url: &str, connections: usize, requests: u64) -> lb::loadgen::BenchConfig {
    lb::loadgen::BenchConfig {
        target: lb::loadgen::Target::parse(&[url.to_owned()], "GET", &[], Bytes::new())
            .expect("target"),
        connections,
        duration: None,
        requests: Some(requests),
        warmup: std::time::Duration::ZERO,
        mode: lb::loadgen::LoadMode::Closed,
        version: lb::loadgen::HttpVersion::Http1,
        keep_alive: true,
        proxy: None,
        insecure: false,
        ca_file: None,
        resumption: true,
        timeout: std::time::Duration::from_secs(5),
        progress: false,
    }
}

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let running = l7::serve(config(text)).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_exactly_and_reuses_upstream_connections() {
    let log = Log::default();
    let (a, b) = (
        backend("rr-a", log.clone()).await,
        backend("rr-b", log.clone()).await,
    );
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\nweight = 3\n\
         [[pool.backend]]\naddress = \"{b}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let report = lb::loadgen::run(bench(&format!("http://{addr}/x"), 4, 400))
        .await
        .expect("bench");
    assert_eq!(report.ok, 400);
    let seen = log.lock().expect("log").clone();
    let to_a = seen.iter().filter(|(n, _, _)| n == "rr-a").count();
    assert_eq!((to_a, seen.len() - to_a), (300, 100));
    // Upstream keep-alive: a handful of connections carried 400 requests.
    let upstream = connections_to("rr-a") + connections_to("rr-b");
    assert!(
        (2..=16).contains(&upstream),
        "{upstream} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_with_prefix_strip() {
    let log = Log::default();
    let (api, www, any) = (
        backend("api", log.clone()).await,
        backend("www", log.clone()).await,
        backend("any", log.clone()).await,
    );
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"api\"\n[[pool.backend]]\naddress = \"{api}\"\n\
         [[pool]]\nname = \"www\"\n[[pool.backend]]\naddress = \"{www}\"\n\
         [[pool]]\nname = \"any\"\n[[pool.backend]]\naddress = \"{any}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"*.example.com\"\npath_prefix = \"/api\"\nstrip_prefix = true\npool = \"api\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"www.example.com\"\npool = \"www\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"other.test\"\npool = \"any\"\n"
    ))
    .await;
    let cases = [
        (
            "www.example.com",
            "/api/v1/users?x=1",
            200,
            "api /v1/users?x=1",
        ),
        ("shop.example.com", "/api", 200, "api /"),
        ("WWW.example.com:8080", "/apix", 200, "www /apix"),
        ("www.example.com", "/index.html", 200, "www /index.html"),
        ("other.test", "/", 200, "any /"),
        ("example.com", "/api", 404, "no route\n"),
        ("nowhere.test", "/", 404, "no route\n"),
    ];
    for (host, path, status, body) in cases {
        let got = get(addr, &request("GET", host, path, "")).await;
        assert_eq!(got, (status, body.to_owned()), "{host}{path}");
    }
    // lb's own answers say what they are.
    let own = lb_tests::raw_http::request_to(addr, "GET", "/", "nowhere.test", "").await;
    assert_eq!(
        own.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop_rules() {
    let log = Log::default();
    let a = backend("a", log.clone()).await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let extra = "X-Forwarded-For: 203.0.113.9\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\n\
                 Keep-Alive: timeout=5\r\nX-Request-Id: abc-123\r\nX-Custom: kept\r\n";
    let (status, _) = get(addr, &request("GET", "site.test", "/h", extra)).await;
    assert_eq!(status, 200);
    let (status, _) = get(addr, &request("GET", "site.test", "/h2", "")).await;
    assert_eq!(status, 200);
    let seen = log.lock().expect("log").clone();
    let first = &seen[0].2;
    assert_eq!(first["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(first["x-real-ip"], "127.0.0.1");
    assert_eq!(first["x-forwarded-proto"], "http");
    assert_eq!(first["x-forwarded-host"], "site.test");
    assert_eq!(first["x-request-id"], "abc-123");
    assert_eq!(first["x-custom"], "kept");
    for hop in ["x-hop", "keep-alive", "connection"] {
        assert!(
            !first.contains_key(hop),
            "{hop} must not be forwarded: {first:?}"
        );
    }
    let second = &seen[1].2;
    assert_eq!(second["x-forwarded-for"], "127.0.0.1");
    assert_eq!(second["x-request-id"].len(), 24, "generated id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_elsewhere_posts_do_not() {
    let log = Log::default();
    let alive = backend("alive", log.clone()).await;
    // A port with nothing listening: connect fails at once.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    // max_fails = 0: no passive ejection, so the dead backend keeps its turns.
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 1\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{dead}\"\n\
         [[pool.backend]]\naddress = \"{alive}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    for i in 0..10 {
        let (status, body) = get(addr, &request("GET", "s", &format!("/g{i}"), "")).await;
        assert_eq!((status, body), (200, format!("alive /g{i}")));
    }
    let mut statuses = Vec::new();
    for i in 0..10 {
        let post = format!(
            "POST /p{i} HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        );
        statuses.push(get(addr, &post).await.0);
    }
    // Round robin alternates: half the POSTs meet the dead backend and are not retried.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
}

#[test]
fn config_errors_name_file_line_and_reason() {
    let cases = [
        (
            "[[route]]\nlistener = \"nope\"\npool = \"web\"\n",
            "l7.toml:2: route names unknown listener \"nope\"",
        ),
        (
            "[[pool]]\nname = \"web\"\n[[pool]]\nname = \"web\"\n",
            "l7.toml:4: duplicate pool \"web\"",
        ),
        (
            "[[pool]]\nname = \"web\"\nalgorithm = \"fastest\"\n",
            "l7.toml:3: unknown variant `fastest`, expected one of `round_robin`, `least_conn`, `p2c`, `consistent_hash`",
        ),
        (
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"10.0.0.1\"\n",
            "l7.toml:4: backend address \"10.0.0.1\" is not ADDRESS:PORT",
        ),
        (
            "[[pool]]\nname = \"web\"\nconnect_timeout = \"soon\"\n",
            "l7.toml:3: connect_timeout \"soon\": expected number at 0",
        ),
    ];
    for (text, expected) in cases {
        let err = L7Config::parse(text, Path::new("l7.toml")).expect_err(text);
        assert_eq!(err.to_string(), expected);
    }
}

/// Writes a self-signed certificate for `names` to temp files; returns (cert, key) paths.
fn cert_files(names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("cert");
    let dir = std::env::temp_dir();
    let tag = format!("lbt-{}-{}", std::process::id(), names[0]);
    let (c, k) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.cert.pem()).expect("write cert");
    std::fs::write(&k, cert.key_pair.serialize_pem()).expect("write key");
    (c, k)
}

/// Connects with SNI `name`, trusting only `ca`: succeeds only if the proxy served that cert.
async fn tls_handshake(addr: SocketAddr, name: &str, ca: &std::path::Path) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("ca");
    for cert in pem_certs(&pem) {
        roots.add(cert).expect("add root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    connector.connect(server_name, tcp).await.is_ok()
}

fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_picks_certificates_by_sni_and_speaks_h2() {
    let log = Log::default();
    let a = backend("tls-a", log.clone()).await;
    let (cert_a, key_a) = cert_files(&["localhost", "127.0.0.1"]);
    let (cert_b, key_b) = cert_files(&["b.test", "*.b.test"]);
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\n\
         [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"localhost\"]\n\
         [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"b.test\", \"*.b.test\"]\n\
         [[route]]\nlistener = \"tls\"\npool = \"web\"\n",
        cert_a.display(),
        key_a.display(),
        cert_b.display(),
        key_b.display()
    ))
    .await;
    assert!(
        tls_handshake(addr, "b.test", &cert_b).await,
        "exact SNI name"
    );
    assert!(
        tls_handshake(addr, "x.b.test", &cert_b).await,
        "wildcard SNI name"
    );
    // An IP address as server name sends no SNI: the listener's first certificate answers.
    assert!(
        tls_handshake(addr, "127.0.0.1", &cert_a).await,
        "default certificate"
    );
    assert!(
        !tls_handshake(addr, "b.test", &cert_a).await,
        "b.test is not served cert A"
    );
    // Plain HTTP on the TLS port: a readable 400, as NGINX answers, not a TLS alert.
    let plain = get(addr, &request("GET", "localhost", "/", "")).await;
    assert_eq!(
        plain,
        (
            400,
            "The plain HTTP request was sent to an HTTPS port.\n".to_owned()
        )
    );

    for version in [
        lb::loadgen::HttpVersion::Http1,
        lb::loadgen::HttpVersion::Http2,
    ] {
        let report = lb::loadgen::run(lb::loadgen::BenchConfig {
            version,
            ca_file: Some(cert_a.clone()),
            ..bench(&format!("https://localhost:{}/s", addr.port()), 2, 50)
        })
        .await
        .expect("bench");
        assert_eq!(report.ok, 50, "{version:?}");
    }
    let seen = log.lock().expect("log").clone();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .all(|(_, _, h)| h["x-forwarded-proto"] == "https")
    );
    for p in [cert_a, key_a, cert_b, key_b] {
        let _ = std::fs::remove_file(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_trusted_peers_sets_the_client() {
    let log = Log::default();
    let a = backend("pp-a", log.clone()).await;
    let pool = format!("[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\n");
    let (proxy, addr) = start(&format!(
        "{pool}[[listener]]\nname = \"pp\"\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol_from = [\"127.0.0.1/32\"]\nproxy_protocol_timeout = \"300ms\"\n\
         [[route]]\nlistener = \"pp\"\npool = \"web\"\n"
    ))
    .await;

    // v1 header naming another client: that client is what the backend hears about.
    let header = "PROXY TCP4 203.0.113.5 10.0.0.1 40000 80\r\n";
    let (status, _) = get(addr, &format!("{header}{}", request("GET", "s", "/v1", ""))).await;
    assert_eq!(status, 200);
    let seen = log.lock().expect("log").clone();
    assert_eq!(seen[0].2["x-real-ip"], "203.0.113.5");
    assert_eq!(seen[0].2["x-forwarded-for"], "203.0.113.5");

    // v2 headers from the load generator.
    let cfg = lb::loadgen::BenchConfig {
        proxy: Some(lb::loadgen::ProxyHeaderVersion::V2),
        ..bench(&format!("http://{addr}/v2"), 2, 20)
    };
    assert_eq!(lb::loadgen::run(cfg).await.expect("bench").ok, 20);

    // A trusted peer without a header, or silent until the deadline: closed and counted.
    let mut bare = TcpStream::connect(addr).await.expect("connect");
    bare.write_all(request("GET", "s", "/none", "").as_bytes())
        .await
        .expect("write");
    let mut reply = Vec::new();
    // Closed without a response (a reset, since the request was left unread).
    let _ = bare.read_to_end(&mut reply).await;
    assert!(reply.is_empty(), "no response: {reply:?}");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    assert_eq!(silent.read(&mut buf).await.expect("read"), 0, "closed");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(proxy.proxy_header_errors(), 2);
    assert!(
        !log.lock()
            .expect("log")
            .iter()
            .any(|(_, p, _)| p == "/none")
    );

    // A listener that trusts only other networks serves this peer as it is.
    let (_plain, plain_addr) = start(&format!(
        "{pool}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol_from = [\"10.0.0.0/8\"]\n[[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let (status, _) = get(plain_addr, &request("GET", "s", "/plain", "")).await;
    assert_eq!(status, 200);
    let last = log.lock().expect("log").last().cloned().expect("request");
    assert_eq!(last.2["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_431_413_and_slow_request_heads() {
    let log = Log::default();
    let a = backend("lim-a", log.clone()).await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         max_header_bytes = 8192\nmax_body_bytes = 10\nheader_timeout = \"300ms\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let (status, _) = get(addr, &request("GET", "s", "/big-head", &big)).await;
    assert_eq!(status, 431);
    let post = |len: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{}",
            "x".repeat(len)
        )
    };
    assert_eq!(get(addr, &post(11)).await.0, 413);
    assert_eq!(get(addr, &post(10)).await.0, 200);
    let seen: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .map(|(_, p, _)| p.clone())
        .collect();
    assert_eq!(
        seen,
        vec!["/upload".to_owned()],
        "only the request within limits reached the backend"
    );

    // A client that never finishes its request head is cut off.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: s\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await
    .expect("closed within 5 s");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "{waited:?}"
    );
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
}
