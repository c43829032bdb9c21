//! Who the caller is, end to end through the in-process L7 tier: API keys (route `api_key`
//! with consumers from the `[api_keys]` file: 401 / 403 / 200, the consumer header at the
//! backend, the key taken off, forged consumer headers replaced or removed, query keys, the
//! consumers file re-read on reload, the auth metric), client certificates on HTTPS listeners
//! (required and optional, a certificate of another CA refused, X-Forwarded-Client-Cert at
//! the backend only for verified ones, route `client_cert = true`), and a pool presenting a
//! client certificate to a backend that requires one. Certificates are made here with rcgen
//! (a CA, server and client certificates, and a second CA nobody trusts); every socket is on
//! 127.0.0.1; files go to a private directory removed at the end.
use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::l7::{self, L7Config};
use lb_tests::echo_backend::exchange_on;
use lb_tests::temp_dir::TempDir;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

/// A certificate authority for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca");
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `cn` (and `dns` as SAN), for servers or clients.
    fn issue(&self, cn: &str, dns: &[&str], client: bool) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Test Org");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs")
}

fn private_key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client trusting `ca`, presenting `identity` if given.
fn client_tls(ca: &Ca, identity: Option<&Issued>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(chain(&id.cert), private_key(&id.key))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Serves each connection with an echo of the request: `uri: ...`, then its headers, one
/// `name: value` per line.
async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) {
    let service = service_fn(|req: Request<Incoming>| async move {
        let mut text = format!("uri: {}\n", req.uri());
        for (name, value) in req.headers() {
            text += &format!("{name}: {}\n", value.to_str().unwrap_or("?"));
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A plain HTTP echo backend.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_echo(tcp));
        }
    });
    addr
}

/// An HTTPS echo backend that requires a client certificate signed by `ca`.
async fn mtls_backend(server: &Issued, ca: &Ca) -> SocketAddr {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&server.cert), private_key(&server.key))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    serve_echo(stream).await;
                }
            });
        }
    });
    addr
}

/// The answer to one request: (status, head lines lowercased, body); status 0 when the
/// exchange failed (refused handshake, connection closed).
type Answer = (u16, Vec<String>, String);

async fn http(addr: SocketAddr, request: &str) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    exchange_on(tcp, request).await
}

async fn https(addr: SocketAddr, tls: &tokio_rustls::TlsConnector, request: &str) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    match tls.connect(name, tcp).await {
        Ok(stream) => exchange_on(stream, request).await,
        Err(_) => (0, Vec::new(), String::new()),
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n{extra}\r\n")
}

/// The values of header `name` the backend saw (echo body lines).
fn seen<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn config(text: &str) -> L7Config {
    L7Config::parse(text, Path::new("lb.toml")).expect("config")
}

fn sha256_hex(text: &str) -> String {
    ring_hex(text.as_bytes())
}

