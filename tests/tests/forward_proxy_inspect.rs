//! TLS inspection on a forward-proxy listener (`inspect_hosts`), through `lb run` with curl as
//! the client. Certificates are made here with rcgen: lb's inspection CA (what curl trusts),
//! an origin CA (what lb trusts, `inspect_ca_file`) with an HTTPS origin on 127.0.0.1 for
//! `localhost` and `127.0.0.1`, and a self-signed origin nobody trusts. Shown: a request to an
//! inspected name verifies against lb's CA only (the certificate was minted for the name),
//! reaches the origin and is logged with its method, path and bytes; a path a rule denies is
//! 403 inside the tunnel; a ClientHello naming another host closes the tunnel; a name not
//! listed is spliced (the client sees the origin's own certificate); an origin whose
//! certificate lb cannot verify is 502; with `[listener.cache]`, a repeated GET inside
//! inspected tunnels is answered from the cache. Files go to a private directory removed at the end,
//! also when an assertion fails.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_tests::lb_run::{LbRun, http, wait_for};
use lb_tests::temp_dir::TempDir;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
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

    /// A server certificate for `names` (names and addresses), and its key.
    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert, key)
    }
}

/// An HTTPS origin on 127.0.0.1 with `cert`, answering `origin saw METHOD PATH`, and the
/// count of requests it answered.
async fn https_origin(cert: &rcgen::Certificate, key: &KeyPair) -> (SocketAddr, Arc<AtomicU64>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let body = format!("origin saw {} {}", req.method(), req.uri());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, answered)
}

/// What curl saw through `proxy`: (CONNECT status, final status, body, curl's stderr).
fn curl(proxy: SocketAddr, cacert: &str, url: &str) -> (u16, u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "20",
            "-x",
            &format!("http://{proxy}"),
        ])
        .args(["--cacert", cacert])
        .args(["-w", "\n%{http_connect} %{http_code}"])
        .arg(url)
        .output()
        .expect("curl (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut codes = codes.split(' ').map(|c| c.parse().unwrap_or(0));
    (
        codes.next().unwrap_or(0),
        codes.next().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first access log line that contains every one of `parts`, parsed.
fn logged(log: &Path, parts: &[&str]) -> serde_json::Value {
    let mut found = String::new();
    wait_for("the access log line", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            Some(line) => {
                found = line.to_owned();
                true
            }
            None => false,
        }
    });
    serde_json::from_str(&found).expect("JSON line")
}

#[test]
fn inspected_names_are_terminated_checked_per_path_and_logged_others_spliced() {
    let dir = TempDir::new("main");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let inspect_ca = Ca::new("lb test inspection CA");
    let origin_ca = Ca::new("origin test CA");
    let (origin_cert, origin_key) = origin_ca.issue(&["localhost", "127.0.0.1"]);
    let (origin, _) = runtime.block_on(https_origin(&origin_cert, &origin_key));
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (untrusted, _) = runtime.block_on(https_origin(&stranger.cert, &stranger.key_pair));
    let lb_ca = dir
        .write("inspect-ca.pem", &inspect_ca.cert.pem())
        .display()
        .to_string();
    let lb_ca_key = dir
        .write("inspect-ca.key", &inspect_ca.key.serialize_pem())
        .display()
        .to_string();
    let origin_roots = dir
        .write("origin-ca.pem", &origin_ca.cert.pem())
        .display()
        .to_string();
    let log = dir.0.join("access.log");
    let (o, u) = (origin.port(), untrusted.port());
    let file = format!(
        r#"
[[listener]]
name = "fwd"
address = "127.0.0.1:0"
mode = "forward_proxy"
connect_http10 = true
inspect_hosts = ["localhost"]
inspect_ca_cert = "{lb_ca}"
inspect_ca_key = "{lb_ca_key}"
inspect_ca_file = "{origin_roots}"
  [[listener.egress_rule]]
  name = "no-secrets"
  action = "deny"
  paths = ["/secret/*"]
  [[listener.egress_rule]]
  name = "origins"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}, {u}]
