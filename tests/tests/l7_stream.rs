//! Stream listeners (`mode = "tcp"` / `"udp"`) with real sockets: echo backends started here,
//! TLS backends with their own rcgen certificates (the proxy passes TLS through by SNI), PROXY
//! headers parsed by the backend with the proxy-protocol crate, UDP sessions.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use lb::l7::{self, L7Config};
use proxy_protocol::{ProxyHeader, version1, version2};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("l7.toml")).expect("config")
}

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let running = l7::serve(config(text)).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

/// A backend that greets with "<name>\n", echoes what it reads, and after the client's EOF
/// (half-close) sends "bye" and closes.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                tcp.write_all(format!("{name}\n").as_bytes()).await?;
                let mut buf = [0u8; 4096];
                loop {
                    let n = tcp.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    tcp.write_all(&buf[..n]).await?;
                }
                tcp.write_all(b"bye").await?;
                tcp.shutdown().await
            });
        }
    });
    addr
}

/// `f`, or a test failure after 10 s (a missed EOF must fail the test, not hang it).
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

/// A port with nothing listening: connects fail at once.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Connects, reads the backend's greeting line; the stream is left open.
async fn open(proxy: SocketAddr) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while within(tcp.read(&mut byte)).await.expect("read greeting") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    (tcp, String::from_utf8(line).expect("utf8"))
}

/// The backend a fresh connection reaches (its greeting), the connection closed again.
async fn backend_of(proxy: SocketAddr) -> String {
    let (mut tcp, name) = open(proxy).await;
    tcp.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within(tcp.read_to_end(&mut rest)).await.expect("read");
    assert_eq!(rest, b"bye");
    name
}

fn tcp_pool(name: &str, extra: &str, backends: &[SocketAddr]) -> String {
    let mut out = format!("[[pool]]\nname = \"{name}\"\n{extra}");
    for b in backends {
        out.push_str(&format!("[[pool.backend]]\naddress = \"{b}\"\n"));
    }
    out
}

