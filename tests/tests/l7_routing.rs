//! L7 routing rules end to end: exact/prefix/regex paths, methods, header matches, rewrites
//! (the path the backend saw), weighted splits between pools, and the client address behind
//! trusted proxies. Real sockets on 127.0.0.x: small hyper backends started here, the proxy
//! in-process, raw TCP clients bound to chosen source addresses.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
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
    net::{TcpListener, TcpSocket},
};

/// What a backend saw: (backend name, path and query, headers) per request.
type Log = Arc<Mutex<Vec<(String, String, HashMap<String, String>)>>>;

/// A backend answering "<name> <path>" and logging each request.
async fn backend(name: &'static str, log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
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

/// A raw HTTP/1.1 exchange from source address `from`; returns (status, body).
async fn get_from(from: IpAddr, proxy: SocketAddr, request: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut tcp = socket.connect(proxy).await.expect("connect");
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

async fn get(proxy: SocketAddr, request: &str) -> (u16, String) {
    get_from(IpAddr::from([127, 0, 0, 1]), proxy, request).await
}

fn request(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n{extra}\r\n")
}

fn pool(name: &str, backend: SocketAddr) -> String {
    format!("[[pool]]\nname = \"{name}\"\n[[pool.backend]]\naddress = \"{backend}\"\n")
}

const LISTENER: &str = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let config = L7Config::parse(text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_prefix_and_regex_paths_with_rewrites() {
    let log = Log::default();
    let mut pools = String::new();
    for name in ["exact", "regex", "prefix", "strip", "any"] {
        pools += &pool(name, backend(name, log.clone()).await);
    }
    let (_proxy, addr) = start(&format!(
        "{pools}{LISTENER}\
         [[route]]\nlistener = \"l\"\npath = \"/exact\"\npool = \"exact\"\n\
         [[route]]\nlistener = \"l\"\npath_regex = \"^/v([0-9]+)/(?<rest>.*)$\"\n\
         rewrite_regex = \"/api/${{rest}}/version/$1\"\npool = \"regex\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/old\"\nrewrite_prefix = \"/new/place\"\npool = \"prefix\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/strip/\"\nstrip_prefix = true\npool = \"strip\"\n\
         [[route]]\nlistener = \"l\"\npool = \"any\"\n"
    ))
    .await;
    let cases = [
        ("/exact", "exact /exact"),
        ("/exact?q=1", "exact /exact?q=1"),
        ("/exact/", "any /exact/"),
        ("/exactly", "any /exactly"),
        ("/v2/users/7?page=3", "regex /api/users/7/version/2?page=3"),
        ("/v/users", "any /v/users"),
        ("/x/v2/users", "any /x/v2/users"),
        ("/old", "prefix /new/place"),
        ("/old/a/b?c=d", "prefix /new/place/a/b?c=d"),
        ("/older", "any /older"),
        ("/strip/z/y", "strip /z/y"),
        ("/strip", "any /strip"),
    ];
    for (path, body) in cases {
        let got = get(addr, &request("GET", path, "")).await;
        assert_eq!(got, (200, body.to_owned()), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_header_matches() {
    let log = Log::default();
    let mut pools = String::new();
    for name in ["writes", "canary", "debug", "anon", "stable"] {
        pools += &pool(name, backend(name, log.clone()).await);
    }
    let (_proxy, addr) = start(&format!(
        "{pools}{LISTENER}\
         [[route]]\nlistener = \"l\"\nmethods = [\"POST\", \"PUT\"]\npool = \"writes\"\n\
         [[route]]\nlistener = \"l\"\npool = \"canary\"\n\
           [[route.header]]\nname = \"X-Canary\"\nvalue = \"1\"\n\
           [[route.header]]\nname = \"x-user\"\nregex = \"^(alice|bob)$\"\n\
         [[route]]\nlistener = \"l\"\npool = \"debug\"\n\
           [[route.header]]\nname = \"x-debug\"\npresent = true\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/account\"\npool = \"anon\"\n\
           [[route.header]]\nname = \"cookie\"\npresent = false\n\
         [[route]]\nlistener = \"l\"\npool = \"stable\"\n"
    ))
    .await;
    let post = "Content-Length: 0\r\n";
    let cases = [
        ("POST", "/", post, "writes"),
        ("PUT", "/", post, "writes"),
        ("DELETE", "/", "", "stable"),
        ("GET", "/", "X-Canary: 1\r\nX-User: alice\r\n", "canary"),
        ("HEAD", "/", "X-Canary: 1\r\nX-User: bob\r\n", "canary"),
        ("GET", "/", "X-Canary: 1\r\nX-User: mallory\r\n", "stable"),
        ("GET", "/", "X-Canary: 1\r\nX-User: alice2\r\n", "stable"),
        ("GET", "/", "X-Canary: 0\r\nX-User: alice\r\n", "stable"),
        ("GET", "/", "X-Canary: 1\r\n", "stable"),
        ("GET", "/", "X-Debug: \r\n", "debug"),
        ("GET", "/account/me", "", "anon"),
        ("GET", "/account/me", "Cookie: s=1\r\n", "stable"),
        ("POST", "/", "X-Debug: 1\r\nContent-Length: 0\r\n", "writes"),
    ];
    for (method, path, extra, expected) in cases {
        let (status, _) = get(addr, &request(method, path, extra)).await;
        assert_eq!(status, 200, "{method} {path} {extra:?}");
        let last = log.lock().expect("log").last().cloned().expect("logged");
        assert_eq!(last.0, expected, "{method} {path} {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_95_5_over_200_requests_is_exact() {
    let log = Log::default();
    let (stable, canary) = (
        backend("stable", log.clone()).await,
        backend("canary", log.clone()).await,
    );
    let (_proxy, addr) = start(&format!(
        "{}{}{LISTENER}\
         [[route]]\nlistener = \"l\"\n\
         split = [{{ pool = \"stable\", weight = 95 }}, {{ pool = \"canary\", weight = 5 }}]\n",
        pool("stable", stable),
        pool("canary", canary)
    ))
    .await;
    let bench = lb::loadgen::BenchConfig {
        target: lb::loadgen::Target::parse(
            &[format!("http://{addr}/split")],
            "GET",
            &[],
            Bytes::new(),
        )
        .expect("target"),
        connections: 4,
        duration: None,
        requests: Some(200),
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
    };
    let report = lb::loadgen::run(bench).await.expect("bench");
    assert_eq!(report.ok, 200);
    let seen = log.lock().expect("log").clone();
    let to_canary = seen.iter().filter(|(n, _, _)| n == "canary").count();
    assert_eq!((seen.len() - to_canary, to_canary), (190, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_decide_whom_x_real_ip_names() {
    let log = Log::default();
    let a = backend("xff", log.clone()).await;
    let (_proxy, addr) = start(&format!(
        "{}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         trusted_proxies = [\"127.0.0.2\", \"127.0.0.3/32\", \"10.0.0.0/8\"]\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n",
        pool("web", a)
    ))
    .await;
    let (trusted, other_trusted, untrusted) = (
        IpAddr::from([127, 0, 0, 2]),
        IpAddr::from([127, 0, 0, 3]),
        IpAddr::from([127, 0, 0, 9]),
    );
    // (peer, incoming X-Forwarded-For, X-Real-IP expected, X-Forwarded-For expected)
    let cases = [
        (
            untrusted,
            Some("203.0.113.1"),
            "127.0.0.9",
            "203.0.113.1, 127.0.0.9",
        ),
        (untrusted, None, "127.0.0.9", "127.0.0.9"),
        (
            trusted,
            Some("6.6.6.6, 203.0.113.1, 10.1.1.1"),
            "203.0.113.1",
            "6.6.6.6, 203.0.113.1, 10.1.1.1, 127.0.0.2",
        ),
        // Our own trusted proxies chained: 127.0.0.3 forwarded to 127.0.0.2.
        (
            trusted,
            Some("198.51.100.4, 127.0.0.3"),
            "198.51.100.4",
            "198.51.100.4, 127.0.0.3, 127.0.0.2",
        ),
        (trusted, None, "127.0.0.2", "127.0.0.2"),
        (
            other_trusted,
            Some("10.0.0.5, 10.0.0.6"),
            "10.0.0.5",
            "10.0.0.5, 10.0.0.6, 127.0.0.3",
        ),
        (
            trusted,
            Some("203.0.113.1, bogus"),
            "127.0.0.2",
            "203.0.113.1, bogus, 127.0.0.2",
        ),
        (
            trusted,
            Some("203.0.113.1, bogus, 10.7.7.7"),
            "10.7.7.7",
            "203.0.113.1, bogus, 10.7.7.7, 127.0.0.2",
        ),
    ];
    for (peer, xff, real_ip, forwarded_for) in cases {
        let extra = xff.map_or(String::new(), |x| format!("X-Forwarded-For: {x}\r\n"));
        let (status, _) = get_from(peer, addr, &request("GET", "/", &extra)).await;
        assert_eq!(status, 200);
        let last = log.lock().expect("log").last().cloned().expect("logged");
        assert_eq!(last.2["x-real-ip"], real_ip, "{peer} {xff:?}");
        assert_eq!(last.2["x-forwarded-for"], forwarded_for, "{peer} {xff:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_hashing_uses_the_client_behind_trusted_proxies() {
    let log = Log::default();
    let (a, b) = (
        backend("hash-a", log.clone()).await,
        backend("hash-b", log.clone()).await,
    );
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nalgorithm = \"consistent_hash\"\n\
         [[pool.backend]]\naddress = \"{a}\"\n[[pool.backend]]\naddress = \"{b}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         trusted_proxies = [\"127.0.0.2/31\"]\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let backend_for = |peer: [u8; 4], client: u8| {
        let log = log.clone();
        async move {
            let extra = format!("X-Forwarded-For: 203.0.113.{client}\r\n");
            let (_, body) = get_from(IpAddr::from(peer), addr, &request("GET", "/", &extra)).await;
            let last = log.lock().expect("log").last().cloned().expect("logged");
            assert_eq!(last.2["x-real-ip"].as_str(), {
                if peer[3] == 2 || peer[3] == 3 {
                    format!("203.0.113.{client}")
                } else {
                    IpAddr::from(peer).to_string()
                }
            });
            body.split(' ').next().unwrap_or_default().to_owned()
        }
    };
    // Through either trusted proxy, a client keeps its backend; clients spread over both.
    let mut used = std::collections::HashSet::new();
    for client in 1..=24 {
        let via_2 = backend_for([127, 0, 0, 2], client).await;
        let via_3 = backend_for([127, 0, 0, 3], client).await;
        assert_eq!(via_2, via_3, "client 203.0.113.{client}");
        used.insert(via_2);
    }
    assert_eq!(used.len(), 2, "24 clients all hashed to one backend");
    // An untrusted peer is one client, whatever its X-Forwarded-For says.
    let mut untrusted = std::collections::HashSet::new();
    for client in 1..=24 {
        untrusted.insert(backend_for([127, 0, 0, 9], client).await);
    }
    assert_eq!(untrusted.len(), 1, "{untrusted:?}");
}

#[test]
fn bad_route_and_listener_keys_name_file_line_and_reason() {
    let head = "[[pool]]\nname = \"a\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
                [[route]]\nlistener = \"l\"\n";
    // Lines 1-7 are `head`; the keys under test start on line 8.
    let cases = [
        (
            "pool = \"a\"\npath_regex = \"^/v(\"\n",
            "l7.toml:9: path_regex \"^/v(\": unclosed group",
        ),
        (
            "pool = \"a\"\npath = \"/x\"\npath_prefix = \"/y\"\n",
            "l7.toml:10: route has both path and path_prefix: use one of path, path_prefix, path_regex",
        ),
        (
            "pool = \"a\"\npath_prefix = \"/y\"\npath_regex = \"y\"\n",
            "l7.toml:10: route has both path_prefix and path_regex: use one of path, path_prefix, path_regex",
        ),
        (
            "pool = \"a\"\npath = \"x\"\n",
            "l7.toml:9: path \"x\" must start with /",
        ),
        (
            "pool = \"a\"\nmethods = [\"GET\", \"get\"]\n",
            "l7.toml:9: method \"get\" must be upper case (methods are case-sensitive)",
        ),
        (
            "pool = \"a\"\nmethods = [\"G T\"]\n",
            "l7.toml:9: \"G T\" is not an HTTP method",
        ),
        (
            "pool = \"a\"\nmethods = []\n",
            "l7.toml:9: methods is empty",
        ),
        (
            "split = [{ pool = \"a\", weight = 1 }, { pool = \"nope\" }]\n",
            "l7.toml:8: split names unknown pool \"nope\"",
        ),
        (
            "split = [{ pool = \"a\" }, { pool = \"a\" }]\n",
            "l7.toml:8: split names pool \"a\" twice",
        ),
        (
            "split = [{ pool = \"a\", weight = 0 }]\n",
            "l7.toml:8: split weights add up to 0",
        ),
        ("split = []\n", "l7.toml:8: split weights add up to 0"),
        (
            "split = [{ pool = \"a\", weight = -1 }]\n",
            "l7.toml:8: invalid value: integer `-1`, expected u32",
        ),
        (
            "pool = \"a\"\nsplit = [{ pool = \"a\" }]\n",
            "l7.toml:8: route has both pool and split: use one",
        ),
        ("path = \"/\"\n", "l7.toml:6: route needs pool or split"),
        (
            "pool = \"nope\"\n",
            "l7.toml:8: route names unknown pool \"nope\"",
        ),
        (
            "pool = \"a\"\n[[route.header]]\nname = \"x-a\"\n",
            "l7.toml:10: header \"x-a\" needs one of value, present, regex",
        ),
        (
            "pool = \"a\"\n[[route.header]]\nname = \"x-a\"\nvalue = \"1\"\npresent = true\n",
            "l7.toml:10: header \"x-a\": use only one of value, present, regex",
        ),
        (
            "pool = \"a\"\n[[route.header]]\nname = \"x a\"\npresent = true\n",
            "l7.toml:10: bad header name \"x a\"",
        ),
        (
            "pool = \"a\"\n[[route.header]]\nname = \"x-a\"\nregex = \"[z-a]\"\n",
            "l7.toml:11: header regex \"[z-a]\": invalid character class range, the start must be <= the end",
        ),
        (
            "pool = \"a\"\n[[route.header]]\nname = \"x-a\"\nmatches = \"1\"\n",
            "l7.toml:11: unknown field `matches`, expected one of `name`, `value`, `present`, `regex`",
        ),
        (
            "pool = \"a\"\npath_regex = \"^/v([0-9]+)\"\nrewrite_regex = \"/$2\"\n",
            "l7.toml:10: rewrite_regex \"/$2\": path_regex has no group \"2\"",
        ),
        (
            "pool = \"a\"\npath_prefix = \"/v\"\nrewrite_regex = \"/w\"\n",
            "l7.toml:10: rewrite_regex needs path_regex",
        ),
        (
            "pool = \"a\"\npath_regex = \"^/v\"\nrewrite_prefix = \"/w\"\n",
            "l7.toml:10: rewrite_prefix needs path_prefix or path (use rewrite_regex with path_regex)",
        ),
        (
            "pool = \"a\"\npath_regex = \"^/v\"\nstrip_prefix = true\n",
            "l7.toml:9: strip_prefix needs path_prefix or path (use rewrite_regex with path_regex)",
        ),
        (
            "pool = \"a\"\npath_prefix = \"/v\"\nstrip_prefix = true\nrewrite_prefix = \"/w\"\n",
            "l7.toml:11: strip_prefix and rewrite_prefix together (strip_prefix is rewrite_prefix = \"/\")",
        ),
        (
            "pool = \"a\"\npath_prefix = \"/v\"\nrewrite_prefix = \"w\"\n",
            "l7.toml:10: rewrite_prefix \"w\" must start with /",
        ),
    ];
    for (keys, expected) in cases {
        let text = format!("{head}{keys}");
        let err = L7Config::parse(&text, Path::new("l7.toml")).expect_err(&text);
        assert_eq!(err.to_string(), expected, "{keys}");
    }

    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
                    trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n";
    let err = L7Config::parse(listener, Path::new("l7.toml")).expect_err("bad network");
    assert_eq!(
        err.to_string(),
        "l7.toml:4: trusted_proxies: \"10.0.0.0/33\" is not an address or network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_passes_over_a_pool_with_no_usable_backend() {
    let log = Log::default();
    let (drained, live) = (
        backend("drained", log.clone()).await,
        backend("live", log.clone()).await,
    );
    // Pool "drained"'s only backend takes no new requests (weight 0): its half of the split
    // goes to the other pool instead of answering 503.
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"drained\"\n[[pool.backend]]\naddress = \"{drained}\"\nweight = 0\n\
         {}{LISTENER}\
         [[route]]\nlistener = \"l\"\n\
         split = [{{ pool = \"drained\", weight = 1 }}, {{ pool = \"live\", weight = 1 }}]\n",
        pool("live", live)
    ))
    .await;
    for i in 0..10 {
        let (status, body) = get(addr, &request("GET", &format!("/{i}"), "")).await;
        assert_eq!((status, body), (200, format!("live /{i}")));
    }
    assert!(log.lock().expect("log").iter().all(|(n, _, _)| n == "live"));
}
