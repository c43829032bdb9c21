//! Request hygiene at the L7 proxy with raw TCP clients: ambiguous or malformed framing
//! (request smuggling material) is refused and never reaches a backend; body size and body
//! deadline limits hold for streamed (chunked) bodies and slow clients.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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

/// What a backend saw: request heads (path) and complete requests (path, body length).
#[derive(Default)]
struct Seen {
    heads: Vec<String>,
    complete: Vec<(String, usize)>,
}

type Log = Arc<Mutex<Seen>>;

/// A backend that logs each request head, then each request whose body arrived whole.
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
                        let path = req.uri().path().to_owned();
                        log.lock().expect("log").heads.push(path.clone());
                        let body = req.into_body().collect().await;
                        let answer = match body {
                            Ok(body) => {
                                let len = body.to_bytes().len();
                                log.lock().expect("log").complete.push((path.clone(), len));
                                format!("ok {path} {len}")
                            }
                            Err(_) => "incomplete".to_owned(),
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
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

async fn start(log: &Log, listener_extra: &str) -> (l7::RunningL7, SocketAddr) {
    let a = backend(log.clone()).await;
    let text = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{a}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n{listener_extra}\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    );
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

/// Sends `raw` and reads until the proxy closes (a reset counts as closed); returns the status
/// (0: closed without a response) and the whole answer.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    read_answer(&mut tcp, Duration::from_secs(5)).await
}

async fn read_answer(tcp: &mut TcpStream, limit: Duration) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the proxy closes the connection");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_malformed_requests_never_reach_the_backend() {
    let log = Log::default();
    let (_proxy, addr) = start(&log, "").await;
    let cases: [(&str, &[u8]); 11] = [
        (
            "CL+TE",
            b"POST /smuggle-clte HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE+CL",
            b"POST /smuggle-tecl HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        ),
        (
            "two different Content-Length",
            b"POST /smuggle-2cl HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "Content-Length 12a",
            b"POST /smuggle-cl12a HTTP/1.1\r\nHost: s\r\nContent-Length: 12a\r\n\r\nabcdefghijkl",
        ),
        (
            "negative Content-Length",
            b"POST /smuggle-clneg HTTP/1.1\r\nHost: s\r\nContent-Length: -1\r\n\r\na",
        ),
        (
            "bad chunk size",
            b"POST /smuggle-hex HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "no CRLF after chunk data",
            b"POST /smuggle-crlf HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        ),
        (
            "bare LF in the head",
            b"GET /smuggle-lf HTTP/1.1\nHost: s\r\n\r\n",
        ),
        (
            "bare LF ending the head",
            b"GET /smuggle-lf2 HTTP/1.1\r\nHost: s\n\n",
        ),
        (
            "obs-fold",
            b"GET /smuggle-fold HTTP/1.1\r\nHost: s\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /smuggle-space HTTP/1.1\r\nHost: s\r\nX-Space : a\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let (status, answer) = exchange(addr, raw).await;
        assert!(status == 400, "{what}: expected 400, got {answer:?}");
    }
    // A bad chunk is found while the body streams: the head may have been forwarded, but the
    // backend never gets a complete request.
    {
        let seen = log.lock().expect("log");
        assert!(seen.complete.is_empty(), "{:?}", seen.complete);
        assert!(
            seen.heads
                .iter()
                .all(|p| p == "/smuggle-hex" || p == "/smuggle-crlf"),
            "{:?}",
            seen.heads
        );
    }

    // A well-formed request on the same proxy still goes through, also a second one on a
    // keep-alive connection after a chunked body.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /fine-1 HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /fine-2 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let (status, answer) = read_answer(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("ok /fine-1 3") && answer.contains("ok /fine-2 0"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_a_later_keep_alive_request_is_refused() {
    let log = Log::default();
    let (_proxy, addr) = start(&log, "").await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"POST /first HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !first.ends_with(b"ok /first 2") {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {first:?}");
        first.extend_from_slice(&buf[..n]);
    }
    tcp.write_all(b"GET /second HTTP/1.1\nHost: s\r\n\r\n")
        .await
        .expect("write");
    let (status, answer) = read_answer(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(log.lock().expect("log").heads, vec!["/first".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_over_the_limit_get_413_and_never_complete_upstream() {
    let log = Log::default();
    let (_proxy, addr) = start(&log, "max_body_bytes = 100\n").await;
    let chunked = |path: &str, chunks: usize| {
        let mut raw =
            format!("POST {path} HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..chunks {
            raw.push_str(&format!("1e\r\n{}\r\n", "x".repeat(30)));
        }
        raw.push_str("0\r\n\r\n");
        raw
    };
    // 4 x 30 bytes: over 100 while streaming (no Content-Length to refuse up front).
    let (status, answer) = exchange(addr, chunked("/big", 4).as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // 3 x 30 bytes fit.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let raw = chunked("/small", 3).replace("Host: s\r\n", "Host: s\r\nConnection: close\r\n");
    tcp.write_all(raw.as_bytes()).await.expect("write");
    let (status, answer) = read_answer(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        log.lock().expect("log").complete,
        vec![("/small".to_owned(), 90)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_slow_but_steady_one_passes() {
    let log = Log::default();
    let (_proxy, addr) = start(&log, "body_timeout = \"300ms\"\n").await;

    // Slowloris on the body: 3 of 10 declared bytes, then silence.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"POST /stalled HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    let started = Instant::now();
    let (status, answer) = read_answer(&mut tcp, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(status, 408, "{answer}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // The same with a chunked body that stops after one chunk.
    let (status, answer) = exchange(
        addr,
        b"POST /stalled-chunked HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await;
    assert_eq!(status, 408, "{answer}");

    // One byte every 100 ms: each within the deadline, so the whole body arrives.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /steady HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Length: 6\r\n\r\n",
    )
    .await
    .expect("write");
    for b in b"steady" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(&[*b]).await.expect("write");
    }
    let (status, answer) = read_answer(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 200, "{answer}");

    let seen = log.lock().expect("log");
    assert_eq!(seen.complete, vec![("/steady".to_owned(), 6)]);
}

#[test]
fn body_timeout_bad_values_name_file_and_line() {
    let cases = [
        (
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nbody_timeout = \"soon\"\n",
            "l7.toml:4: body_timeout \"soon\": expected number at 0",
        ),
        (
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nbody_timeout = \"0s\"\n",
            "l7.toml:4: body_timeout must be above 0",
        ),
    ];
    for (text, expected) in cases {
        let err = L7Config::parse(text, Path::new("l7.toml")).expect_err(text);
        assert_eq!(err.to_string(), expected);
    }
}
