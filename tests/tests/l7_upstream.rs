//! The L7 proxy's upstream side with real sockets: PROXY headers on private upstream
//! connections, retry budget, passive ejection, connection caps, HTTP/2 and TLS upstreams.
//! Backends are small hyper servers started here; the proxy runs in-process.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::l7::{self, L7Config};
use lb_tests::lb_run::RefusedPort;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How a test backend answers.
#[derive(Clone)]
struct Behaviour {
    /// Connections start with a PROXY header (parsed and recorded).
    proxy_header: bool,
    status: u16,
    /// Requests wait here until the gate lets them through.
    gate: Option<Gate>,
    /// HTTPS with this configuration.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            proxy_header: false,
            status: 200,
            gate: None,
            tls: None,
        }
    }
}

/// Holds requests at the backends sharing it: the request that arrives n-th (from 0, over all
/// of them) answers once `open` is above n. Tests release requests in stages and know how many
/// are in flight without guessing how long anything takes.
#[derive(Clone, Default)]
struct Gate {
    arrived: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Gate {
    fn open_to(&self, n: usize) {
        self.open.send_replace(n);
    }

    async fn pass(&self) {
        let mut open = self.open.subscribe();
        let n = self.arrived.fetch_add(1, Ordering::SeqCst);
        let _ = open.wait_for(|o| *o > n).await;
    }
}

/// Polls `done` until it holds; the deadline only turns a hang into a failure.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One accepted connection: the PROXY header's (source, destination), if any.
type ConnRecord = Option<(SocketAddr, SocketAddr)>;

/// One request: (connection index, path, HTTP version).
type RequestRecord = (usize, String, hyper::Version);

#[derive(Clone, Default)]
struct Seen {
    conns: Arc<Mutex<Vec<ConnRecord>>>,
    requests: Arc<Mutex<Vec<RequestRecord>>>,
    /// Requests being answered right now, and the most at once.
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Connections that have ended.
    closed: Arc<AtomicUsize>,
}

impl Seen {
    fn requests(&self) -> Vec<RequestRecord> {
        self.requests.lock().expect("log").clone()
    }
    fn conns(&self) -> Vec<ConnRecord> {
        self.conns.lock().expect("log").clone()
    }
}

struct TestBackend {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the PROXY header at the start of `tcp` (peeking, then consuming exactly its bytes).
async fn read_proxy_header(tcp: &mut TcpStream) -> (SocketAddr, SocketAddr) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 536];
    for _ in 0..100 {
        let n = tcp.peek(&mut buf).await.expect("peek");
        let mut cursor = &buf[..n];
        if let Ok(header) = proxy_protocol::parse(&mut cursor) {
            let used = n - cursor.len();
            let mut skip = vec![0u8; used];
            tcp.read_exact(&mut skip).await.expect("consume header");
            use proxy_protocol::{ProxyHeader, version1, version2};
            return match header {
                ProxyHeader::Version1 {
                    addresses:
                        version1::ProxyAddresses::Ipv4 {
                            source,
                            destination,
                        },
                } => (source.into(), destination.into()),
                ProxyHeader::Version2 {
                    addresses:
                        version2::ProxyAddresses::Ipv4 {
                            source,
                            destination,
                        },
                    ..
                } => (source.into(), destination.into()),
                other => panic!("unexpected PROXY header {other:?}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no PROXY header");
}

/// A backend on a port reserved until now (a refusing address that comes back).
fn backend_on(port: RefusedPort, behaviour: Behaviour) -> TestBackend {
    let listener = port.listen();
    listener.set_nonblocking(true).expect("nonblocking");
    backend_from(
        TcpListener::from_std(listener).expect("tokio listener"),
        behaviour,
    )
}

async fn backend(behaviour: Behaviour) -> TestBackend {
    backend_from(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        behaviour,
    )
}

fn backend_from(listener: TcpListener, behaviour: Behaviour) -> TestBackend {
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (seen, behaviour) = (seen.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let header = if behaviour.proxy_header {
                        Some(read_proxy_header(&mut tcp).await)
                    } else {
                        None
                    };
                    let conn = {
                        let mut conns = seen.conns.lock().expect("log");
                        conns.push(header);
                        conns.len() - 1
                    };
                    let tls = behaviour.tls.clone();
                    let closed = seen.closed.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, behaviour) = (seen.clone(), behaviour.clone());
                        async move {
                            let now = seen.active.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.peak.fetch_max(now, Ordering::SeqCst);
                            seen.requests.lock().expect("log").push((
                                conn,
                                req.uri().path().to_owned(),
                                req.version(),
                            ));
                            if let Some(gate) = &behaviour.gate {
                                gate.pass().await;
                            }
                            seen.active.fetch_sub(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::from(format!(
                                "conn {conn} {}",
                                req.uri().path()
                            ))));
                            *response.status_mut() =
                                StatusCode::from_u16(behaviour.status).expect("status");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            // A failed handshake (the proxy rejected the certificate) ends it.
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    };
    TestBackend { addr, seen, task }
}

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("l7.toml")).expect("config")
}

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let running = l7::serve(config(text)).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

