//! Route buffering end to end through `lb run` (a real lb process), real sockets on 127.0.0.1:
//! `buffer_request` (no backend request until the whole body is in, a body over the memory
//! threshold spilled to a temporary file and delivered intact with a Content-Length, an upload
//! that breaks off or stalls never reaching the backend, a buffered idempotent request
//! retried) and `buffer_response` (the backend's whole response written while the client has
//! read nothing). Ordering is by events (the client's `100 Continue`, a second request
//! answered, the backend's write returning), never by sleeps.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb_tests::{
    echo_backend::exchange,
    lb_run::{LbRun, RefusedPort},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
};

/// `lb run` (a real lb process) on `text`; the address of its listener `l`. Blocks briefly
/// while lb starts (no backend is needed meanwhile).
fn start(text: &str) -> (LbRun, SocketAddr) {
    let lb = LbRun::start("buffering", text, &[]);
    let addr = lb.listener("l");
    (lb, addr)
}

/// A backend answering each request with its body, and `x-got-*` headers naming the
/// Content-Length, Transfer-Encoding and Expect it received; it counts request heads as they
/// arrive (before any body is read).
struct EchoBody {
    addr: SocketAddr,
    /// Paths of the requests whose head arrived, in order.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl EchoBody {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            seen.lock()
                                .expect("heads")
                                .push(req.uri().path().to_owned());
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let failed = body.is_err();
                            let mut response = Response::new(Full::new(body.unwrap_or_default()));
                            if failed {
                                *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
                            }
                            for (name, got) in [
                                ("content-length", "x-got-content-length"),
                                ("transfer-encoding", "x-got-transfer-encoding"),
                                ("expect", "x-got-expect"),
                            ] {
                                if let Some(value) = parts.headers.get(name) {
                                    response.headers_mut().insert(got, value.clone());
                                }
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

/// `len` bytes of a repeating printable pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Reads one head (up to the blank line) from `tcp`, byte by byte (so nothing after it is
/// consumed).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The rest of a `Connection: close` response: (status, head lines lowercased, body).
async fn read_response(tcp: &mut TcpStream) -> (u16, Vec<String>, Vec<u8>) {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, lines.map(str::to_ascii_lowercase).collect(), body)
}

/// Starts an upload of `len` bytes to `path` with `Expect: 100-continue`, and waits for lb's
/// `100 Continue`: from then on lb is reading the body.
async fn start_upload(addr: SocketAddr, path: &str, len: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("write head");
    let interim = read_head(&mut tcp).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    tcp
}

const PLAIN_GET: &str = "GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn config(backend: SocketAddr, listener_keys: &str, routes: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n{listener_keys}\
         {routes}\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/plain\"\npool = \"web\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_reaches_the_backend_only_when_complete() {
    let backend = EchoBody::start().await;
    let (_proxy, addr) = start(&config(
        backend.addr,
        "",
        "[[route]]\nlistener = \"l\"\npath_prefix = \"/up\"\npool = \"web\"\nbuffer_request = true\n",
    ));
    let body = pattern(2000);

    // lb has asked for the body (100 Continue) and has half of it.
    let mut upload = start_upload(addr, "/up", body.len()).await;
    upload.write_all(&body[..1000]).await.expect("first half");
    // Another request goes through the same backend meanwhile; the upload has not reached it.
    let (status, _, _) = exchange(addr, PLAIN_GET).await;
    assert_eq!(status, 200);
    assert_eq!(
        backend.heads(),
        ["/plain"],
        "nothing of the upload upstream yet"
    );

