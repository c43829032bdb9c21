//! HTTP/2 abuse against lb's HTTP listeners (h2c prior knowledge and h2 over TLS), with
//! hand-built frames (an HTTP/2 client library will not send floods): control-frame floods
//! (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, unknown types), rapid reset, CONTINUATION and
//! empty DATA floods, a stream storm beyond the concurrent-stream limit and oversized header
//! lists. Each
//! attacking connection must end (GOAWAY or close) while a well-behaved HTTP/2 client on
//! another connection is served, and the close is counted in
//! `lb_http2_connections_closed_total`. Waits are on events (a GOAWAY, EOF, a counter),
//! bounded only by `PATIENCE` so a broken defence fails instead of hanging.
use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use lb::l7::{self, L7Config};
use lb_tests::echo_backend::echo_backend;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Generous bound for an attack to be cut off (a defence that never acts fails the test).
const PATIENCE: Duration = Duration::from_secs(60);
/// Frames an attacker sends: 100 times what the defences allow.
const FLOOD: usize = 100_000;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2): 7-bit-prefix length.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// The header block of `GET path` on `site.test` with `extra` (name, value) headers: static
/// table entries and literals without indexing (RFC 7541 §6.2.2), so no HPACK state.
fn get_block(path: &str, scheme_https: bool, extra: &[(&str, &[u8])]) -> Vec<u8> {
    // :method GET, :scheme http / https.
    let mut block = vec![0x82, if scheme_https { 0x87 } else { 0x86 }];
    // :path (static name 4), :authority (static name 1).
    block.push(0x04);
    hpack_string(&mut block, path.as_bytes());
    block.push(0x01);
    hpack_string(&mut block, b"site.test");
    for (name, value) in extra {
        block.push(0x00);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value);
    }
    block
}

/// What lb sent an attacking connection before it ended.
#[derive(Debug, Default)]
struct Ending {
    /// Frames by type.
    frames: HashMap<u8, u64>,
    /// RST_STREAM error codes, by code.
    resets: HashMap<u32, u64>,
    /// The GOAWAY's error code (None: the connection closed without one).
    goaway: Option<u32>,
    /// The first HEADERS block lb sent on each stream (response heads).
    heads: HashMap<u32, Vec<u8>>,
}

impl Ending {
    fn count(&self, kind: u8) -> u64 {
        self.frames.get(&kind).copied().unwrap_or(0)
    }

    /// Ended by lb: a GOAWAY with an error, or closed without one.
    fn cut_off(&self) -> bool {
        self.goaway.is_none_or(|code| code != 0)
    }
}

/// Sends `opening` then `repeated` `times` on `io` (stopping at the first write error: lb
/// closed), while reading lb's frames until its GOAWAY or the end of the connection.
async fn attack<S>(io: S, opening: Vec<u8>, repeated: &[u8], times: usize) -> Ending
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(io);
    let mut flood = opening;
    flood.reserve(repeated.len() * times);
    for _ in 0..times {
        flood.extend_from_slice(repeated);
    }
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&flood).await;
        // Held open: lb, not the attacker, ends the connection.
        std::future::pending::<()>().await;
        drop(write);
    });
    let reading = async {
        let mut ending = Ending::default();
        let mut head = [0; 9];
        loop {
            if read.read_exact(&mut head).await.is_err() {
                return ending;
            }
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, stream) = (
                head[3],
                u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
            );
            let mut payload = vec![0; length];
            if read.read_exact(&mut payload).await.is_err() {
                return ending;
            }
            *ending.frames.entry(kind).or_default() += 1;
            match kind {
                GOAWAY if length >= 8 => {
                    ending.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                    return ending;
                }
                RST_STREAM if length == 4 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    *ending.resets.entry(code).or_default() += 1;
                }
                HEADERS => {
                    ending.heads.entry(stream).or_insert(payload);
                }
                _ => {}
            }
        }
    };
    let ending = tokio::time::timeout(PATIENCE, reading).await;
    writer.abort();
    ending.expect("lb never ended the attacking connection")
}

