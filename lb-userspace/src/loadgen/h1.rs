//! The HTTP/1.1 client of the load generator: requests serialized once, responses framed with
//! `httparse` (status line and headers, chunk sizes), one exchange at a time per connection.
//!
//! hyper's client (used for HTTP/2) hands every request through a channel to a connection task;
//! at 100k+ requests per second per core that costs more than the exchange itself, and a load
//! generator must not be the slower side of the benchmark. This does only what a benchmark
//! client needs: send bytes, find where the response ends, count status and body bytes.
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::{Response, TransportError};

const MAX_HEADERS: usize = 64;
/// Largest response head accepted (status line + headers).
const MAX_HEAD: usize = 64 * 1024;

/// A request, serialized once.
pub fn serialize(method: &str, path: &str, headers: &hyper::HeaderMap, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// One HTTP/1.1 connection.
pub struct H1Conn<S> {
    stream: S,
    buf: BytesMut,
    open: bool,
    head_request: bool,
    /// Responses read on this connection.
    answered: u64,
}

enum BodyLength {
    Exact(u64),
    Chunked,
    UntilClose,
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1Conn<S> {
    pub fn new(stream: S, head_request: bool) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            open: true,
            head_request,
            answered: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub async fn exchange(&mut self, request: &[u8]) -> Result<Response, TransportError> {
        let result = self.exchange_inner(request).await;
        match result {
            Ok(_) => self.answered += 1,
            Err(e) => {
                self.open = false;
                // Not one byte of answer on a connection that had answered before: the
                // server closed it while idle, without taking this request.
                if e == TransportError::Reset && self.answered > 0 && self.buf.is_empty() {
                    return Err(TransportError::IdleClosed);
                }
            }
        }
        result
    }

    async fn fill(&mut self) -> Result<usize, TransportError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|_| TransportError::Reset)
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> Result<Response, TransportError> {
        self.stream
            .write_all(request)
            .await
            .map_err(|_| TransportError::Reset)?;
        // Head.
        let (status, length, head_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.ok_or(TransportError::Protocol)?;
                    let mut length = BodyLength::UntilClose;
                    let mut close = response.version == Some(0);
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .ok_or(TransportError::Protocol)?;
                            length = BodyLength::Exact(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            if h.value.eq_ignore_ascii_case(b"chunked") {
                                length = BodyLength::Chunked;
                            }
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if h.value.eq_ignore_ascii_case(b"close") {
                                close = true;
                            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                                close = false;
                            }
                        }
                    }
                    // Responses that never have a body.
                    if self.head_request || status == 204 || status == 304 || status / 100 == 1 {
                        length = BodyLength::Exact(0);
                    }
                    break (status, length, head_len, close);
                }
                Ok(httparse::Status::Partial) => self.more_head().await?,
                Err(_) => return Err(TransportError::Protocol),
            }
        };
        self.buf.advance(head_len);
        // Body.
        let body_bytes = match length {
            BodyLength::Exact(n) => {
                self.skip(n).await?;
                n
            }
            BodyLength::Chunked => self.chunked_body().await?,
            BodyLength::UntilClose => {
                let mut n = self.buf.len() as u64;
                self.buf.clear();
                while self.fill().await? > 0 {
                    n += self.buf.len() as u64;
                    self.buf.clear();
                }
                self.open = false;
                n
            }
        };
        if close {
            self.open = false;
        }
        Ok(Response { status, body_bytes })
    }

    /// A head or chunk-size line is incomplete: read more, unless it is already too long or
    /// the peer closed.
    async fn more_head(&mut self) -> Result<(), TransportError> {
        if self.buf.len() > MAX_HEAD {
            return Err(TransportError::Protocol);
        }
        if self.fill().await? == 0 {
            return Err(TransportError::Reset);
        }
        Ok(())
    }

    /// Consumes `n` bytes of the stream (body bytes are counted, not kept).
    async fn skip(&mut self, n: u64) -> Result<(), TransportError> {
        let mut left = n;
        while left > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(TransportError::Reset);
            }
            let take = left.min(self.buf.len() as u64);
            self.buf.advance(take as usize);
            left -= take;
        }
        Ok(())
    }

    async fn chunked_body(&mut self) -> Result<u64, TransportError> {
        let mut total = 0u64;
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => break (used, size),
                    Ok(httparse::Status::Partial) => self.more_head().await?,
                    Err(_) => return Err(TransportError::Protocol),
                }
            };
            self.buf.advance(used);
            if size == 0 {
                // Trailers (if any) end with an empty line.
                loop {
                    if let Some(pos) = find_crlf(&self.buf) {
                        let line_empty = pos == 0;
                        self.buf.advance(pos + 2);
                        if line_empty {
                            return Ok(total);
                        }
                        continue;
                    }
                    if self.fill().await? == 0 {
                        return Err(TransportError::Reset);
                    }
                }
            }
            // Chunk data plus its CRLF.
            self.skip(size + 2).await?;
            total += size;
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
