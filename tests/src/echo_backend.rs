//! A backend that answers each request with the request headers it received (one
//! `name: value` per line) and a `Server: echo` header, so a test sees exactly what lb sent
//! upstream; `/hang` never answers; a request header `X-Reply-NAME: value` becomes a
//! `NAME: value` response header. Plus a raw HTTP/1.1 client exchange.
use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A backend answering each request with the headers it received, one `name: value` per
/// line, and a `Server: echo` header; `/hang` never answers.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/hang" {
                        std::future::pending::<()>().await;
                    }
                    let mut text = String::new();
                    for (name, value) in req.headers() {
                        text += &format!("{name}: {}\n", value.to_str().unwrap_or("?"));
                    }
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    // `X-Reply-NAME: value` asks for a `NAME: value` response header.
                    for (name, value) in req.headers() {
                        if let Some(reply) = name.as_str().strip_prefix("x-reply-")
                            && let Ok(reply) =
                                hyper::header::HeaderName::from_bytes(reply.as_bytes())
                        {
                            response.headers_mut().append(reply, value.clone());
                        }
                    }
                    response
                        .headers_mut()
                        .insert("server", hyper::header::HeaderValue::from_static("echo"));
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// One raw HTTP/1.1 exchange: (status, head lines lowercased, body).
pub async fn exchange(proxy: SocketAddr, request: &str) -> (u16, Vec<String>, String) {
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    exchange_on(tcp, request).await
}

/// `exchange` over any stream (TLS included). A failed write or read (a refused handshake, a
/// connection closed) is status 0 with what was read.
pub async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> (u16, Vec<String>, String) {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, Vec::new(), String::new());
    }
    let mut out = Vec::new();
    if stream.read_to_end(&mut out).await.is_err() && out.is_empty() {
        return (0, Vec::new(), String::new());
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines.map(str::to_ascii_lowercase).collect();
    (status, headers, body.to_owned())
}

pub fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
}
