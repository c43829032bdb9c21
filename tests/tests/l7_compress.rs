//! Route `compress` end to end through the in-process L7 tier: each codec decodes back to the
//! backend's exact bytes; Accept-Encoding negotiation; every never-compress case; the headers
//! a compressed response gets (Content-Encoding, no Content-Length / Accept-Ranges, Vary
//! merged once, weak ETag); a 4 MiB body streams chunked; a backend body error stays an error.
//! Real sockets on 127.0.0.1; the backend below serves bodies of known content and type.
use std::{
    convert::Infallible,
    io::Read,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Body, Frame, Incoming},
    header::HeaderValue,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb::l7::{self, L7Config};
use lb_tests::raw_http::{Reply, request};
use tokio::net::TcpListener;

/// `n` bytes of compressible text (the same for a given `n`).
fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "line {i}: the quick brown fox jumps over the lazy dog {}\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

const BIG: usize = 4 * 1024 * 1024;

/// A body of `left` bytes of `text(BIG)` in 64 KiB frames, with no known length (chunked);
/// `fail`: an error instead of the last frame.
struct Streamed {
    data: Bytes,
    at: usize,
    fail: bool,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let at = self.at;
        if at >= self.data.len() {
            return Poll::Ready(None);
        }
        let end = (at + 64 * 1024).min(self.data.len());
        if self.fail && end == self.data.len() {
            self.at = end;
            return Poll::Ready(Some(Err(std::io::Error::other("backend broke"))));
        }
        self.at = end;
        Poll::Ready(Some(Ok(Frame::data(self.data.slice(at..end)))))
    }
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(body: Vec<u8>) -> BackendBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