    upload.write_all(&body[1000..]).await.expect("second half");
    let (status, headers, echoed) = read_response(&mut upload).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(echoed, body);
    assert!(
        headers.contains(&"x-got-content-length: 2000".to_owned()),
        "{headers:?}"
    );
    assert!(
        !headers.iter().any(|h| h.starts_with("x-got-expect")),
        "lb answered the Expect itself: {headers:?}"
    );
    assert_eq!(backend.heads(), ["/plain", "/up"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_memory_threshold_goes_through_a_temporary_file() {
    let backend = EchoBody::start().await;
    let base = std::env::temp_dir().join(format!("lb-buffering-{}", std::process::id()));
    let spill = base.join("spill");
    let gone = base.join("gone");
    std::fs::create_dir_all(&spill).expect("spill dir");
    std::fs::create_dir_all(&gone).expect("gone dir");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(base.clone());
    let (_proxy, addr) = start(&config(
        backend.addr,
        "",
        &format!(
            "[[route]]\nlistener = \"l\"\npath_prefix = \"/spill\"\npool = \"web\"\n\
             buffer_request = true\nbuffer_request_memory = \"4KiB\"\nbuffer_request_temp_dir = {:?}\n\
             [[route]]\nlistener = \"l\"\npath_prefix = \"/gone\"\npool = \"web\"\n\
             buffer_request = true\nbuffer_request_memory = \"4KiB\"\nbuffer_request_temp_dir = {:?}\n",
            spill.display().to_string(),
            gone.display().to_string(),
        ),
    ));

    // 1 MiB, chunked in uneven pieces: it arrives whole, with a Content-Length.
    let body = pattern(1 << 20);
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /spill HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    for piece in body.chunks(100_000) {
        tcp.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .expect("size");
        tcp.write_all(piece).await.expect("chunk");
        tcp.write_all(b"\r\n").await.expect("crlf");
    }
    tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let (status, headers, echoed) = read_response(&mut tcp).await;
    assert_eq!(status, 200, "{headers:?}");
    assert!(
        echoed == body,
        "the body arrived intact ({} bytes)",
        echoed.len()
    );
    assert!(
        headers.contains(&"x-got-content-length: 1048576".to_owned()),
        "{headers:?}"
    );
    assert!(
        !headers
            .iter()
            .any(|h| h.starts_with("x-got-transfer-encoding")),
        "{headers:?}"
    );
    assert_eq!(
        std::fs::read_dir(&spill).expect("spill dir").count(),
        0,
        "the temporary file was unlinked"
    );

    // Without its temporary directory a route still takes bodies up to the threshold, and
    // answers 500 (nothing upstream) for a larger one: the spill is what goes to the file.
    std::fs::remove_dir(&gone).expect("remove the temp dir");
    let post = |len: usize| {
        format!(
            "POST /gone HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{}",
            String::from_utf8(pattern(len)).expect("ascii")
        )
    };
    let (status, _, echoed) = exchange(addr, &post(4096)).await;
    assert_eq!((status, echoed.len()), (200, 4096));
    let (status, _, _) = exchange(addr, &post(4097)).await;
    assert_eq!(status, 500);
    assert_eq!(backend.heads(), ["/spill", "/gone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_breaks_off_or_stalls_never_reaches_the_backend() {
    let backend = EchoBody::start().await;
    let (_proxy, addr) = start(&config(
        backend.addr,
        "body_timeout = \"200ms\"\n",
        "[[route]]\nlistener = \"l\"\npath_prefix = \"/up\"\npool = \"web\"\nbuffer_request = true\n",
    ));

    // Broken off: half the body, then the client's side closed. lb closes the connection.
    let mut upload = start_upload(addr, "/up", 1000).await;
    upload.write_all(&pattern(500)).await.expect("half");
    upload.shutdown().await.expect("shutdown");
    let (status, _, _) = read_response(&mut upload).await;
    assert!(status == 0 || status == 400, "{status}");

    // Stalled: half the body, then nothing; the listener's body_timeout answers.
    let mut upload = start_upload(addr, "/up", 1000).await;
    upload.write_all(&pattern(500)).await.expect("half");
    let (status, _, _) = read_response(&mut upload).await;
    assert_eq!(status, 408);

    let (status, _, _) = exchange(addr, PLAIN_GET).await;
    assert_eq!(status, 200);
    assert_eq!(backend.heads(), ["/plain"], "neither upload went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_idempotent_request_is_retried_with_its_body() {
    let backend = EchoBody::start().await;
    let refused = RefusedPort::new();
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 1\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{}\"\n[[pool.backend]]\naddress = \"{}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/buffered\"\npool = \"web\"\nbuffer_request = true\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n",
        refused.addr, backend.addr
    ));
    let put = |path: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
        )
    };
    // Round robin alternates the two backends, so one of each pair of requests meets the
    // refused one first. Buffered: retried on the other, body and all.
    for _ in 0..2 {
        let (status, _, body) = exchange(addr, &put("/buffered")).await;
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    // Streamed: a request with a body gets one attempt.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(exchange(addr, &put("/streamed")).await.0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
}

/// A raw backend answering every request on a connection with `len` bytes, then reporting
/// that its write returned (the kernel took every byte); it counts bytes written and
/// connections accepted.
async fn big_backend(
    len: usize,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = written.clone();
    let accepted = Arc::new(AtomicUsize::new(0));
    let connections = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    seen.clear();
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    if tcp.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = pattern(64 << 10);
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if tcp.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                        progress.fetch_add(n, Ordering::Relaxed);
                    }
                    let _ = tx.send(());
                }
            });
        }
    });
    (addr, rx, written, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_response_is_taken_from_the_backend_before_the_client_reads() {
    // Far more than the socket buffers on the way can hold (the client's receive buffer is
    // made small; the kernel's autotuned ones stay well under this), so without read-ahead
    // the backend's write could not finish before the client reads.
    const LEN: usize = 64 << 20;
    let (backend, mut written, _progress, accepted) = big_backend(LEN).await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/small\"\npool = \"web\"\nbuffer_response = \"64KiB\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\nbuffer_response = \"80MiB\"\n"
    ));
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut client = socket.connect(addr).await.expect("connect");
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");

    // The backend has written everything while the client has read nothing.
    written.recv().await.expect("the backend's write returned");

    let (status, headers, body) = read_response(&mut client).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(body.len(), LEN);
    assert!(intact(&body));

    // Larger than its buffer: streamed with 64 KiB read ahead, and complete; on the same
    // backend connection, which the first response gave back to the pool when its body ended
    // (before the client could read its last byte).
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let (status, headers, body) = read_response(&mut client).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(body.len(), LEN);
    assert!(intact(&body));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the pooled connection was reused"
    );
}

/// `body` is `pattern` repeated per 64 KiB chunk, as `big_backend` writes it.
fn intact(body: &[u8]) -> bool {
    let chunk = pattern(64 << 10);
    body.chunks(chunk.len()).all(|c| c == &chunk[..c.len()])
}