fn tcp_listener(extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n{extra}\
         [[route]]\nlistener = \"t\"\npool = \"p\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_bytes_flow_both_ways_and_half_close_is_passed_on() {
    let a = echo_backend("a").await;
    let (_proxy, addr) = start(&format!("{}{}", tcp_pool("p", "", &[a]), tcp_listener(""))).await;
    let (mut tcp, greeting) = open(addr).await;
    assert_eq!(greeting, "a");
    // Patterned and large: past the relay's first buffer, so the bulk (spliced) path carries
    // most of it both ways, and any byte out of order shows.
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = tcp.split();
    let writer = async {
        write.write_all(b"ping").await.expect("write");
        write.write_all(&big).await.expect("write");
        // Half-close: the backend sees EOF, and its "bye" still comes back.
        write.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut got = Vec::new();
        read.read_to_end(&mut got).await.expect("read");
        got
    };
    let ((), got) = within(async { tokio::join!(writer, reader) }).await;
    assert_eq!(got.len(), 4 + big.len() + 3);
    assert_eq!(&got[..4], b"ping");
    assert!(got[4..4 + big.len()] == big[..], "relayed bytes differ");
    assert_eq!(&got[4 + big.len()..], b"bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_backend_half_close_leaves_the_client_direction_open() {
    // The backend speaks first, closes its side, then still reads until the client's EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        tcp.write_all(b"banner").await.expect("write");
        tcp.shutdown().await.expect("shutdown");
        let mut heard = Vec::new();
        tcp.read_to_end(&mut heard).await.expect("read");
        let _ = heard_tx.send(heard);
    });
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "", &[backend]),
        tcp_listener("")
    ))
    .await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut banner = Vec::new();
    within(tcp.read_to_end(&mut banner)).await.expect("read");
    assert_eq!(banner, b"banner");
    // After the EOF from the backend, the client's bytes still get through.
    tcp.write_all(b"late words").await.expect("write");
    tcp.shutdown().await.expect("shutdown");
    assert_eq!(within(heard_rx).await.expect("heard"), b"late words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_spreads_connections_and_retries_dead_backends() {
    let (a, b, c) = (
        echo_backend("a").await,
        echo_backend("b").await,
        echo_backend("c").await,
    );
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "", &[a, b, c]),
        tcp_listener("")
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(backend_of(addr).await);
    }
    for name in ["a", "b", "c"] {
        assert_eq!(seen.iter().filter(|n| *n == name).count(), 3, "{seen:?}");
    }

    // A dead backend: every connection still lands, on the live one (retries = 1).
    let (dead, alive) = (dead_port(), echo_backend("alive").await);
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "retries = 1\n", &[dead, alive]),
        tcp_listener("")
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(backend_of(addr).await, "alive");
    }
    // Without retries, the connections that meet the dead backend are closed.
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "retries = 0\n", &[dead, alive]),
        tcp_listener("")
    ))
    .await;
    let mut closed = 0;
    for _ in 0..6 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let _ = tcp.shutdown().await;
        let mut buf = Vec::new();
        let _ = within(tcp.read_to_end(&mut buf)).await;
        if buf.is_empty() {
            closed += 1;
        } else {
            assert_eq!(buf, b"alive\nbye");
        }
    }
    assert_eq!(closed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_consistent_hash_keys_on_the_true_client_ip() {
    let (a, b, c) = (
        echo_backend("a").await,
        echo_backend("b").await,
        echo_backend("c").await,
    );
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "algorithm = \"consistent_hash\"\n", &[a, b, c]),
        tcp_listener("proxy_protocol_from = [\"127.0.0.1/32\"]\n")
    ))
    .await;
    // The client a trusted PROXY header names is the key: the same client always lands on
    // the same backend, and different clients spread.
    let via = |client: &str| {
        let header = format!("PROXY TCP4 {client} 198.51.100.1 4000 443\r\n");
        async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(header.as_bytes()).await.expect("write");
            tcp.shutdown().await.expect("shutdown");
            let mut answer = String::new();
            within(tcp.read_to_string(&mut answer)).await.expect("read");
            answer
        }
    };
    let mut used = std::collections::HashSet::new();
    for i in 1..=20 {
        let client = format!("203.0.113.{i}");
        let first = via(&client).await;
        for _ in 0..3 {
            assert_eq!(via(&client).await, first, "{client}");
        }
        used.insert(first);
    }
    assert!(used.len() > 1, "20 clients all on {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_least_conn_counts_open_connections() {
    let (a, b) = (echo_backend("a").await, echo_backend("b").await);
    let (proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "algorithm = \"least_conn\"\n", &[a, b]),
        tcp_listener("")
    ))
    .await;
    // Waits (polling; the deadline only turns a hang into a failure) until the proxy counts
    // `n` connections open to the pool's backends.
    let open_upstream = |n: u32| {
        let state = proxy.pool_state("p").expect("pool p");
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while state.inflight.get(0) + state.inflight.get(1) != n {
                assert!(std::time::Instant::now() < deadline, "never {n} open");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (mut first, first_name) = open(addr).await;
    let (_second, second_name) = open(addr).await;
    assert_ne!(first_name, second_name, "the busy backend is avoided");
    // Both busy: closing the first frees its backend, which the next connection gets.
    first.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within(first.read_to_end(&mut rest)).await.expect("read");
    drop(first);
    open_upstream(1).await;
    for _ in 0..3 {
        let (held, name) = open(addr).await;
        assert_eq!(name, first_name);
        drop(held);
        open_upstream(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_connections_are_closed() {
    let a = echo_backend("a").await;
    let (_proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "", &[a]),
        tcp_listener("idle_timeout = \"500ms\"\n")
    ))
    .await;
    let (mut tcp, _) = open(addr).await;
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.expect("echo");
    }
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    // The deadline only turns a hang into a failure; how fast lb closes is not asserted.
    let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout");
    let waited = started.elapsed();
    // lb's own timer: never before the idle timeout (less scheduling slack).
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(rest.is_empty(), "the backend never saw EOF: no bye");
}

/// A self-signed certificate for `names`: (certificate, key).
fn certificate(
    names: &[&str],
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("cert");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    (cert.cert.der().clone(), key.into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS backend with its own certificate for `names`: after the handshake it sends `name`
/// and closes. Returns its address and certificate.
async fn tls_backend(
    name: &'static str,
    names: &[&str],
) -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
    let (cert, key) = certificate(names);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await?;
                tls.write_all(name.as_bytes()).await?;
                tls.shutdown().await
            });
        }
    });
    (addr, cert)
}