/// A listener and a route to pool "web" (whose `[[pool]]` section the test writes).
const LISTENER: &str = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
                        [[route]]\nlistener = \"l\"\npool = \"web\"\n";

/// A keep-alive HTTP/1.1 client connection from `source` to the proxy.
async fn client_from(
    source: IpAddr,
    proxy: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let tcp = socket.connect(proxy).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// GET `path` on a client connection; (status, body).
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String) {
    sender.ready().await.expect("ready");
    let req = Request::get(path)
        .header("host", "s")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_upstream_connections_are_private_to_one_client() {
    for version in ["v1", "v2"] {
        let b = backend(Behaviour {
            proxy_header: true,
            ..Behaviour::default()
        })
        .await;
        let (_proxy, addr) = start(&format!(
            "[[pool]]\nname = \"web\"\nproxy_protocol = \"{version}\"\n\
             [[pool.backend]]\naddress = \"{}\"\n{LISTENER}",
            b.addr
        ))
        .await;
        let sources: [IpAddr; 2] = [
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
        ];
        let mut clients = Vec::new();
        for source in sources {
            clients.push(client_from(source, addr).await);
        }
        // Interleaved: a shared pool would hand one client's idle connection to the other.
        for round in 0..3 {
            for (i, client) in clients.iter_mut().enumerate() {
                let (status, _) = send(client, &format!("/c{i}/r{round}")).await;
                assert_eq!(status, 200, "{version}");
            }
        }
        let conns = b.seen.conns();
        assert_eq!(
            conns.len(),
            2,
            "{version}: one upstream connection per client: {conns:?}"
        );
        for (conn, header) in conns.iter().enumerate() {
            let (source, destination) = header.expect("PROXY header");
            assert_eq!(
                destination, addr,
                "{version}: the address the client reached"
            );
            let client = sources
                .iter()
                .position(|s| *s == source.ip())
                .expect("a header naming one of the clients");
            // Every request on this upstream connection came from that client.
            let paths: Vec<String> = b
                .seen
                .requests()
                .into_iter()
                .filter(|(c, _, _)| *c == conn)
                .map(|(_, p, _)| p)
                .collect();
            assert_eq!(paths.len(), 3, "{version}: {paths:?}");
            assert!(
                paths.iter().all(|p| p.starts_with(&format!("/c{client}/"))),
                "{version}: connection of {source} carried {paths:?}"
            );
        }
    }
}

/// GET (or POST with a body) `path` on a fresh connection from 127.0.0.1; the status.
async fn request(proxy: SocketAddr, method: &str, path: &str) -> u16 {
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let body = if method == "POST" { "data" } else { "" };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "s")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_concurrent_retries() {
    let gate = Gate::default();
    let held_503 = Behaviour {
        status: 503,
        gate: Some(gate.clone()),
        ..Behaviour::default()
    };
    let (a, b) = (backend(held_503.clone()).await, backend(held_503).await);
    let (proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 1\nretry_budget_percent = 20\nretry_budget_min = 3\n\
         max_fails = 0\n\
         [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n{LISTENER}",
        a.addr, b.addr
    ))
    .await;
    let clients: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { request(addr, "GET", &format!("/{i}")).await }))
        .collect();
    let state = proxy.pool_state("web").expect("pool");
    let counters = &state.retry_budget.counters;
    let decided = || counter(&counters.retries) + counter(&counters.budget_denied);
    // All 20 in flight at once (held at the backends), then their 503s come back; the retries
    // they win are held in turn until every request has had its retry granted or denied.
    eventually("20 requests at the backends", || {
        gate.arrived.load(Ordering::SeqCst) == 20
    })
    .await;
    gate.open_to(20);
    eventually("every request's retry decided", || decided() == 20).await;
    gate.open_to(usize::MAX);
    for c in clients {
        assert_eq!(
            c.await.expect("client"),
            503,
            "the original failure is returned"
        );
    }
    let (retries, denied) = (counter(&counters.retries), counter(&counters.budget_denied));
    // 20 requests in flight: max(3, 20% of 20) = 4 retries at once. The first four failures
    // get them (no request has finished yet); after that the granted four are still in
    // flight and every other retry is denied.
    assert_eq!(retries, 4, "retries {retries}, denied {denied}");
    assert_eq!(retries + denied, 20, "every request wanted one retry");
    let seen = a.seen.requests().len() + b.seen.requests().len();
    assert_eq!(
        seen as u64,
        20 + retries,
        "backends saw each request plus the retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_onto_the_healthy_backend_post_is_not() {
    let bad = backend(Behaviour {
        status: 503,
        ..Behaviour::default()
    })
    .await;
    let good = backend(Behaviour::default()).await;
    let (proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 1\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n{LISTENER}",
        bad.addr, good.addr
    ))
    .await;
    for i in 0..4 {
        assert_eq!(request(addr, "GET", &format!("/get{i}")).await, 200);
    }
    let mut post_statuses = Vec::new();
    for i in 0..4 {
        post_statuses.push(request(addr, "POST", &format!("/post{i}")).await);
    }
    let posts = |b: &TestBackend| {
        b.seen
            .requests()
            .iter()
            .filter(|(_, p, _)| p.starts_with("/post"))
            .count()
    };
    assert_eq!(posts(&bad) + posts(&good), 4, "no POST was sent twice");
    assert_eq!(
        post_statuses.iter().filter(|s| **s == 503).count(),
        posts(&bad),
        "each POST the failing backend got came back as its 503: {post_statuses:?}"
    );
    assert!(
        posts(&bad) > 0,
        "round robin sent some POSTs to the failing backend"
    );
    let gets_on_bad = bad.seen.requests().len() - posts(&bad);
    let state = proxy.pool_state("web").expect("pool");
    assert_eq!(
        counter(&state.retry_budget.counters.retries),
        gets_on_bad as u64,
        "each GET that met the failing backend was retried once"
    );
}

