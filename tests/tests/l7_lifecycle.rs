//! Client connections over their life at the L7 proxy: connection slots per listener,
//! graceful shutdown, WebSocket upgrades, certificate reload. Real sockets on 127.0.0.1,
//! backends started here.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
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
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Requests to `/hold` wait at the backend until `release`; `arrived` counts them as they
/// reach it, so a test knows a request is in flight without guessing how long that takes.
#[derive(Clone, Default)]
struct Hold {
    arrived: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Hold {
    fn release(&self) {
        self.open.send_replace(true);
    }

    async fn wait_arrived(&self, n: usize) {
        let arrived = &self.arrived;
        eventually("held requests at the backend", || {
            arrived.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

/// Polls `done` until it holds; the deadline only turns a hang into a failure.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backend answering "ok PATH"; `/hold` answers once `hold` is released.
async fn backend(hold: Hold) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let hold = hold.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let hold = hold.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        if path == "/hold" {
                            let mut open = hold.open.subscribe();
                            hold.arrived.fetch_add(1, Ordering::SeqCst);
                            let _ = open.wait_for(|o| *o).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "ok {path}"
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

fn config_text(backend: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n{listener_extra}\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    )
}

async fn start(listener_extra: &str) -> (l7::RunningL7, SocketAddr) {
    start_held(Hold::default(), listener_extra).await
}

async fn start_held(hold: Hold, listener_extra: &str) -> (l7::RunningL7, SocketAddr) {
    let text = config_text(backend(hold).await, listener_extra);
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

/// Connections completed by the kernel and waiting in the accept queue of the listening
/// socket on `addr` (IPv4), from /proc/net/tcp; None if no socket listens there.
fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(3) != Some(&"0A") {
            return None;
        }
        // tx_queue:rx_queue; for a listening socket rx_queue is the accept backlog.
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// Sends a keep-alive GET and reads its whole response (the body is "ok PATH").
async fn keep_alive_get<S: AsyncRead + AsyncWrite + Unpin>(tcp: &mut S, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let end = format!("ok {path}");
    while !out.ends_with(end.as_bytes()) {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the peer closes (a reset counts as closed).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_clients_in_the_accept_queue() {
    let (_proxy, addr) = start("max_connections = 2\n").await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert!(
        keep_alive_get(&mut first, "/1")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        keep_alive_get(&mut second, "/2")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Both slots are held by idle keep-alive connections: the third connects (the kernel
    // queues it) but is not served: lb does not even accept it.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(b"GET /3 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    eventually("the third connection waiting in the accept queue", || {
        accept_queue(addr) == Some(1)
    })
    .await;
    // The proxy is busy serving meanwhile: a request on an admitted connection goes through,
    // and the third connection is still queued, unanswered.
    assert!(
        keep_alive_get(&mut second, "/2a")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(
        accept_queue(addr),
        Some(1),
        "accepted while both slots were taken"
    );
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "served while both slots were taken"
    );

    // A slot frees: the third is served.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut third))
        .await
        .expect("served once a slot freed");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok /3"),
        "{answer}"
    );
    // The second connection still works.
    assert!(
        keep_alive_get(&mut second, "/2b")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let hold = Hold::default();
    let (proxy, addr) = start_held(hold.clone(), "").await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    assert!(
        keep_alive_get(&mut idle, "/idle")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .expect("write");
    hold.wait_arrived(1).await;

    // A grace far longer than the test: shutdown must end because the last connection did.
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(600)));

    // No longer accepting: the listening socket is closed.
    let mut refused = false;
    eventually("connections refused", || {
        refused = refused || std::net::TcpStream::connect(addr).is_err();
        refused
    })
    .await;
    // The idle keep-alive connection is closed at once.
    let idle_answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut idle))
        .await
        .expect("idle connection closed");
    assert_eq!(idle_answer, "");
    // The request in flight holds the shutdown up.
    assert!(!shutdown.is_finished(), "shutdown left a request in flight");
    hold.release();
    // The in-flight request completes, then its connection closes.
    let answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut busy))
        .await
        .expect("in-flight request finished");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok /hold"),
        "{answer}"
    );
    let cut = tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown ended with the last connection, not with the grace")
        .expect("shutdown");
    assert_eq!(cut, 0, "nothing left when the grace ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_requests_that_outlive_the_grace() {
    // Never released: the request outlives any grace.
    let hold = Hold::default();
    let (proxy, addr) = start_held(hold.clone(), "").await;
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .expect("write");
    hold.wait_arrived(1).await;
    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(20), proxy.shutdown(grace))
        .await
        .expect("shutdown ends when the grace does");
    assert_eq!(cut, 1);
    // Not cut early: the grace was waited out (a lower bound, which a slow machine only
    // exceeds by more).
    assert!(started.elapsed() >= grace, "{:?}", started.elapsed());
    let answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut busy))
        .await
        .expect("cut connection closed");
    assert_eq!(answer, "", "no response for a cut request");
}

#[test]
fn max_connections_bad_value_names_file_and_line() {
    let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nmax_connections = 0\n";
    let err = L7Config::parse(text, Path::new("l7.toml")).expect_err(text);
    assert_eq!(
        err.to_string(),
        "l7.toml:4: max_connections must be at least 1"
    );
}