/// A TLS client trusting only `ca`, sending SNI `server_name` (none for an IP address): the
/// text the backend sent, or None if the handshake failed.
async fn tls_fetch(
    addr: SocketAddr,
    server_name: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let mut tls = within(connector.connect(name, tcp)).await.ok()?;
    let mut text = String::new();
    within(tls.read_to_string(&mut text)).await.ok()?;
    Some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni_to_backends_holding_their_own_certificates() {
    let (a, cert_a) = tls_backend("backend-a", &["a.example"]).await;
    let (b, cert_b) = tls_backend("backend-b", &["b.example", "x.b.example"]).await;
    let (d, cert_d) = tls_backend("backend-default", &["127.0.0.1"]).await;
    let (proxy, addr) = start(&format!(
        "{}{}{}\
         [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         client_hello_timeout = \"300ms\"\n\
         [[route]]\nlistener = \"t\"\nsni = \"a.example\"\npool = \"a\"\n\
         [[route]]\nlistener = \"t\"\nsni = \"*.b.example\"\npool = \"b\"\n\
         [[route]]\nlistener = \"t\"\nsni = \"b.example\"\npool = \"b\"\n\
         [[route]]\nlistener = \"t\"\npool = \"default\"\n",
        tcp_pool("a", "", &[a]),
        tcp_pool("b", "", &[b]),
        tcp_pool("default", "", &[d]),
    ))
    .await;
    // The client verifies the backend's own certificate: the proxy never terminated TLS.
    assert_eq!(
        tls_fetch(addr, "a.example", &cert_a).await.as_deref(),
        Some("backend-a")
    );
    assert_eq!(
        tls_fetch(addr, "b.example", &cert_b).await.as_deref(),
        Some("backend-b")
    );
    assert_eq!(
        tls_fetch(addr, "X.B.example", &cert_b).await.as_deref(),
        Some("backend-b"),
        "wildcard, any case"
    );
    // No SNI (an IP address as the name): the route without sni.
    assert_eq!(
        tls_fetch(addr, "127.0.0.1", &cert_d).await.as_deref(),
        Some("backend-default")
    );
    // An unknown name also falls to the route without sni, whose certificate does not match.
    assert_eq!(tls_fetch(addr, "c.example", &cert_a).await, None);

    // Not TLS: closed without reaching a backend.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = within(plain.read_to_end(&mut reply)).await;
    assert!(reply.is_empty(), "{reply:?}");
    // Silent: closed at the ClientHello deadline.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(proxy);
}

/// A backend that reads until EOF, parses the PROXY header at the start and answers
/// "<source> <destination> <rest of the bytes>".
async fn proxy_header_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                tcp.read_to_end(&mut all).await?;
                let mut rest = all.as_slice();
                let answer = match proxy_protocol::parse(&mut rest) {
                    Ok(ProxyHeader::Version1 {
                        addresses:
                            version1::ProxyAddresses::Ipv4 {
                                source,
                                destination,
                            },
                    }) => format!("v1 {source} {destination}"),
                    Ok(ProxyHeader::Version2 {
                        addresses:
                            version2::ProxyAddresses::Ipv4 {
                                source,
                                destination,
                            },
                        ..
                    }) => format!("v2 {source} {destination}"),
                    other => format!("unexpected {other:?}"),
                };
                let answer = format!("{answer} {}", String::from_utf8_lossy(rest));
                tcp.write_all(answer.as_bytes()).await?;
                tcp.shutdown().await
            });
        }
    });
    addr
}

