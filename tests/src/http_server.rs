//! A small HTTP server with known, configurable behaviour, for testing the load generator:
//! counts every request and connection, answers 500 on every Nth request, stalls the whole
//! server for a while on every Nth request, resets every Nth connection, speaks TLS (with a
//! certificate generated here) and HTTP/1.1 + HTTP/2, and reads PROXY headers.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, Version, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{io::AsyncReadExt, net::TcpListener};
use tokio_rustls::TlsAcceptor;

/// What the server does. Zero disables a behaviour.
#[derive(Clone, Default)]
pub struct Behaviour {
    pub fail_every: u64,
    pub stall_every: u64,
    pub stall: Duration,
    pub reset_every_connection: u64,
    pub expect_proxy_header: bool,
    pub tls: bool,
}

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    /// Every request, health checks included.
    pub requests: AtomicU64,
    /// Requests for `/healthz` (what tests point active health checks at).
    pub health_checks: AtomicU64,
    pub connections: AtomicU64,
    pub http2_requests: AtomicU64,
    pub resumed_tls: AtomicU64,
    pub full_tls: AtomicU64,
    pub proxy_sources: Mutex<Vec<SocketAddr>>,
    pub bodies: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    /// PEM of the self-signed certificate (when TLS is on), for `--cacert`.
    pub cert_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the server on 127.0.0.1 (an ephemeral port) on the current tokio runtime.
pub async fn start(behaviour: Behaviour) -> TestServer {
    start_on("127.0.0.1:0".parse().expect("addr"), behaviour).await
}

/// Starts the server on `addr` (e.g. the port of a server that was stopped).
pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> TestServer {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_pem = cert.cert.pem();
    let acceptor = behaviour.tls.then(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    });
    // Holding this lock is "the whole server is stalled".
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let n = seen.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let (seen, behaviour, gate, acceptor) = (
                    seen.clone(),
                    behaviour.clone(),
                    gate.clone(),
                    acceptor.clone(),
                );
                tokio::spawn(async move {
                    if is_nth(n, behaviour.reset_every_connection) {
                        // Take the request, then reset instead of answering.
                        let mut buf = [0u8; 1024];
                        let _ = tcp.read(&mut buf).await;
                        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    if behaviour.expect_proxy_header {
                        match read_proxy_header(&mut tcp).await {
                            Some(src) => {
                                if let Ok(mut v) = seen.proxy_sources.lock() {
                                    v.push(src);
                                }
                            }
                            None => return,
                        }
                    }
                    let service = {
                        let seen = seen.clone();
                        service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (seen, behaviour, gate) =
                                (seen.clone(), behaviour.clone(), gate.clone());
                            async move { handle(req, &seen, &behaviour, &gate).await }
                        })
                    };
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let counter = match tls.get_ref().1.handshake_kind() {
                                Some(rustls::HandshakeKind::Resumed) => &seen.resumed_tls,
                                _ => &seen.full_tls,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        })
    };
    TestServer {
        addr,
        seen,
        cert_pem,
        task,
    }
}

/// True when `n` (1-based) is a multiple of `every`; `every == 0` means never.
fn is_nth(n: u64, every: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    seen: &Seen,
    behaviour: &Behaviour,
    gate: &tokio::sync::Mutex<()>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = seen.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if req.uri().path() == "/healthz" {
        seen.health_checks.fetch_add(1, Ordering::Relaxed);
    }
    if req.version() == Version::HTTP_2 {
        seen.http2_requests.fetch_add(1, Ordering::Relaxed);
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if body.is_ok_and(|b| !b.is_empty()) {
        seen.bodies.fetch_add(1, Ordering::Relaxed);
    }
    {
        let _held = gate.lock().await;
        if is_nth(n, behaviour.stall_every) {
            tokio::time::sleep(behaviour.stall).await;
        }
    }
    let status = if is_nth(n, behaviour.fail_every) {
        500
    } else {
        200
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(
            b"hello from the test server\n",
        )))
        .unwrap_or_default())
}

/// Reads exactly one PROXY v1/v2 header off the stream; returns the source it names.
async fn read_proxy_header(tcp: &mut tokio::net::TcpStream) -> Option<SocketAddr> {
    let mut buf = vec![0u8; 536];
    let n = tcp.peek(&mut buf).await.ok()?;
    let mut view = &buf[..n];
    let header = proxy_protocol::parse(&mut view).ok()?;
    let used = n - view.len();
    let mut discard = vec![0u8; used];
    tcp.read_exact(&mut discard).await.ok()?;
    match header {
        proxy_protocol::ProxyHeader::Version1 {
            addresses: proxy_protocol::version1::ProxyAddresses::Ipv4 { source, .. },
        } => Some(SocketAddr::V4(source)),
        proxy_protocol::ProxyHeader::Version2 {
            addresses: proxy_protocol::version2::ProxyAddresses::Ipv4 { source, .. },
            ..
        } => Some(SocketAddr::V4(source)),
        _ => None,
    }
}