/// A WebSocket-ish backend: a request with `Upgrade: websocket` on `/ws` gets 101 and then an
/// echo of every byte; `/refuse` gets 403. Counts the connections it echoed on.
async fn upgrade_backend(echoed: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let echoed = echoed.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let echoed = echoed.clone();
                    async move {
                        let asks = req
                            .headers()
                            .get("upgrade")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                        let mut response = Response::new(Full::new(Bytes::new()));
                        if req.uri().path() != "/ws" || !asks {
                            *response.status_mut() = hyper::StatusCode::FORBIDDEN;
                            *response.body_mut() = Full::new(Bytes::from("refused"));
                            return Ok::<_, Infallible>(response);
                        }
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let Ok(upgraded) = upgrade.await else { return };
                            echoed.fetch_add(1, Ordering::SeqCst);
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                        let h = response.headers_mut();
                        h.insert("upgrade", "websocket".parse().expect("value"));
                        h.insert("connection", "Upgrade".parse().expect("value"));
                        h.insert(
                            "sec-websocket-accept",
                            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().expect("value"),
                        );
                        Ok(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads one response head (up to the empty line).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_spliced_only_after_101() {
    let echoed = Arc::new(AtomicUsize::new(0));
    let text = config_text(upgrade_backend(echoed.clone()).await, "");
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let proxy = l7::serve(config).await.expect("serve");
    let addr = proxy.listeners[0].1;
    let handshake = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: s\r\nConnection: keep-alive, Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    };

    let mut ws = TcpStream::connect(addr).await.expect("connect");
    ws.write_all(handshake("/ws").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // Bytes both ways, several rounds, through the spliced connections.
    for round in [&b"hello"[..], b"\x81\x05binary-ish\x00\xff", b"third"] {
        ws.write_all(round).await.expect("write");
        let mut back = vec![0u8; round.len()];
        tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, round);
    }
    assert_eq!(echoed.load(Ordering::SeqCst), 1);

    // The backend refuses: an ordinary 403, no splice, and the connection stays HTTP.
    let mut refused = TcpStream::connect(addr).await.expect("connect");
    refused
        .write_all(handshake("/refuse").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut refused).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(!head.contains("upgrade"), "{head}");
    let mut body = [0u8; 7];
    refused.read_exact(&mut body).await.expect("body");
    assert_eq!(&body, b"refused");
    refused
        .write_all(b"GET /after HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut refused).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert_eq!(echoed.load(Ordering::SeqCst), 1, "no second splice");
    drop(proxy);
}

/// A WebSocket outlives the HTTP connection hyper hands over: the graceful stop still counts
/// it, gives it the grace, and cuts it when the grace ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_counts_a_spliced_websocket_and_cuts_it_after_the_grace() {
    let echoed = Arc::new(AtomicUsize::new(0));
    let text = config_text(upgrade_backend(echoed.clone()).await, "");
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let proxy = l7::serve(config).await.expect("serve");
    let addr = proxy.listeners[0].1;
    let mut ws = TcpStream::connect(addr).await.expect("connect");
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    ws.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"ping");

    let cut = tokio::time::timeout(
        Duration::from_secs(20),
        proxy.shutdown(Duration::from_millis(300)),
    )
    .await
    .expect("shutdown ends when the grace does");
    assert_eq!(
        cut, 1,
        "the spliced WebSocket was open at the end of the grace"
    );
    let rest = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut ws))
        .await
        .expect("the WebSocket is closed");
    assert_eq!(rest, "");
}

/// A new self-signed certificate for localhost written over `cert` and `key`; returns its PEM.
fn write_cert(cert: &Path, key: &Path) -> String {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(cert, generated.cert.pem()).expect("write cert");
    std::fs::write(key, generated.key_pair.serialize_pem()).expect("write key");
    generated.cert.pem()
}

/// A TLS connection to `addr` as "localhost" trusting only `ca_pem`; None if the handshake
/// fails (the proxy served another certificate).
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_for_new_connections_only() {
    let dir = std::env::temp_dir();
    let tag = format!("lbt-reload-{}", std::process::id());
    let (cert, key) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    let cert_a = write_cert(&cert, &key);
    let (proxy, addr) = start(&format!(
        "[[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;
    let mut existing = tls_connect(addr, &cert_a).await.expect("cert A served");
    assert!(
        keep_alive_get(&mut existing, "/before")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let cert_b = write_cert(&cert, &key);
    // Files changed, nothing reloaded yet: still A.
    assert!(tls_connect(addr, &cert_a).await.is_some());
    assert_eq!(proxy.reload_certificates().expect("reload"), 1);
    assert!(
        tls_connect(addr, &cert_b).await.is_some(),
        "new connections get B"
    );
    assert!(tls_connect(addr, &cert_a).await.is_none(), "A is gone");
    // The connection made with A goes on.
    assert!(
        keep_alive_get(&mut existing, "/after")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // A broken file: an error naming it, and B stays.
    std::fs::write(&cert, "not a certificate\n").expect("write");
    let err = proxy.reload_certificates().expect_err("bad file");
    assert_eq!(
        err.to_string(),
        format!("listener l: {}: no certificate found", cert.display())
    );
    assert!(tls_connect(addr, &cert_b).await.is_some(), "B kept");
    let _ = std::fs::remove_file(&cert);
    let err = proxy.reload_certificates().expect_err("missing file");
    assert!(
        err.to_string()
            .starts_with(&format!("listener l: reading {}: ", cert.display())),
        "{err}"
    );
    assert!(tls_connect(addr, &cert_b).await.is_some(), "B kept");
    let _ = std::fs::remove_file(&key);
}
