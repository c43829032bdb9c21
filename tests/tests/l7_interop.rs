//! The L7 proxy next to other people's software: HAProxy in front of lb (PROXY v2, and
//! X-Forwarded-For with `trusted_proxies`), curl as the client over HTTP/1.1 and HTTP/2, and
//! h2load's multiplexed HTTP/2 streams through a weighted split.
//! A missing binary skips the test (saying why), except with CI=true, where it fails.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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

/// What the backend saw: (path and query, version, headers) per request.
type Log = Arc<Mutex<Vec<(String, hyper::Version, HashMap<String, String>)>>>;

/// A backend answering "seen <path>" and logging each request.
async fn backend(log: Log) -> SocketAddr {
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
                            l.push((path.clone(), req.version(), headers));
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "seen {path}"
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

/// The path of `name` (searched in PATH, then /usr/sbin and /sbin, where Debian puts haproxy).
/// Missing: panics when CI=true, else prints why `test` is skipped and returns None.
fn require_binary(name: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{test} needs {name} and CI=true: refusing to skip (cargo xtask setup installs it)"
            );
        }
        eprintln!("skipping {test}: {name} is not installed (cargo xtask setup installs it)");
    }
    found
}

/// A loopback port that was free a moment ago (for programs that cannot report theirs).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// HAProxy in the foreground with a config in its own temp dir; killed (and the dir removed)
/// on drop, also when the test panics.
struct HaProxy {
    child: Child,
    dir: PathBuf,
}