/// An lb L7 tier in-process with a plain and an HTTPS listener, and its metrics.
struct Lb {
    _running: l7::RunningL7,
    plain: SocketAddr,
    tls: SocketAddr,
    metrics: lb::admin::metrics::Metrics,
    cert: TempFile,
    _key: TempFile,
}

/// A file removed when the test ends, failed or not.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start(tag: &str) -> Lb {
    let echo = echo_backend().await;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let dir = std::env::temp_dir();
    let base = format!("lbt-h2-{}-{tag}", std::process::id());
    let cert = TempFile(dir.join(format!("{base}.pem")));
    let key = TempFile(dir.join(format!("{base}.key")));
    std::fs::write(&cert.0, generated.cert.pem()).expect("write cert");
    std::fs::write(&key.0, generated.key_pair.serialize_pem()).expect("write key");
    let text = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:0\"\nmax_header_bytes = 8192\n\
         [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[route]]\nlistener = \"plain\"\npool = \"web\"\n\
         [[route]]\nlistener = \"tls\"\npool = \"web\"\n",
        cert.0.display(),
        key.0.display()
    );
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let status = Arc::new(arc_swap::ArcSwap::from_pointee(
        lb::admin::status::Status::default(),
    ));
    let metrics = lb::admin::metrics::Metrics::new(status);
    let observer = l7::Observer::new(Some(metrics.l7.clone()), None);
    let running = l7::serve_observed(config, observer).await.expect("serve");
    Lb {
        plain: running.listeners[0].1,
        tls: running.listeners[1].1,
        _running: running,
        metrics,
        cert,
        _key: key,
    }
}

