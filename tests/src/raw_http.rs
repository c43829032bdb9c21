//! A raw HTTP/1.1 client for end-to-end tests that look at the bytes lb sends: one request
//! per connection (`Connection: close`), the head as lines, chunked bodies decoded with a
//! note of whether the last chunk came.
use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub struct Reply {
    pub status: u16,
    /// Lowercased `name: value` lines.
    pub headers: Vec<String>,
    /// The body as sent (de-chunked when chunked).
    pub body: Vec<u8>,
    pub chunked: bool,
    /// A chunked body ended with its last chunk (not cut off).
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(prefix.as_str()))
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}: ");
        self.headers
            .iter()
            .filter_map(|h| h.strip_prefix(prefix.as_str()))
            .collect()
    }
}

/// One HTTP/1.1 request (`Connection: close`), read to the end.
/// `Host: site.test`; `extra`: more header lines, each ending in CRLF.
pub async fn request(proxy: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    request_to(proxy, method, path, "site.test", extra).await
}

/// As `request`, for `host`.
pub async fn request_to(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> Reply {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // A cut-off response may end in a reset.
    let _ = tcp.read_to_end(&mut out).await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let raw = &out[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    let chunked = headers.iter().any(|h| h == "transfer-encoding: chunked");
    let (body, complete) = if chunked {
        dechunk(raw)
    } else {
        (raw.to_vec(), true)
    };
    Reply {
        status,
        headers,
        body,
        chunked,
        complete,
    }
}

/// (data, whether the last chunk was seen).
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let start = eol + 2;
        if raw.len() < start + size + 2 {
            out.extend_from_slice(&raw[start.min(raw.len())..]);
            return (out, false);
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}