/// Sends `bytes`, half-closes, returns the whole answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, SocketAddr) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local");
    tcp.write_all(bytes).await.expect("write");
    tcp.shutdown().await.expect("shutdown");
    let mut answer = String::new();
    within(tcp.read_to_string(&mut answer)).await.expect("read");
    (answer, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pools_send_proxy_headers_naming_the_true_client() {
    let backend = proxy_header_backend().await;
    for version in ["v1", "v2"] {
        let (_proxy, addr) = start(&format!(
            "{}{}",
            tcp_pool(
                "p",
                &format!("proxy_protocol = \"{version}\"\n"),
                &[backend]
            ),
            tcp_listener("")
        ))
        .await;
        let (answer, client) = exchange(addr, b"payload").await;
        assert_eq!(answer, format!("{version} {client} {addr} payload"));
    }

    // A trusted peer's PROXY header names the client passed on.
    let (proxy, addr) = start(&format!(
        "{}{}",
        tcp_pool("p", "proxy_protocol = \"v2\"\n", &[backend]),
        tcp_listener(
            "proxy_protocol_from = [\"127.0.0.1/32\"]\nproxy_protocol_timeout = \"300ms\"\n"
        )
    ))
    .await;
    let (answer, _) = exchange(
        addr,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\npayload",
    )
    .await;
    assert_eq!(answer, format!("v2 203.0.113.7:5555 {addr} payload"));
    // A trusted peer without a header is closed (a reset: its bytes were left unread) and
    // counted.
    let mut bare = TcpStream::connect(addr).await.expect("connect");
    bare.write_all(b"payload").await.expect("write");
    let mut answer = Vec::new();
    let _ = within(bare.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{answer:?}");
    assert_eq!(proxy.proxy_header_errors(), 1);
}

/// A UDP backend answering each datagram with "<name>:<datagram>".
async fn udp_backend(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// Sends `text` from `client` to `proxy`; the reply (which must come from `proxy`), or None
/// after 300 ms.
async fn udp_ask(client: &UdpSocket, proxy: SocketAddr, text: &str) -> Option<String> {
    client.send_to(text.as_bytes(), proxy).await.expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf))
        .await
        .ok()?
        .expect("recv");
    assert_eq!(from, proxy, "replies come from the listener's address");
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_keep_clients_on_their_backend_expire_and_are_capped() {
    let (a, b, c) = (
        udp_backend("a").await,
        udp_backend("b").await,
        udp_backend("c").await,
    );
    let udp_listener = |extra: &str| {
        format!(
            "{}[[listener]]\nname = \"u\"\naddress = \"127.0.0.1:0\"\nmode = \"udp\"\n{extra}\
             [[route]]\nlistener = \"u\"\npool = \"p\"\n",
            tcp_pool("p", "", &[a, b, c])
        )
    };
    let (_proxy, addr) = start(&udp_listener("idle_timeout = \"600ms\"\n")).await;
    let one = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let two = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..3 {
        assert_eq!(
            udp_ask(&one, addr, &format!("x{i}")).await,
            Some(format!("a:x{i}"))
        );
        assert_eq!(
            udp_ask(&two, addr, &format!("y{i}")).await,
            Some(format!("b:y{i}"))
        );
    }
    // Traffic within the idle timeout keeps the session; after it, a new session (and the
    // next backend in round robin).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        udp_ask(&one, addr, "again").await.as_deref(),
        Some("a:again")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        udp_ask(&one, addr, "later").await.as_deref(),
        Some("c:later")
    );

    // A cap of one session: a second client's datagrams are dropped.
    let (_capped, addr) = start(&udp_listener("max_sessions = 1\n")).await;
    assert_eq!(
        udp_ask(&one, addr, "first").await.as_deref(),
        Some("a:first")
    );
    assert_eq!(udp_ask(&two, addr, "second").await, None);
    assert_eq!(udp_ask(&one, addr, "more").await.as_deref(), Some("a:more"));
}

#[test]
fn stream_config_errors_name_file_line_and_reason() {
    let pool = "[[pool]]\nname = \"p\"\n";
    let cases = [
        (
            format!("{pool}[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\n[[route]]\nlistener = \"h\"\nsni = \"a.example\"\npool = \"p\"\n"),
            "l7.toml:8: sni routes need a tcp listener (\"h\" is http)",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\n[[route]]\nlistener = \"t\"\nhost = \"a.example\"\npool = \"p\"\n"),
            "l7.toml:9: host applies to http routes; \"t\" is a tcp listener (route tcp by sni)",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"udp\"\n[[route]]\nlistener = \"t\"\npath_prefix = \"/api\"\npool = \"p\"\n"),
            "l7.toml:9: path_prefix applies to http routes; \"t\" is a udp listener",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"udp\"\n[[route]]\nlistener = \"t\"\nsni = \"a.example\"\npool = \"p\"\n"),
            "l7.toml:9: sni routes need a tcp listener (\"t\" is udp)",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\n[[listener.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
            "l7.toml:6: a tcp listener cannot have [[listener.tls]] certificates (TLS is passed through; route it by sni)",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"quic\"\n"),
            "l7.toml:6: unknown variant `quic`, expected one of `http`, `tcp`, `udp`, `forward_proxy`",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\nheader_timeout = \"1s\"\n"),
            "l7.toml:7: header_timeout applies to http (and forward_proxy) listeners only",
        ),
        (
            format!("{pool}[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\nidle_timeout = \"1m\"\n"),
            "l7.toml:6: idle_timeout applies to tcp, udp and forward_proxy listeners only",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\nidle_timeout = \"0s\"\n"),
            "l7.toml:7: idle_timeout must be above zero",
        ),
        (
            format!("{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\nclient_hello_timeout = \"later\"\n"),
            "l7.toml:7: client_hello_timeout \"later\": expected number at 0",
        ),
        (
            format!("{pool}[[listener]]\nname = \"u\"\naddress = \"127.0.0.1:1\"\nmode = \"udp\"\nmax_sessions = 0\n"),
            "l7.toml:7: max_sessions must be at least 1",
        ),
        (
            format!("{pool}[[listener]]\nname = \"u\"\naddress = \"127.0.0.1:1\"\nmode = \"udp\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n"),
            "l7.toml:6: a udp listener cannot take proxy_protocol_from (PROXY headers come on streams)",
        ),
        (
            "[[pool]]\nname = \"p\"\nalgorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"\n\
             [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\n\
             [[route]]\nlistener = \"t\"\npool = \"p\"\n"
                .to_owned(),
            "l7.toml:11: pool \"p\" hashes on a header or cookie, which tcp connections do not carry (use hash_key = \"client_ip\")",
        ),
        (
            "[[pool]]\nname = \"p\"\nproxy_protocol = \"v2\"\n\
             [[listener]]\nname = \"u\"\naddress = \"127.0.0.1:1\"\nmode = \"udp\"\n\
             [[route]]\nlistener = \"u\"\npool = \"p\"\n"
                .to_owned(),
            "l7.toml:10: pool \"p\" sends PROXY headers, which udp listeners do not",
        ),
    ];
    for (text, expected) in cases {
        let err = L7Config::parse(&text, Path::new("l7.toml")).expect_err(&text);
        assert_eq!(err.to_string(), expected, "{text}");
    }
    // The keys parse where they belong.
    let ok = config(&format!(
        "{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:1\"\nmode = \"tcp\"\n\
         idle_timeout = \"1m\"\nclient_hello_timeout = \"2s\"\n\
         [[route]]\nlistener = \"t\"\nsni = \"*.Example.com\"\npool = \"p\"\n"
    ));
    assert_eq!(ok.listeners[0].mode, l7::ListenerMode::Tcp);
    assert_eq!(ok.listeners[0].stream.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        ok.routes[0].sni,
        Some(l7::HostMatch::Suffix(".example.com".to_owned()))
    );
}