impl Lb {
    /// The close counters, for the test's output.
    fn report(&self) -> String {
        let rendered = self.metrics.render();
        rendered
            .lines()
            .filter(|l| l.starts_with("lb_http2_connections_closed_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `lb_http2_connections_closed_total` of `listener` for `reason`.
    fn closed(&self, listener: &str, reason: &str) -> u64 {
        let series = format!(
            "lb_http2_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}} "
        );
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the counter reaches `n` (lb counts right after it acts).
    async fn wait_closed(&self, listener: &str, reason: &str, n: u64) {
        let reached = async {
            while self.closed(listener, reason) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(PATIENCE, reached)
            .await
            .unwrap_or_else(|_| panic!("{listener}/{reason} never reached {n}"));
    }

    async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.cert.0).expect("pem") {
            roots.add(cert.expect("cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.tls).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("handshake")
    }

    /// A well-behaved HTTP/2 client (lb's load generator, hyper underneath): `requests` GETs
    /// on one connection, all answered 2xx.
    async fn served(&self, tls: bool, requests: u64) {
        let url = if tls {
            format!("https://localhost:{}/good", self.tls.port())
        } else {
            format!("http://{}/good", self.plain)
        };
        let report = lb::loadgen::run(lb::loadgen::BenchConfig {
            target: lb::loadgen::Target::parse(&[url], "GET", &[], Bytes::new()).expect("target"),
            connections: 1,
            duration: None,
            requests: Some(requests),
            warmup: Duration::ZERO,
            mode: lb::loadgen::LoadMode::Closed,
            version: lb::loadgen::HttpVersion::Http2,
            keep_alive: true,
            proxy: None,
            insecure: false,
            ca_file: tls.then(|| self.cert.0.clone()),
            resumption: true,
            timeout: PATIENCE,
            progress: false,
        })
        .await
        .expect("bench");
        assert_eq!(report.ok, requests, "the well-behaved client");
    }
}

/// The client's opening: preface and an empty SETTINGS.
fn opening() -> Vec<u8> {
    let mut o = PREFACE.to_vec();
    o.extend(frame(SETTINGS, 0, 0, &[]));
    o
}

/// Floods of each control frame hyper answers or drops without limit: the connection gets
/// GOAWAY ENHANCE_YOUR_CALM (or is closed) after at most the guard's budget, not 100,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_are_cut_off_while_others_are_served() {
    let lb = start("control").await;
    let floods: [(&str, Vec<u8>); 5] = [
        ("PING", frame(PING, 0, 0, &[7; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
        (
            "WINDOW_UPDATE",
            frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        ),
        ("PRIORITY", frame(PRIORITY, 0, 3, &[0, 0, 0, 0, 16])),
        ("unknown type", frame(0x42, 0, 0, b"ignored")),
    ];
    for (i, (name, flood)) in floods.iter().enumerate() {
        let tcp = TcpStream::connect(lb.plain).await.expect("connect");
        let (ending, ()) = tokio::join!(attack(tcp, opening(), flood, FLOOD), lb.served(false, 50));
        // Answers lb gave (PING and SETTINGS ACKs) before it cut the connection off.
        let answers = ending.count(PING) + ending.count(SETTINGS);
        eprintln!("{name} flood: {answers} answers, then {:?}", ending.goaway);
        assert!(ending.cut_off(), "{name}: {ending:?}");
        assert!(answers <= 1100, "{name}: {answers} answers");
        lb.wait_closed("plain", "control_frame_flood", i as u64 + 1)
            .await;
    }
    lb.served(false, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_over_tls_is_cut_off_while_others_are_served() {
    let lb = start("tls").await;
    let tls = lb.tls_connect().await;
    let ping = frame(PING, 0, 0, &[1; 8]);
    let (ending, ()) = tokio::join!(attack(tls, opening(), &ping, FLOOD), lb.served(true, 50));
    eprintln!(
        "PING flood over TLS: {} ACKs, then {:?}",
        ending.count(PING),
        ending.goaway
    );
    assert!(ending.cut_off(), "{ending:?}");
    assert!(ending.count(PING) <= 1100, "{ending:?}");
    lb.wait_closed("tls", "control_frame_flood", 1).await;
    lb.served(true, 10).await;
}

/// HEADERS + RST_STREAM pairs (CVE-2023-44487): hyper's pending-reset limit ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_while_others_are_served() {
    let lb = start("reset").await;
    let mut pairs = Vec::new();
    for i in 0..FLOOD as u32 {
        let stream = 2 * i + 1;
        pairs.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block("/reset", false, &[]),
        ));
        pairs.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let (ending, ()) = tokio::join!(attack(tcp, opening(), &pairs, 1), lb.served(false, 50));
    eprintln!("rapid reset: {ending:?}\n{}", lb.report());
    assert_eq!(ending.goaway, Some(ENHANCE_YOUR_CALM), "{ending:?}");
    lb.wait_closed("plain", "goaway_enhance_your_calm", 1).await;
    lb.served(false, 10).await;
}

/// A header block that never ends: empty CONTINUATION frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let lb = start("continuation").await;
    let mut opening = opening();
    opening.extend(frame(HEADERS, 0, 1, &get_block("/c", false, &[])));
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let empty = frame(CONTINUATION, 0, 1, &[]);
    let (ending, ()) = tokio::join!(attack(tcp, opening, &empty, FLOOD), lb.served(false, 20));
    eprintln!("CONTINUATION flood: {ending:?}\n{}", lb.report());
    assert_eq!(ending.goaway, Some(ENHANCE_YOUR_CALM), "{ending:?}");
    lb.wait_closed("plain", "goaway_enhance_your_calm", 1).await;
}

/// Streams beyond the 100 allowed at once are refused; a client that keeps opening them is
/// sent GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_storm_is_refused_then_cut_off() {
    let lb = start("storm").await;
    let mut storm = Vec::new();
    for i in 0..2000u32 {
        // No END_STREAM: each request waits for a body, its stream stays open.
        storm.extend(frame(
            HEADERS,
            END_HEADERS,
            2 * i + 1,
            &get_block("/hang", false, &[]),
        ));
    }
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let (ending, ()) = tokio::join!(attack(tcp, opening(), &storm, 1), lb.served(false, 20));
    let refused = ending.resets.get(&REFUSED_STREAM).copied().unwrap_or(0);
    eprintln!("stream storm: {refused} refused, then {:?}", ending.goaway);
    assert!(refused >= 1, "{ending:?}");
    assert_eq!(ending.goaway, Some(ENHANCE_YOUR_CALM), "{ending:?}");
    lb.wait_closed("plain", "goaway_enhance_your_calm", 1).await;
}

/// A header list beyond the listener's `max_header_bytes` is answered 431 without reaching
/// a backend, the connection serving on; one far beyond what can be skipped ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_are_refused() {
    let lb = start("headers").await;
    let big = vec![b'a'; 12_000];
    let mut requests = opening();
    requests.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/big", false, &[("x-big", &big)]),
    ));
    requests.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &get_block("/small", false, &[]),
    ));
    // The client is done (GOAWAY NO_ERROR, last stream 0): lb finishes and closes.
    requests.extend(frame(GOAWAY, 0, 0, &[0; 8]));
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let ending = attack(tcp, requests, &[], 0).await;
    eprintln!("oversized header list: {ending:?}");
    // :status 200 is static index 8 (0x88); 431 is a literal (name index 8) "431".
    let refused = ending.heads.get(&1).expect("stream 1 answered");
    assert_ne!(refused.first(), Some(&0x88), "{ending:?}");
    let served = ending.heads.get(&3).expect("stream 3 answered");
    assert_eq!(served.first(), Some(&0x88), "{ending:?}");
    assert!(!ending.cut_off(), "{ending:?}");

    // A header block of 100 × 16 KB that never ends.
    let mut opening = opening();
    opening.extend(frame(HEADERS, 0, 1, &get_block("/huge", false, &[])));
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let ending = attack(
        tcp,
        opening,
        &frame(CONTINUATION, 0, 1, &[b'b'; 16_000]),
        100,
    )
    .await;
    eprintln!("huge header list: {ending:?}");
    assert!(ending.cut_off(), "{ending:?}");
    lb.served(false, 10).await;
}

/// Empty DATA frames that never end the stream: h2's own limit sends GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_flood_is_cut_off() {
    let lb = start("empty-data").await;
    let mut opening = opening();
    opening.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &get_block("/hang", false, &[]),
    ));
    let empty = frame(DATA, 0, 1, &[]);
    let tcp = TcpStream::connect(lb.plain).await.expect("connect");
    let (ending, ()) = tokio::join!(attack(tcp, opening, &empty, FLOOD), lb.served(false, 20));
    eprintln!("empty DATA flood: {ending:?}");
    assert_eq!(ending.goaway, Some(ENHANCE_YOUR_CALM), "{ending:?}");
    lb.wait_closed("plain", "goaway_enhance_your_calm", 1).await;
}