impl HaProxy {
    /// Starts `binary` with `config` and waits until every port in `ports` accepts.
    fn start(binary: &Path, config: &str, ports: &[u16]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lbt-haproxy-{}-{}", std::process::id(), ports[0]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log file");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = haproxy.child.try_wait() {
                    panic!("haproxy exited ({status}): {}", haproxy.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not listening on {port}: {}",
                    haproxy.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        haproxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw HTTP/1.1 exchange from source address `from`; returns (status, body).
async fn get_from(from: IpAddr, to: SocketAddr, request: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut tcp = socket.connect(to).await.expect("connect");
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

async fn start(text: &str) -> l7::RunningL7 {
    let config = L7Config::parse(text, Path::new("l7.toml")).expect("config");
    l7::serve(config).await.expect("serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_passes_the_client_by_proxy_v2_and_by_x_forwarded_for() {
    let test = "haproxy_in_front";
    let Some(haproxy) = require_binary("haproxy", test) else {
        return;
    };
    let log = Log::default();
    let b = backend(log.clone()).await;
    // Listener "pp": HAProxy opens each connection with a PROXY v2 header.
    // Listener "xff": HAProxy appends the client to X-Forwarded-For, which lb believes.
    let lb = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{b}\"\n\
         [[listener]]\nname = \"pp\"\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol_from = [\"127.0.0.0/8\"]\n\
         [[listener]]\nname = \"xff\"\naddress = \"127.0.0.1:0\"\n\
         trusted_proxies = [\"127.0.0.1\"]\n\
         [[route]]\nlistener = \"pp\"\npool = \"web\"\n\
         [[route]]\nlistener = \"xff\"\npath_prefix = \"/xff\"\nrewrite_prefix = \"/via-xff\"\npool = \"web\"\n"
    ))
    .await;
    let (lb_pp, lb_xff) = (lb.listeners[0].1, lb.listeners[1].1);
    let (front_pp, front_xff) = (free_port(), free_port());
    let _haproxy = HaProxy::start(
        &haproxy,
        &format!(
            "global\n    maxconn 256\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe_pp\n    bind 127.0.0.1:{front_pp}\n    default_backend be_pp\n\
             backend be_pp\n    server lb {lb_pp} send-proxy-v2\n\
             frontend fe_xff\n    bind 127.0.0.1:{front_xff}\n    option forwardfor\n    default_backend be_xff\n\
             backend be_xff\n    server lb {lb_xff}\n"
        ),
        &[front_pp, front_xff],
    );

    let client = IpAddr::from([127, 0, 0, 77]);
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: interop.test\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let to_pp = SocketAddr::from(([127, 0, 0, 1], front_pp));
    let (status, body) = get_from(client, to_pp, &request("/pp")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "seen /pp"),
        "{}",
        _haproxy.log()
    );
    let seen = log.lock().expect("log").last().cloned().expect("logged");
    assert_eq!(seen.2["x-real-ip"], "127.0.0.77");
    // lb appends the client the PROXY header named; the client's own claim stays, unbelieved.
    assert_eq!(seen.2["x-forwarded-for"], "6.6.6.6, 127.0.0.77");

    let to_xff = SocketAddr::from(([127, 0, 0, 1], front_xff));
    let (status, body) = get_from(client, to_xff, &request("/xff/a")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "seen /via-xff/a"),
        "{}",
        _haproxy.log()
    );
    let seen = log.lock().expect("log").last().cloned().expect("logged");
    assert_eq!(seen.2["x-real-ip"], "127.0.0.77");
    assert_eq!(seen.2["x-forwarded-for"], "6.6.6.6, 127.0.0.77, 127.0.0.1");
}

/// Runs curl with `args` plus `-s -o - -w '\n%{http_version}'`; returns (body, HTTP version).
fn curl(binary: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(binary)
        .args(["-s", "--max-time", "10", "-w", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').expect("version line");
    (body.to_owned(), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2_prior_knowledge() {
    let Some(curl_bin) = require_binary("curl", "curl_over_http1_and_h2_prior_knowledge") else {
        return;
    };
    let log = Log::default();
    let b = backend(log.clone()).await;
    let lb = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{b}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npath_regex = \"^/items/([0-9]+)$\"\n\
         rewrite_regex = \"/db/item/$1\"\nmethods = [\"GET\"]\npool = \"web\"\n\
           [[route.header]]\nname = \"x-client\"\nregex = \"^curl-\"\n"
    ))
    .await;
    let addr = lb.listeners[0].1;
    let url = format!("http://{addr}/items/42");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let curl_bin = curl_bin.clone();
        let url = url.clone();
        let header = format!("X-Client: curl-{version}");
        let (body, seen_version) = tokio::task::spawn_blocking(move || {
            curl(&curl_bin, &[flag, "-H", &header, url.as_str()])
        })
        .await
        .expect("curl task");
        assert_eq!(
            (body.as_str(), seen_version.as_str()),
            ("seen /db/item/42", version),
            "{flag}"
        );
        let seen = log.lock().expect("log").last().cloned().expect("logged");
        assert_eq!(seen.2["x-client"], format!("curl-{version}"));
        assert_eq!(
            seen.1,
            hyper::Version::HTTP_11,
            "lb speaks HTTP/1.1 upstream"
        );
        assert_eq!(seen.2["x-forwarded-for"], "127.0.0.1");
    }
    // The header rule is enforced for curl too: without it, no route.
    let (body, _) = tokio::task::spawn_blocking(move || curl(&curl_bin, &["--http1.1", &url]))
        .await
        .expect("curl task");
    assert_eq!(body, "no route\n");
    assert_eq!(log.lock().expect("log").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_multiplexed_streams_keep_the_split_exact() {
    let Some(h2load) = require_binary("h2load", "h2load_multiplexed_streams_keep_the_split_exact")
    else {
        return;
    };
    let (stable_log, canary_log) = (Log::default(), Log::default());
    let (stable, canary) = (
        backend(stable_log.clone()).await,
        backend(canary_log.clone()).await,
    );
    let lb = start(&format!(
        "[[pool]]\nname = \"stable\"\n[[pool.backend]]\naddress = \"{stable}\"\n\
         [[pool]]\nname = \"canary\"\n[[pool.backend]]\naddress = \"{canary}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\n\
         split = [{{ pool = \"stable\", weight = 95 }}, {{ pool = \"canary\", weight = 5 }}]\n"
    ))
    .await;
    let url = format!("http://{}/h2load", lb.listeners[0].1);
    // 4 connections x 8 concurrent streams: picks race, but each is one step of the split.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(h2load)
            .args(["-n", "200", "-c", "4", "-m", "8", &url])
            .output()
            .expect("run h2load")
    })
    .await
    .expect("h2load task");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("200 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(text.contains("Application protocol: h2c"), "{text}");
    let counts = (
        stable_log.lock().expect("log").len(),
        canary_log.lock().expect("log").len(),
    );
    assert_eq!(counts, (190, 10));
}