fn ring_hex(bytes: &[u8]) -> String {
    lb::config::api_keys::to_hex(&lb::config::api_keys::sha256(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admit_known_consumers_and_refuse_the_rest() {
    let dir = TempDir::new("keys");
    let consumers = dir.write(
        "consumers.toml",
        &format!(
            "[[consumer]]\nname = \"acme\"\nkey = \"acme-key-1\"\n\
             [[consumer]]\nname = \"globex\"\nkey_sha256 = \"{}\"\n",
            sha256_hex("globex-key")
        ),
    );
    let echo = echo_backend().await;
    let text = format!(
        "[api_keys]\nfile = \"{}\"\n\
         [[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"keyed\"\nlistener = \"l\"\npath_prefix = \"/keyed\"\npool = \"web\"\n\
           api_key = {{ allow = [\"acme\"] }}\n\
         [[route]]\nname = \"query\"\nlistener = \"l\"\npath_prefix = \"/query\"\npool = \"web\"\n\
           api_key = {{ query = \"apikey\", consumer_header = \"x-who\" }}\n\
         [[route]]\nname = \"open\"\nlistener = \"l\"\npool = \"web\"\n",
        consumers.display()
    );
    let status = Arc::new(arc_swap::ArcSwap::from_pointee(
        lb::admin::status::Status::default(),
    ));
    let metrics = lb::admin::metrics::Metrics::new(status);
    let observer = l7::Observer::new(Some(metrics.l7.clone()), None);
    let mut running = l7::serve_observed(config(&text), observer)
        .await
        .expect("serve");
    let addr = running.listeners[0].1;

    // No key, an unknown key: 401 with a challenge.
    for extra in ["", "X-Api-Key: nope\r\n"] {
        let (status, headers, body) = http(addr, &get("/keyed/a", extra)).await;
        assert_eq!(status, 401, "{extra:?}: {body}");
        assert!(
            headers.contains(&"www-authenticate: apikey".to_owned()),
            "{headers:?}"
        );
    }
    // The key twice: ambiguous, 401.
    let (status, _, _) = http(
        addr,
        &get(
            "/keyed/a",
            "X-Api-Key: acme-key-1\r\nX-Api-Key: acme-key-1\r\n",
        ),
    )
    .await;
    assert_eq!(status, 401);
    // Known, not allowed here: 403.
    let (status, _, body) = http(addr, &get("/keyed/a", "X-Api-Key: globex-key\r\n")).await;
    assert_eq!(status, 403, "{body}");
    // Allowed: the consumer upstream (a forged copy replaced), the key gone.
    let (status, _, body) = http(
        addr,
        &get(
            "/keyed/a",
            "X-Api-Key: acme-key-1\r\nX-Consumer: admin\r\nX-Consumer: root\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-consumer"), ["acme"], "{body}");
    assert!(seen(&body, "x-api-key").is_empty(), "key removed: {body}");

    // A query-parameter key: taken out of the query, the rest kept; its own consumer header.
    let (status, _, body) = http(
        addr,
        &get("/query/x?a=1&apikey=globex%2Dkey&b=2", "X-Who: forged\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "uri"), ["/query/x?a=1&b=2"], "{body}");
    assert_eq!(seen(&body, "x-who"), ["globex"], "{body}");
    let (status, _, body) = http(addr, &get("/query/x?apikey=acme-key-1", "")).await;
    assert_eq!(status, 200, "every consumer allowed by default");
    assert_eq!(seen(&body, "uri"), ["/query/x"], "{body}");
    assert_eq!(http(addr, &get("/query/x?apikey=bad", "")).await.0, 401);

    // A route without api_key: a client's identity headers never reach the backend.
    let (status, _, body) = http(
        addr,
        &get(
            "/open",
            "X-Consumer: admin\r\nX-Who: admin\r\nX-Api-Key: k\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(seen(&body, "x-consumer").is_empty(), "{body}");
    assert!(seen(&body, "x-who").is_empty(), "{body}");
    assert_eq!(seen(&body, "x-api-key"), ["k"], "not a keyed route");

    let rendered = metrics.render();
    for (series, n) in [
        ("route=\"keyed\",policy=\"api_key\",result=\"missing\"", 1),
        ("route=\"keyed\",policy=\"api_key\",result=\"invalid\"", 2),
        ("route=\"keyed\",policy=\"api_key\",result=\"forbidden\"", 1),
        ("route=\"keyed\",policy=\"api_key\",result=\"allowed\"", 1),
        ("route=\"query\",policy=\"api_key\",result=\"allowed\"", 2),
        ("route=\"query\",policy=\"api_key\",result=\"invalid\"", 1),
    ] {
        let line = format!("lb_auth_results_total{{{series}}} {n}");
        assert!(rendered.contains(&line), "{line}\n{rendered}");
    }
    assert!(!rendered.contains("route=\"open\",policy"), "{rendered}");

    // The consumers file changes (acme's key rotated); a reload of the same backend file
    // re-reads it: the new key works, the old one is unknown.
    std::fs::write(
        &consumers,
        "[[consumer]]\nname = \"acme\"\nkey = \"acme-key-2\"\n",
    )
    .expect("rewrite");
    // (The listener keeps its port, so it is kept as it is.)
    let text = text.replace("127.0.0.1:0", &addr.to_string());
    let report = running.reload(&config(&text)).await.expect("reload");
    assert_eq!(report.listeners_started, 0);
    let (status, _, body) = http(addr, &get("/keyed/a", "X-Api-Key: acme-key-2\r\n")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-consumer"), ["acme"]);
    assert_eq!(
        http(addr, &get("/keyed/a", "X-Api-Key: acme-key-1\r\n"))
            .await
            .0,
        401
    );
    assert_eq!(
        http(addr, &get("/keyed/a", "X-Api-Key: globex-key\r\n"))
            .await
            .0,
        401,
        "globex is gone"
    );

    // A consumers file that became unreadable or bad is refused with the backend file's line.
    std::fs::write(&consumers, "[[consumer]]\nname = \"acme\"\n").expect("rewrite");
    let e = L7Config::parse(&text, Path::new("lb.toml")).expect_err("bad consumers");
    let e = e.to_string();
    assert!(e.starts_with("lb.toml:2: api_keys file: "), "{e}");
    assert!(
        e.contains("consumers.toml:2: consumer \"acme\": no key"),
        "{e}"
    );
}

/// Listener TLS files plus a client CA, in `dir`; the listener section.
fn mtls_listener(dir: &TempDir, ca: &Ca, name: &str, client_auth: &str) -> String {
    let server = ca.issue("localhost", &["localhost"], false);
    let cert = dir.write(&format!("{name}.pem"), &server.cert);
    let key = dir.write(&format!("{name}.key"), &server.key);
    let client_ca = dir.write("client-ca.pem", &ca.pem());
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n\
         client_ca = \"{}\"\nclient_auth = \"{client_auth}\"\n\
           [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
        client_ca.display(),
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_on_required_and_optional_listeners() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new("Test CA");
    let other = Ca::new("Other CA");
    let echo = echo_backend().await;
    let text = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{echo}\"\n\
         {}{}\
         [[route]]\nlistener = \"required\"\npool = \"web\"\n\
         [[route]]\nlistener = \"optional\"\npath_prefix = \"/private\"\npool = \"web\"\nclient_cert = true\n\
         [[route]]\nlistener = \"optional\"\npool = \"web\"\n",
        mtls_listener(&dir, &ca, "required", "required"),
        mtls_listener(&dir, &ca, "optional", "optional"),
    );
    let running = l7::serve(config(&text)).await.expect("serve");
    let (required, optional) = (running.listeners[0].1, running.listeners[1].1);

    let client = ca.issue("client-a", &["client-a.test"], true);
    let with_cert = client_tls(&ca, Some(&client));
    let without_cert = client_tls(&ca, None);
    let foreign = client_tls(&ca, Some(&other.issue("intruder", &[], true)));
    let forged = "X-Forwarded-Client-Cert: Subject=\"CN=admin\"\r\n";

    // Required: no certificate, or one of another CA: no request gets through.
    assert_eq!(https(required, &without_cert, &get("/", "")).await.0, 0);
    assert_eq!(https(required, &foreign, &get("/", "")).await.0, 0);
    let (status, _, body) = https(required, &with_cert, &get("/", forged)).await;
    assert_eq!(status, 200, "{body}");
    let xfcc = seen(&body, "x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "the forged copy replaced: {body}");
    let der = chain(&client.cert).remove(0);
    assert_eq!(
        xfcc[0],
        format!(
            "Hash={};Subject=\"O=Test Org,CN=client-a\";DNS=client-a.test",
            ring_hex(der.as_ref())
        )
    );

    // Optional: both get in; only the verified client's request carries the header.
    let (status, _, body) = https(optional, &without_cert, &get("/", forged)).await;
    assert_eq!(status, 200, "{body}");
    assert!(seen(&body, "x-forwarded-client-cert").is_empty(), "{body}");
    let (status, _, body) = https(optional, &with_cert, &get("/", "")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-forwarded-client-cert").len(), 1, "{body}");
    // ... but a certificate it presents must still verify.
    assert_eq!(https(optional, &foreign, &get("/", "")).await.0, 0);
    // A route that requires a verified certificate.
    let (status, _, body) = https(optional, &without_cert, &get("/private", "")).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "client certificate required\n")
    );
    assert_eq!(
        https(optional, &with_cert, &get("/private", "")).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_presents_its_client_certificate_to_backends_that_require_one() {
    let dir = TempDir::new("upstream");
    let ca = Ca::new("Backend CA");
    let backend = mtls_backend(&ca.issue("localhost", &["localhost"], false), &ca).await;
    let ca_file = dir.write("ca.pem", &ca.pem());
    let lb_client = ca.issue("lb", &[], true);
    let cert = dir.write("lb.pem", &lb_client.cert);
    let key = dir.write("lb.key", &lb_client.key);
    let text = |keys: &str, port: u16| {
        format!(
            "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\ntls = true\n\
             ca_file = \"{}\"\ntls_server_name = \"localhost\"\n{keys}\
             [[pool.backend]]\naddress = \"{backend}\"\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:{port}\"\n\
             [[route]]\nlistener = \"l\"\npool = \"web\"\n",
            ca_file.display()
        )
    };
    let with_keys = format!(
        "tls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut running = l7::serve(config(&text(&with_keys, 0)))
        .await
        .expect("serve");
    let addr = running.listeners[0].1;
    let (status, _, body) = http(addr, &get("/", "")).await;
    assert_eq!(status, 200, "{body}");

    let report = running
        .reload(&config(&text("", addr.port())))
        .await
        .expect("reload");
    assert_eq!(report.pools_rebuilt, 1);
    assert_eq!(
        http(addr, &get("/", "")).await.0,
        502,
        "no client certificate"
    );

    let report = running
        .reload(&config(&text(&with_keys, addr.port())))
        .await
        .expect("reload");
    assert_eq!(report.pools_rebuilt, 1);
    assert_eq!(http(addr, &get("/", "")).await.0, 200);
    let report = running
        .reload(&config(&text(&with_keys, addr.port())))
        .await
        .expect("reload");
    assert_eq!(report.pools_rebuilt, 0, "same files, same content: kept");
}

#[test]
fn identity_settings_are_checked_with_the_line() {
    let dir = TempDir::new("errors");
    let ca = Ca::new("CA");
    let a = ca.issue("a", &["a.test"], true);
    let b = ca.issue("b", &["b.test"], true);
    let a_cert = dir.write("a.pem", &a.cert);
    let b_key = dir.write("b.key", &b.key);
    let ca_file = dir.write("ca.pem", &ca.pem());
    let consumers = dir.write(
        "consumers.toml",
        "[[consumer]]\nname = \"acme\"\nkey = \"k\"\n",
    );
    let missing = dir.0.join("missing.toml");
    let head = "[[pool]]\nname = \"web\"\n";
    let backend = "[[pool.backend]]\naddress = \"127.0.0.1:1\"\n";
    let pool = format!("{head}{backend}");
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";
    for (text, line, reason) in [
        (
            format!(
                "{head}tls = true\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n{backend}",
                a_cert.display(),
                b_key.display()
            ),
            5,
            "is not the key of the certificate",
        ),
        (
            format!(
                "{head}tls = true\ntls_client_cert = \"{}\"\n{backend}",
                a_cert.display()
            ),
            4,
            "tls_client_cert needs tls_client_key",
        ),
        (
            format!("{pool}{listener}client_ca = \"{}\"\n", ca_file.display()),
            8,
            "client_ca needs an HTTPS listener",
        ),
        (
            format!("{pool}{listener}client_auth = \"optional\"\n"),
            8,
            "client_auth needs client_ca",
        ),
        (
            format!("[api_keys]\nfile = \"{}\"\n{pool}", missing.display()),
            2,
            "api_keys file: cannot read",
        ),
        (
            format!(
                "[api_keys]\nfile = \"{}\"\n{pool}{listener}[[route]]\nlistener = \"l\"\npool = \"web\"\napi_key = {{ allow = [\"nobody\"] }}\n",
                consumers.display()
            ),
            13,
            "allow names \"nobody\"",
        ),
        (
            format!(
                "{pool}{listener}[[route]]\nlistener = \"l\"\npool = \"web\"\napi_key = {{}}\n"
            ),
            11,
            "add [api_keys]",
        ),
        (
            format!(
                "{pool}{listener}[[route]]\nlistener = \"l\"\npool = \"web\"\nclient_cert = true\n"
            ),
            11,
            "has no client_ca",
        ),
    ] {
        let e = L7Config::parse(&text, Path::new("lb.toml")).expect_err(&text);
        assert_eq!(e.line, line, "{e}\n{text}");
        assert!(e.to_string().contains(reason), "{e}\n{text}");
    }
}

/// `lb check-config` reads the consumers file and the pool's client certificate as `lb run`
/// does: a bad entry or a key that is not the certificate's is `FILE:LINE: reason`, exit 1.
#[test]
fn check_config_reports_bad_identity_files() {
    let dir = TempDir::new("check");
    let ca = Ca::new("CA");
    let (a, b) = (ca.issue("a", &[], true), ca.issue("b", &[], true));
    dir.write("a.pem", &a.cert);
    dir.write("b.key", &b.key);
    dir.write("consumers.toml", "[[consumer]]\nname = \"acme\"\n");
    dir.write(
        "keys.toml",
        "[api_keys]\nfile = \"consumers.toml\"\n[[pool]]\nname = \"web\"\n",
    );
    dir.write(
        "pool.toml",
        "[[pool]]\nname = \"web\"\ntls = true\ntls_client_cert = \"a.pem\"\ntls_client_key = \"b.key\"\n",
    );
    for (file, want) in [
        (
            "keys.toml",
            "lb: keys.toml:2: api_keys file: consumers.toml:2: consumer \"acme\": no key or key_sha256\n",
        ),
        (
            "pool.toml",
            "lb: pool.toml:5: tls_client_key \"b.key\" is not the key of the certificate in \"a.pem\"\n",
        ),
    ] {
        let out = std::process::Command::new(lb_tests::lb_bin())
            .current_dir(&dir.0)
            .args(["check-config", file])
            .output()
            .expect("run lb check-config");
        assert_eq!(out.status.code(), Some(1), "{file}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    }
}