/// What the backend answers for `path`.
fn answer(path: &str) -> Response<BackendBody> {
    let (status, ctype, body, extra): (u16, &str, BackendBody, &[(&str, &str)]) = match path {
        "/text" => (200, "text/plain; charset=utf-8", full(text(100_000)), &[]),
        "/json" => (200, "application/json", full(text(5000)), &[]),
        "/small" => (200, "text/plain", full(text(100)), &[]),
        "/png" => (200, "image/png", full(text(5000)), &[]),
        "/none" => (200, "", full(text(5000)), &[]),
        "/encoded" => (
            200,
            "text/plain",
            full(text(5000)),
            &[("content-encoding", "deflate")],
        ),
        "/partial" => (
            206,
            "text/plain",
            full(text(5000)),
            &[("content-range", "bytes 0-4999/10000")],
        ),
        "/sse" => (200, "text/event-stream", full(text(5000)), &[]),
        "/nocontent" => (204, "text/plain", full(Vec::new()), &[]),
        "/notmodified" => (304, "text/plain", full(Vec::new()), &[]),
        "/notransform" => (
            200,
            "text/plain",
            full(text(5000)),
            &[("cache-control", "public, no-transform")],
        ),
        "/headers" => (
            200,
            "text/html",
            full(text(5000)),
            &[
                ("etag", "\"v1\""),
                ("vary", "Origin"),
                ("vary", "Cookie"),
                ("accept-ranges", "bytes"),
            ],
        ),
        "/vary" => (
            200,
            "text/html",
            full(text(5000)),
            &[("vary", "accept-encoding")],
        ),
        "/big" => (
            200,
            "text/plain",
            Streamed {
                data: Bytes::from(text(BIG)),
                at: 0,
                fail: false,
            }
            .boxed(),
            &[],
        ),
        "/broken" => (
            200,
            "text/plain",
            Streamed {
                data: Bytes::from(text(BIG)),
                at: 0,
                fail: true,
            }
            .boxed(),
            &[],
        ),
        _ => (404, "text/plain", full(b"no\n".to_vec()), &[]),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if !ctype.is_empty() {
        headers.insert("content-type", HeaderValue::from_static(ctype));
    }
    for (name, value) in extra {
        headers.append(*name, HeaderValue::from_static(value));
    }
    response
}

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(req.uri().path()))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// The body decoded by its Content-Encoding.
fn decoded(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply.header("content-encoding") {
        None => return reply.body.clone(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(reply.body.as_slice())
                .read_to_end(&mut out)
                .expect("gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(reply.body.as_slice(), 4096)
                .read_to_end(&mut out)
                .expect("br");
        }
        Some("zstd") => out = zstd::stream::decode_all(reply.body.as_slice()).expect("zstd"),
        Some(other) => panic!("unexpected encoding {other}"),
    }
    out
}

async fn start(compress: &str) -> (l7::RunningL7, SocketAddr) {
    let backend = backend().await;
    let text = format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/plain\"\nrewrite_prefix = \"/\"\npool = \"web\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n{compress}\n"
    );
    let config = L7Config::parse(&text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

const DEFAULTS: &str = "[route.compress]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_codec_decodes_to_the_original() {
    let (_lb, addr) = start(DEFAULTS).await;
    let original = text(100_000);
    for encoding in ["gzip", "br", "zstd"] {
        let r = request(
            addr,
            "GET",
            "/text",
            &format!("Accept-Encoding: {encoding}\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            Some(encoding),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
        assert!(r.chunked && r.complete);
        assert!(
            r.body.len() < original.len() / 3,
            "{encoding}: {} bytes",
            r.body.len()
        );
        assert_eq!(decoded(&r), original, "{encoding}");
        assert_eq!(r.all("vary"), ["accept-encoding"]);
    }
    // The route without compress is untouched.
    let r = request(addr, "GET", "/plain/text", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.body, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation() {
    let (_lb, addr) = start("[route.compress]\nalgorithms = [\"br\", \"gzip\", \"zstd\"]\n").await;
    for (accept, want) in [
        ("gzip, br, zstd", Some("br")),
        ("gzip;q=1.0, br;q=0.5", Some("gzip")),
        ("zstd;q=0.8, gzip;q=0.8", Some("gzip")),
        ("*", Some("br")),
        ("*;q=0.3, br;q=0", Some("gzip")),
        ("identity;q=0, zstd", Some("zstd")),
        ("identity;q=0", None),
        ("identity, gzip;q=0.5", None),
        ("deflate, compress", None),
        ("gzip;q=0", None),
        ("", None),
    ] {
        let extra = if accept.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {accept}\r\n")
        };
        let r = request(addr, "GET", "/json", &extra).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), want, "{accept:?}");
        assert_eq!(decoded(&r), text(5000), "{accept:?}");
        // Compressible either way: caches must key on Accept-Encoding.
        assert_eq!(r.all("vary"), ["accept-encoding"], "{accept:?}");
        if want.is_none() {
            assert_eq!(r.header("content-length"), Some("5000"), "{accept:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_compressed() {
    let (_lb, addr) =
        start("[route.compress]\nmin_size = 1000\ntypes = [\"text/*\", \"application/json\"]\n")
            .await;
    let gzip = "Accept-Encoding: gzip\r\n";
    for (path, extra, status) in [
        ("/small", gzip.to_owned(), 200),
        ("/png", gzip.to_owned(), 200),
        ("/none", gzip.to_owned(), 200),
        ("/encoded", gzip.to_owned(), 200),
        ("/partial", gzip.to_owned(), 206),
        ("/sse", gzip.to_owned(), 200),
        ("/nocontent", gzip.to_owned(), 204),
        ("/notmodified", gzip.to_owned(), 304),
        ("/notransform", gzip.to_owned(), 200),
        ("/json", format!("{gzip}Range: bytes=0-10\r\n"), 200),
    ] {
        let r = request(addr, "GET", path, &extra).await;
        assert_eq!(r.status, status, "{path}");
        let original_encoding = (path == "/encoded").then_some("deflate");
        assert_eq!(r.header("content-encoding"), original_encoding, "{path}");
        assert!(r.header("vary").is_none(), "{path}: {:?}", r.headers);
        if status == 200 {
            let len = if path == "/small" { 100 } else { 5000 };
            assert_eq!(r.body, text(len), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_headers_and_head() {
    let (_lb, addr) = start(DEFAULTS).await;
    let r = request(addr, "GET", "/headers", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.all("vary"), ["origin, cookie, accept-encoding"]);
    assert_eq!(r.header("etag"), Some("w/\"v1\""));
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(decoded(&r), text(5000));

    // Vary already naming Accept-Encoding is kept as it is.
    let r = request(addr, "GET", "/vary", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.all("vary"), ["accept-encoding"]);

    // HEAD: the headers GET would get, no body.
    let r = request(addr, "HEAD", "/headers", "Accept-Encoding: br\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("br"), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some("w/\"v1\""));
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(r.all("vary"), ["origin, cookie, accept-encoding"]);
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_and_errors_stay_errors() {
    let (_lb, addr) = start(DEFAULTS).await;
    let original = text(BIG);
    for encoding in ["zstd", "gzip", "br"] {
        let r = request(
            addr,
            "GET",
            "/big",
            &format!("Accept-Encoding: {encoding}\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(encoding));
        assert!(r.chunked && r.complete, "{encoding}: {:?}", r.headers);
        assert_eq!(r.header("content-length"), None);
        let decoded = decoded(&r);
        assert_eq!(decoded.len(), original.len(), "{encoding}");
        assert!(decoded == original, "{encoding}: content differs");
    }
    // A backend body that fails midway: the client's response is cut off (no last chunk),
    // not ended as if complete.
    let r = request(addr, "GET", "/broken", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.chunked && !r.complete,
        "a failed body must not end cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_line() {
    for (key, reason) in [
        ("algorithms = [\"gzip\", \"lz4\"]", "unknown algorithm"),
        ("types = [\"text\"]", "not type/subtype"),
        ("min_size = -5", "negative"),
        ("level = \"max\"", "level"),
        ("bogus = 1", "unknown field"),
    ] {
        let text = format!(
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nlistener = \"l\"\npool = \"web\"\n[route.compress]\n{key}\n"
        );
        let e = L7Config::parse(&text, Path::new("l7.toml")).expect_err(key);
        let shown = e.to_string();
        assert!(shown.contains(reason), "{key}: {shown}");
        assert!(shown.contains("l7.toml:"), "{key}: {shown}");
        if reason != "unknown field" {
            assert!(shown.contains("l7.toml:12"), "{key}: {shown}");
        }
    }
    // A tcp route has no HTTP responses to compress.
    let stream = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n\
                  [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
                  [[route]]\nlistener = \"t\"\npool = \"web\"\n[route.compress]\n";
    let e = L7Config::parse(stream, Path::new("l7.toml")).expect_err("tcp compress");
    assert!(
        e.to_string().contains("compress applies to http routes"),
        "{e}"
    );
}