/// A chatty client that does work is not cut off: 150 requests one after another, each with 10
/// PINGs (1500 control frames, more than the 1000 any connection gets, but earned by the
/// requests and their responses), then it says goodbye and lb closes gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_earned_by_requests_are_answered() {
    let lb = start("chatty").await;
    let mut tcp = TcpStream::connect(lb.plain).await.expect("connect");
    tcp.write_all(&opening()).await.expect("write");
    let mut acks = 0;
    let conversation = async {
        for i in 0..150u32 {
            let stream = 2 * i + 1;
            let mut turn = frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                stream,
                &get_block("/chatty", false, &[]),
            );
            for _ in 0..10 {
                turn.extend(frame(PING, 0, 0, &[3; 8]));
            }
            tcp.write_all(&turn).await.expect("write");
            // Until the response ends (END_STREAM on a HEADERS or DATA frame of this stream).
            let mut head = [0; 9];
            loop {
                tcp.read_exact(&mut head)
                    .await
                    .expect("lb closed a working client");
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; length];
                tcp.read_exact(&mut payload).await.expect("payload");
                let on = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                match head[3] {
                    PING => acks += 1,
                    GOAWAY => panic!("GOAWAY at request {i}: {payload:?}"),
                    DATA | HEADERS if on == stream && head[4] & END_STREAM != 0 => break,
                    _ => {}
                }
            }
        }
        tcp.write_all(&frame(GOAWAY, 0, 0, &[0; 8]))
            .await
            .expect("write");
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    };
    tokio::time::timeout(PATIENCE, conversation)
        .await
        .expect("conversation");
    // The last PINGs' ACKs may follow the last response.
    assert!(acks >= 1400, "{acks} PING ACKs");
    assert_eq!(lb.closed("plain", "control_frame_flood"), 0);
}