/// A reload that changes only a udp listener's pool (its backends) keeps the listener and
/// reaches it: new sessions go to the new backend; a session already open stays on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_listener_follows_a_reloaded_pool() {
    let (a, b) = (udp_backend("a").await, udp_backend("b").await);
    let text = |backend: SocketAddr, listen: &str| {
        format!(
            "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"{backend}\"\n\
             [[listener]]\nname = \"u\"\naddress = \"{listen}\"\nmode = \"udp\"\n\
             [[route]]\nlistener = \"u\"\npool = \"p\"\n"
        )
    };
    let (mut proxy, addr) = start(&text(a, "127.0.0.1:0")).await;
    let one = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    assert_eq!(udp_ask(&one, addr, "x").await.as_deref(), Some("a:x"));

    let report = proxy
        .reload(&config(&text(b, &addr.to_string())))
        .await
        .expect("reload");
    assert_eq!(
        (report.listeners_started, report.pools_rebuilt),
        (0, 1),
        "the listener is kept, the pool rebuilt"
    );
    let two = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    assert_eq!(
        udp_ask(&two, addr, "y").await.as_deref(),
        Some("b:y"),
        "a new session uses the reloaded pool"
    );
    assert_eq!(udp_ask(&one, addr, "z").await.as_deref(), Some("a:z"));
}