"#
    );
    let lb = LbRun::start("inspect", &file, &["--access-log", &log.to_string_lossy()]);
    let proxy = lb.listener("fwd");

    // Inspected: the certificate curl gets verifies against lb's CA (the origin's is from
    // another CA), for the name asked; the origin answers the request lb sent on.
    let (connect, status, body, verbose) =
        curl(proxy, &lb_ca, &format!("https://localhost:{o}/hello?x=1"));
    assert_eq!((connect, status), (200, 200), "{body}\n{verbose}");
    assert_eq!(body, "origin saw GET /hello?x=1", "{verbose}");
    assert!(verbose.contains("lb test inspection CA"), "{verbose}");
    assert!(verbose.contains("subject: CN=localhost"), "{verbose}");
    let line = logged(&log, &["\"method\":\"GET\"", "\"path\":\"/hello?x=1\""]);
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["inspected"], true, "{line}");
    assert_eq!(line["rule"], "origins", "{line}");
    assert_eq!(line["target"], format!("localhost:{o}"), "{line}");
    assert_eq!(
        line["bytes_down"].as_u64(),
        Some("origin saw GET /hello?x=1".len() as u64),
        "{line}"
    );
    let tunnel = logged(&log, &["\"method\":\"CONNECT\"", "\"inspected\":true"]);
    assert_eq!(tunnel["sni"], "localhost", "{tunnel}");

    // A path the rules deny: 403 inside the tunnel, logged with the rule.
    let (connect, status, body, verbose) =
        curl(proxy, &lb_ca, &format!("https://localhost:{o}/secret/key"));
    assert_eq!((connect, status), (200, 403), "{body}\n{verbose}");
    let line = logged(&log, &["\"path\":\"/secret/key\""]);
    assert_eq!(line["rule"], "no-secrets", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    let metrics = http("GET", lb.admin, "/metrics").1;
    assert!(
        metrics.contains(
            "lb_egress_decisions_total{listener=\"fwd\",decision=\"deny\",rule=\"no-secrets\"} 1"
        ),
        "{metrics}"
    );

    // Not listed (a literal address is never inspected): spliced, the origin's own
    // certificate, which lb's CA does not vouch for.
    let spliced = format!("https://127.0.0.1:{o}/plain");
    let (connect, status, body, verbose) = curl(proxy, &origin_roots, &spliced);
    assert_eq!((connect, status), (200, 200), "{body}\n{verbose}");
    assert_eq!(body, "origin saw GET /plain");
    assert!(verbose.contains("origin test CA"), "{verbose}");
    let (_, status, _, _) = curl(proxy, &lb_ca, &spliced);
    assert_eq!(
        status, 0,
        "lb's CA does not verify the origin's own certificate"
    );

    // A ClientHello for another name than the CONNECT host: closed before any certificate is
    // minted for it (openssl s_client sends CONNECT over HTTP/1.0, hence connect_http10).
    let out = Command::new("openssl")
        .args(["s_client", "-proxy", &proxy.to_string()])
        .args([
            "-connect",
            &format!("localhost:{o}"),
            "-servername",
            "evil.test",
        ])
        .args(["-CAfile", &lb_ca])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CONNECTED"), "{text}");
    assert!(!text.contains(", Cipher is TLS_"), "no handshake: {text}");
    let line = logged(&log, &["\"sni\":\"evil.test\""]);
    assert_eq!(line["rule"], "sni_mismatch", "{line}");

    // An origin lb cannot verify: 502 to the request.
    let (connect, status, body, verbose) = curl(proxy, &lb_ca, &format!("https://localhost:{u}/"));
    assert_eq!((connect, status), (200, 502), "{body}\n{verbose}");
    drop(lb);
}

#[test]
fn gets_inside_inspected_tunnels_are_cached() {
    let dir = TempDir::new("cache");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let inspect_ca = Ca::new("lb test inspection CA");
    let origin_ca = Ca::new("origin test CA");
    let (origin_cert, origin_key) = origin_ca.issue(&["localhost"]);
    let (origin, answered) = runtime.block_on(https_origin(&origin_cert, &origin_key));
    let lb_ca = dir
        .write("inspect-ca.pem", &inspect_ca.cert.pem())
        .display()
        .to_string();
    let lb_ca_key = dir
        .write("inspect-ca.key", &inspect_ca.key.serialize_pem())
        .display()
        .to_string();
    let origin_roots = dir
        .write("origin-ca.pem", &origin_ca.cert.pem())
        .display()
        .to_string();
    let log = dir.0.join("access.log");
    let o = origin.port();
    // The origin says nothing about freshness: default_ttl makes its 200s storable.
    let file = format!(
        r#"
[[listener]]
name = "fwd"
address = "127.0.0.1:0"
mode = "forward_proxy"
inspect_hosts = ["localhost"]
inspect_ca_cert = "{lb_ca}"
inspect_ca_key = "{lb_ca_key}"
inspect_ca_file = "{origin_roots}"
  [listener.cache]
  default_ttl = "1m"
  [[listener.egress_rule]]
  name = "origin"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}]
"#
    );
    let lb = LbRun::start(
        "inspect-cache",
        &file,
        &["--access-log", &log.to_string_lossy()],
    );
    let proxy = lb.listener("fwd");
    let url = format!("https://localhost:{o}/pkg.deb");
    for (n, status) in [(1, "MISS"), (2, "HIT")] {
        let (connect, code, body, verbose) = curl(proxy, &lb_ca, &url);
        assert_eq!((connect, code), (200, 200), "{body}\n{verbose}");
        assert_eq!(body, "origin saw GET /pkg.deb");
        let header = format!("x-cache-status: {status}");
        assert!(
            verbose
                .to_ascii_lowercase()
                .contains(&header.to_ascii_lowercase()),
            "request {n}: {verbose}"
        );
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    let line = logged(&log, &["\"path\":\"/pkg.deb\"", "\"cache\":\"HIT\""]);
    assert_eq!(line["inspected"], true, "{line}");
    drop(lb);
}