#[test]
fn upstream_config_errors_name_file_line_and_reason() {
    let cases = [
        (
            "[[pool]]\nname = \"web\"\nretry_budget_percent = 101\n",
            "l7.toml:3: retry_budget_percent 101 is above 100",
        ),
        (
            "[[pool]]\nname = \"web\"\nfail_timeout = \"later\"\n",
            "l7.toml:3: fail_timeout \"later\": expected number at 0",
        ),
        (
            "[[pool]]\nname = \"web\"\nidle_timeout = \"never\"\n",
            "l7.toml:3: idle_timeout \"never\": expected number at 0",
        ),
        (
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"10.0.0.1:80\"\n\
             max_connections = 0\n",
            "l7.toml:5: max_connections must be at least 1 (weight = 0 takes a backend out)",
        ),
        (
            "[[pool]]\nname = \"web\"\nprotocol = \"h3\"\n",
            "l7.toml:3: unknown variant `h3`, expected one of `http1`, `h2c`, `h2`",
        ),
        (
            "[[pool]]\nname = \"web\"\nprotocol = \"h2c\"\ntls = true\n",
            "l7.toml:4: protocol h2c is cleartext HTTP/2; HTTP/2 over TLS is protocol = \"h2\"",
        ),
        (
            "[[pool]]\nname = \"web\"\nca_file = \"/etc/lb/ca.pem\"\n",
            "l7.toml:3: ca_file and tls_server_name need tls = true (or protocol = \"h2\")",
        ),
        (
            "[[pool]]\nname = \"web\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n",
            "l7.toml:4: ca_file \"/nonexistent/ca.pem\": No such file or directory (os error 2)",
        ),
        (
            "[[pool]]\nname = \"web\"\ntls = true\ntls_server_name = \"bad name!\"\n",
            "l7.toml:4: tls_server_name \"bad name!\" is not a DNS name or IP address",
        ),
    ];
    for (text, expected) in cases {
        let err = L7Config::parse(text, Path::new("l7.toml")).expect_err(text);
        assert_eq!(err.to_string(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_is_ejected_for_fail_timeout_then_tried_again() {
    let alive = backend(Behaviour::default()).await;
    // Refuses connections until a backend listens on it.
    let dead_port = RefusedPort::new();
    let dead_addr = dead_port.addr;
    let pool = |fail_timeout: &str| {
        format!(
            "[[pool]]\nname = \"web\"\nretries = 1\nmax_fails = 3\nfail_timeout = \"{fail_timeout}\"\n\
             [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{dead_addr}\"\n\
             {LISTENER}",
            alive.addr
        )
    };

    // Ejection holds for fail_timeout (an hour here, so no request below can outlast it).
    {
        let (proxy, addr) = start(&pool("1h")).await;
        let state = proxy.pool_state("web").expect("pool");
        let dead = || state.health.status(1).expect("backend");
        for i in 0..10 {
            assert_eq!(
                request(addr, "GET", &format!("/a{i}")).await,
                200,
                "retried"
            );
        }
        // Three refused connects ejected it; the seven requests after that never tried it.
        assert_eq!(dead().consecutive_failures, 3);
        assert!(dead().ejected_for.is_some());
        assert_eq!(counter(&state.retry_budget.counters.retries), 3);
        assert_eq!(alive.seen.requests().len(), 10);
    }

    // Ejection ends after fail_timeout (waited for as the ejection ending, not slept).
    let (proxy, addr) = start(&pool("2s")).await;
    let state = proxy.pool_state("web").expect("pool");
    let dead = || state.health.status(1).expect("backend");
    for i in 0..10 {
        assert_eq!(request(addr, "GET", &format!("/e{i}")).await, 200);
        if dead().ejected_for.is_some() {
            break;
        }
    }
    assert_eq!(dead().consecutive_failures, 3, "ejected by max_fails");
    eventually("the ejection to end", || dead().ejected_for.is_none()).await;
    // Tried again; one more failure ejects it again at once (not after max_fails more).
    for i in 0..4 {
        assert_eq!(request(addr, "GET", &format!("/b{i}")).await, 200);
        if dead().consecutive_failures == 4 {
            break;
        }
    }
    let after = dead();
    assert_eq!(after.consecutive_failures, 4, "round robin tried it again");
    assert!(after.ejected_for.is_some(), "ejected by that one failure");

    // Back up: after the timeout it gets requests again, and a success clears its record.
    let revived = backend_on(dead_port, Behaviour::default());
    eventually("the ejection to end", || dead().ejected_for.is_none()).await;
    for i in 0..4 {
        assert_eq!(request(addr, "GET", &format!("/c{i}")).await, 200);
    }
    assert_eq!(revived.seen.requests().len(), 2, "round robin shares again");
    assert_eq!(dead().consecutive_failures, 0);
    assert_eq!(dead().ejected_for, None);

    // An active check's verdict: down until set up again, whatever passive health says.
    state.health.set_down(1, true);
    for i in 0..4 {
        assert_eq!(request(addr, "GET", &format!("/d{i}")).await, 200);
    }
    assert_eq!(revived.seen.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_requests_in_flight_then_503() {
    let gate = Gate::default();
    let held = backend(Behaviour {
        gate: Some(gate.clone()),
        ..Behaviour::default()
    })
    .await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\nmax_connections = 2\n\
         {LISTENER}",
        held.addr
    ))
    .await;
    let clients: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { request(addr, "GET", &format!("/{i}")).await }))
        .collect();
    // Two are held at the backend; the third, over the cap, is answered without waiting.
    eventually("two requests at the backend and one answered", || {
        gate.arrived.load(Ordering::SeqCst) == 2 && clients.iter().any(|c| c.is_finished())
    })
    .await;
    gate.open_to(usize::MAX);
    let mut statuses = Vec::new();
    for c in clients {
        statuses.push(c.await.expect("client"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 503], "the third is over the cap");
    assert_eq!(held.seen.peak.load(Ordering::SeqCst), 2);
    assert_eq!(held.seen.requests().len(), 2);
    // Below the cap again: served.
    assert_eq!(request(addr, "GET", "/after").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_settings_bound_upstream_keep_alive() {
    let b = backend(Behaviour::default()).await;
    let pool = |extra: &str| {
        format!(
            "[[pool]]\nname = \"web\"\n{extra}[[pool.backend]]\naddress = \"{}\"\n{LISTENER}",
            b.addr
        )
    };
    let conns = || b.seen.conns().len();
    let closed = || b.seen.closed.load(Ordering::SeqCst);
    // Kept alive (the default idle_timeout is far longer than this test): reused.
    let (proxy, addr) = start(&pool("")).await;
    request(addr, "GET", "/1").await;
    request(addr, "GET", "/2").await;
    assert_eq!(conns(), 1, "reused");
    drop(proxy);
    eventually("the first proxy's connection closed", || closed() == 1).await;
    // idle_timeout: the proxy closes the idle connection by itself, and the next request
    // opens a new one.
    let (_proxy, addr) = start(&pool("idle_timeout = \"300ms\"\n")).await;
    request(addr, "GET", "/3").await;
    assert_eq!(conns(), 2);
    eventually("the idle connection closed by the proxy", || closed() == 2).await;
    request(addr, "GET", "/4").await;
    assert_eq!(conns(), 3, "a new connection after the idle one was closed");
    // idle_per_backend = 0: no keep-alive upstream.
    let (_proxy, addr) = start(&pool("idle_per_backend = 0\n")).await;
    for i in 0..3 {
        request(addr, "GET", &format!("/n{i}")).await;
    }
    assert_eq!(conns(), 6, "one connection per request");
}

/// A self-signed certificate for `names` (DNS names or IPs): (PEM file, TLS acceptor with
/// ALPN h2 and http/1.1). The file is removed by the caller.
fn tls_backend_cert(tag: &str, names: &[&str]) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("cert");
    let path = std::env::temp_dir().join(format!("lbt-{}-upstream-{tag}.pem", std::process::id()));
    std::fs::write(&path, cert.cert.pem()).expect("write cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (path, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_speaks_http2() {
    let b = backend(Behaviour::default()).await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nprotocol = \"h2c\"\n[[pool.backend]]\naddress = \"{}\"\n\
         {LISTENER}",
        b.addr
    ))
    .await;
    for i in 0..3 {
        assert_eq!(request(addr, "GET", &format!("/h2c{i}")).await, 200);
    }
    let seen = b.seen.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|(_, _, v)| *v == hyper::Version::HTTP_2),
        "{seen:?}"
    );
    assert_eq!(b.seen.conns().len(), 1, "one multiplexed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_verify_the_backend_certificate() {
    let (cert, acceptor) = tls_backend_cert("good", &["127.0.0.1", "backend.test"]);
    let (wrong_ca, _) = tls_backend_cert("wrong", &["127.0.0.1"]);
    let b = backend(Behaviour {
        tls: Some(acceptor),
        ..Behaviour::default()
    })
    .await;
    let cases = [
        // (pool keys, status, HTTP version the backend should see)
        (
            format!("tls = true\nca_file = {cert:?}\n"),
            200,
            hyper::Version::HTTP_11,
        ),
        (
            format!("tls = true\nca_file = {cert:?}\ntls_server_name = \"backend.test\"\n"),
            200,
            hyper::Version::HTTP_11,
        ),
        (
            format!("protocol = \"h2\"\nca_file = {cert:?}\n"),
            200,
            hyper::Version::HTTP_2,
        ),
        (
            format!("tls = true\nca_file = {wrong_ca:?}\n"),
            502,
            hyper::Version::HTTP_11,
        ),
        (
            format!("tls = true\nca_file = {cert:?}\ntls_server_name = \"other.test\"\n"),
            502,
            hyper::Version::HTTP_11,
        ),
        (
            "tls = true\ntls_insecure = true\n".to_owned(),
            200,
            hyper::Version::HTTP_11,
        ),
    ];
    for (n, (keys, status, version)) in cases.into_iter().enumerate() {
        let (_proxy, addr) = start(&format!(
            "[[pool]]\nname = \"web\"\nretries = 0\n{keys}[[pool.backend]]\naddress = \"{}\"\n\
             {LISTENER}",
            b.addr
        ))
        .await;
        let path = format!("/tls{n}");
        assert_eq!(request(addr, "GET", &path).await, status, "{keys}");
        let seen = b.seen.requests();
        let on_backend = seen.iter().find(|(_, p, _)| *p == path);
        match status {
            200 => assert_eq!(on_backend.map(|r| r.2), Some(version), "{keys}"),
            _ => assert!(on_backend.is_none(), "{keys}: rejected before any request"),
        }
    }
    for p in [cert, wrong_ca] {
        let _ = std::fs::remove_file(p);
    }
}