/// Listeners take bursts of connections: their accept queue is the kernel's limit
/// (`net.core.somaxconn`) up to 4096, not the standard library's 128, whose overflow costs
/// each client whose SYN is dropped a one-second retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_queue_bursts_of_connections() {
    let a = echo_backend("a").await;
    let (_proxy, addr) = start(&format!("{}{}", tcp_pool("p", "", &[a]), tcp_listener(""))).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss");
    let listing = String::from_utf8_lossy(&out.stdout);
    // LISTEN  Recv-Q  Send-Q (the backlog)  Local  Peer
    let backlog: Option<u32> = listing
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok());
    assert_eq!(backlog, Some(somaxconn.min(4096)), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_resets_are_passed_on_as_resets() {
    // A backend that reports how each accepted connection ended.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let b = backend.local_addr().expect("addr");
    let (ends, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = backend.accept().await {
            let ends = ends.clone();
            tokio::spawn(async move {
                tcp.write_all(b"hi\n").await?;
                let mut buf = [0u8; 64];
                let end = loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(_) => continue,
                        Err(err) => break Err(err.kind()),
                    }
                };
                let _ = ends.send(end);
                std::io::Result::Ok(())
            });
        }
    });
    let (_proxy, addr) = start(&format!("{}{}", tcp_pool("p", "", &[b]), tcp_listener(""))).await;
    // A client that closes normally: the backend sees EOF.
    let (mut tcp, greeting) = open(addr).await;
    assert_eq!(greeting, "hi");
    tcp.shutdown().await.expect("shutdown");
    assert_eq!(within(ended.recv()).await, Some(Ok(())));
    // A client that resets (SO_LINGER 0, then close): so does lb, towards the backend.
    let (tcp, _) = open(addr).await;
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(tcp);
    assert_eq!(
        within(ended.recv()).await,
        Some(Err(std::io::ErrorKind::ConnectionReset))
    );
}

#[test]
fn tcp_clients_gone_before_accept_cost_no_backend_connection() {
    use lb_tests::lb_run::{LbRun, metric, wait_for};
    // The backend never accepts: whatever lb connects waits in its queue, to be counted.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    backend.set_nonblocking(true).expect("nonblocking");
    let b = backend.local_addr().expect("addr");
    let lb = LbRun::start(
        "stream-reset",
        &format!("{}{}", tcp_pool("p", "", &[b]), tcp_listener("")),
        &[],
    );
    // With lb stopped, the kernel completes handshakes into the accept queue; each client
    // resets at once, as a connection flood does.
    lb.signal("STOP");
    // The signal is delivered on its own time: an lb still running would accept some first.
    wait_for("lb stopped", Duration::from_secs(10), || {
        lb_tests::process_state(lb.pid()) == Some('T')
    });
    for _ in 0..20 {
        let tcp = std::net::TcpStream::connect(lb.listener("t")).expect("connect");
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    lb.signal("CONT");
    let value = |line: &str| metric(&lb, line);
    wait_for("the reset clients counted", Duration::from_secs(10), || {
        value("lb_stream_connections_total{listener=\"t\",outcome=\"client_reset\"}") == 20.0
    });
    assert!(
        matches!(backend.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "lb connected to the backend for a client that was gone"
    );
    // A live client still goes through.
    let _live = std::net::TcpStream::connect(lb.listener("t")).expect("connect");
    wait_for(
        "the live client's backend connection",
        Duration::from_secs(10),
        || backend.accept().is_ok(),
    );
}
