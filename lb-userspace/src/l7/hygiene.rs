//! Request-head hygiene that hyper does not enforce itself, checked on the raw bytes before
//! hyper parses them: a bare LF line ending in a request head or trailer, and a request with
//! both Content-Length and Transfer-Encoding (hyper lets Transfer-Encoding win and drops the
//! Content-Length; we refuse the ambiguity, as HAProxy does). Either answers 400 and closes
//! the connection; the offending request never reaches hyper, so never a backend.
//!
//! `HeadGuard` wraps a client connection's byte stream and follows HTTP/1.1 message framing
//! (head, Content-Length or chunked body, trailers) just far enough to know where each
//! request head starts. What it does not understand (HTTP/2, an Upgrade or CONNECT request,
//! framing hyper will refuse anyway) ends the watch: from then on bytes pass unchecked.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("bare LF line ending in a request head")]
    BareLf,
    #[error("request has both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
}

pub(crate) const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";

/// Longest chunk-size line (with extensions) followed; a longer one ends the watch.
const MAX_CHUNK_SIZE_LINE: usize = 1024;

/// Where the scanner is in the client's byte stream.
#[derive(Debug)]
enum Framing {
    /// Collecting a request head (up to its empty line).
    Head(Vec<u8>),
    /// This many Content-Length body bytes to skip.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF (`remaining` counts the CRLF too).
    ChunkData(u64),
    /// Trailer lines after the last chunk, up to the empty line; the line so far.
    Trailers(Vec<u8>),
    /// Not HTTP/1.1 framing we follow: stop looking.
    Unwatched,
}

/// Follows request framing over the bytes a client sends.
#[derive(Debug)]
pub struct HeadScanner {
    framing: Framing,
    /// Heads longer than this are hyper's to refuse (431); we stop collecting.
    max_head: usize,
}

impl HeadScanner {
    pub fn new(max_head: usize) -> Self {
        Self {
            framing: Framing::Head(Vec::new()),
            max_head,
        }
    }

    /// Feeds the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            let used = match &mut self.framing {
                Framing::Unwatched => return Ok(()),
                // The usual case: a whole head in one read, checked and parsed in place.
                Framing::Head(head) if head.is_empty() => match whole_head(bytes)? {
                    Some(end) => {
                        self.framing = after_head(&bytes[..end])?;
                        end
                    }
                    None => take_line_bytes(head, bytes, true)?.0,
                },
                Framing::Head(head) => {
                    let (used, done) = take_line_bytes(head, bytes, true)?;
                    if done {
                        let head = std::mem::take(head);
                        self.framing = after_head(&head)?;
                    } else if head.len() > self.max_head {
                        self.framing = Framing::Unwatched;
                    }
                    used
                }
                Framing::Body(remaining) => {
                    let used = skip(remaining, bytes);
                    if *remaining == 0 {
                        self.framing = Framing::Head(Vec::new());
                    }
                    used
                }
                Framing::ChunkSize(line) => {
                    let end = bytes.iter().position(|b| *b == b'\n');
                    let used = end.map_or(bytes.len(), |end| end + 1);
                    line.extend_from_slice(&bytes[..used]);
                    // The same limit whether the line came in one read or several.
                    if line.len() > MAX_CHUNK_SIZE_LINE {
                        self.framing = Framing::Unwatched;
                        return Ok(());
                    }
                    if end.is_none() {
                        return Ok(());
                    }
                    self.framing = match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((_, 0))) => Framing::Trailers(Vec::new()),
                        Ok(httparse::Status::Complete((_, size))) => {
                            Framing::ChunkData(size.saturating_add(2))
                        }
                        // hyper refuses this chunk itself.
                        _ => Framing::Unwatched,
                    };
                    used
                }
                Framing::ChunkData(remaining) => {
                    let used = skip(remaining, bytes);
                    if *remaining == 0 {
                        self.framing = Framing::ChunkSize(Vec::new());
                    }
                    used
                }
                Framing::Trailers(line) => {
                    let (used, done) = take_line_bytes(line, bytes, false)?;
                    if done {
                        self.framing = Framing::Head(Vec::new());
                    } else if line.len() > self.max_head {
                        self.framing = Framing::Unwatched;
                    }
                    used
                }
            };
            bytes = &bytes[used..];
        }
        Ok(())
    }
}

impl HeadScanner {
    /// Bytes held while following the framing (a partial head, chunk-size or trailer line).
    pub(crate) fn buffered(&self) -> usize {
        match &self.framing {
            Framing::Head(bytes) | Framing::ChunkSize(bytes) | Framing::Trailers(bytes) => {
                bytes.len()
            }
            Framing::Body(_) | Framing::ChunkData(_) | Framing::Unwatched => 0,
        }
    }
}

fn skip(remaining: &mut u64, bytes: &[u8]) -> usize {
    let n = (*remaining).min(bytes.len() as u64);
    *remaining -= n;
    n as usize
}

/// Appends bytes to `acc` up to and including the end of a block of lines (an empty line),
/// refusing an LF without its CR. With `whole_block` false, `acc` keeps only the current line
/// (trailers: any number of lines until an empty one). Returns (bytes used, block complete).
fn take_line_bytes(
    acc: &mut Vec<u8>,
    bytes: &[u8],
    whole_block: bool,
) -> Result<(usize, bool), Violation> {
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            if acc.last() != Some(&b'\r') {
                return Err(Violation::BareLf);
            }
            // Empty line: the CRLF is the whole line (heads may start with empty lines,
            // which hyper skips; an empty head is not an end).
            let line_start = if whole_block {
                acc[..acc.len() - 1]
                    .iter()
                    .rposition(|c| *c == b'\n')
                    .map_or(0, |p| p + 1)
            } else {
                0
            };
            let empty = acc.len() - line_start == 1;
            acc.push(*b);
            if empty && (!whole_block || acc.iter().any(|c| *c != b'\r' && *c != b'\n')) {
                return Ok((i + 1, true));
            }
            if !whole_block {
                acc.clear();
            }
        } else {
            acc.push(*b);
        }
    }
    Ok((bytes.len(), false))
}

/// The length of the request head at the start of `bytes` (through its empty line), if it is
/// all there; refuses an LF without its CR on the way. Empty lines before the request line
/// are skipped as `take_line_bytes` does (an empty head is not an end).
fn whole_head(bytes: &[u8]) -> Result<Option<usize>, Violation> {
    let mut line_start = 0;
    let mut content = false;
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        if i == 0 || bytes[i - 1] != b'\r' {
            return Err(Violation::BareLf);
        }
        if i - line_start == 1 && content {
            return Ok(Some(i + 1));
        }
        content |= bytes[line_start..i].iter().any(|c| *c != b'\r');
        line_start = i + 1;
    }
    Ok(None)
}

/// The framing after a complete request head.
fn after_head(head: &[u8]) -> Result<Framing, Violation> {
    if head.starts_with(b"PRI * HTTP/2.0") {
        return Ok(Framing::Unwatched);
    }
    // Left uninitialised: httparse writes the ones it fills (4 KiB not zeroed per request).
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut req = httparse::Request::new(&mut []);
    // hyper refuses what httparse refuses.
    let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, &mut headers)
    else {
        return Ok(Framing::Unwatched);
    };
    if req.method == Some("CONNECT") {
        return Ok(Framing::Unwatched);
    }
    let headers = &*req.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    if named("upgrade").next().is_some() {
        // What follows a 101 is not HTTP/1.1.
        return Ok(Framing::Unwatched);
    }
    let has_te = named("transfer-encoding").next().is_some();
    let mut lengths = named("content-length").peekable();
    if has_te && lengths.peek().is_some() {
        return Err(Violation::ContentLengthAndTransferEncoding);
    }
    if has_te {
        let last_is_chunked = named("transfer-encoding")
            .next_back()
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if last_is_chunked {
            Framing::ChunkSize(Vec::new())
        } else {
            Framing::Unwatched
        });
    }
    let mut length = None;
    for h in lengths {
        let parsed = std::str::from_utf8(h.value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        match (parsed, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(prev)) if n == prev => {}
            // Invalid or conflicting: hyper answers 400.
            _ => return Ok(Framing::Unwatched),
        }
    }
    Ok(match length {
        Some(n) if n > 0 => Framing::Body(n),
        _ => Framing::Head(Vec::new()),
    })
}

/// A client connection whose request heads are checked before hyper reads them.
pub struct HeadGuard<S> {
    inner: S,
    scanner: HeadScanner,
    refused: bool,
}

impl<S> HeadGuard<S> {
    pub fn new(inner: S, max_head: usize) -> Self {
        Self {
            inner,
            scanner: HeadScanner::new(max_head),
            refused: false,
        }
    }
}

impl<S> HeadGuard<S> {
    /// The wrapped stream (the fuzz target reads what the guard wrote to it).
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refused {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request refused",
            )));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let Err(violation) = this.scanner.feed(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        // Hide the offending bytes from hyper, answer 400 ourselves (best effort: a small
        // write into an idle socket's buffer) and end the connection.
        buf.set_filled(before);
        this.refused = true;
        tracing::debug!(%violation, "request refused");
        let _ = Pin::new(&mut this.inner).poll_write(cx, BAD_REQUEST);
        let _ = Pin::new(&mut this.inner).poll_flush(cx);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Result<(), Violation> {
        let mut s = HeadScanner::new(65536);
        for c in chunks {
            s.feed(c)?;
        }
        Ok(())
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // A body containing a bare LF is not a head; the next head (split anywhere) is.
        let two =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\na\nbGET / HTTP/1.1\nHost: x\r\n\r\n";
        for split in 0..two.len() {
            assert_eq!(
                scan(&[&two[..split], &two[split..]]),
                Err(Violation::BareLf),
                "split at {split}"
            );
        }
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3;x=y\r\na\nb\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        for split in 0..chunked.len() {
            assert_eq!(scan(&[&chunked[..split], &chunked[split..]]), Ok(()));
        }
        assert_eq!(
            scan(&[b"\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]),
            Ok(())
        );
    }

    #[test]
    fn refuses_bare_lf_and_content_length_with_transfer_encoding() {
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nHost: x\n\n"]),
            Err(Violation::BareLf)
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\n\r\n"]),
            Err(Violation::BareLf)
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"]),
            Err(Violation::ContentLengthAndTransferEncoding)
        );
    }

    #[test]
    fn a_head_read_whole_is_judged_as_one_read_byte_by_byte() {
        let cases: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"\r\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET / HTTP/1.1\r\nA: b\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ];
        for case in cases {
            let mut whole = HeadScanner::new(65536);
            let mut bytewise = HeadScanner::new(65536);
            let whole_result = whole.feed(case);
            let bytewise_result = case.iter().try_for_each(|b| bytewise.feed(&[*b]));
            assert_eq!(
                whole_result,
                bytewise_result,
                "{:?}",
                String::from_utf8_lossy(case)
            );
            if whole_result.is_ok() {
                assert_eq!(
                    format!("{:?}", whole.framing),
                    format!("{:?}", bytewise.framing),
                    "{:?}",
                    String::from_utf8_lossy(case)
                );
            }
        }
    }

    /// Found by the head_guard fuzz target: a chunk-size line over the limit ended the watch
    /// when it came in several reads, but was followed when it came in one.
    #[test]
    fn a_long_chunk_size_line_is_judged_the_same_in_any_split() {
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=".to_vec();
        stream.extend(std::iter::repeat_n(b'y', 2000));
        stream.extend_from_slice(b"\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\nHost: x\n\n");
        let mut whole = HeadScanner::new(65536);
        let mut bytewise = HeadScanner::new(65536);
        assert_eq!(whole.feed(&stream), Ok(()));
        assert_eq!(stream.iter().try_for_each(|b| bytewise.feed(&[*b])), Ok(()));
        assert_eq!(format!("{whole:?}"), format!("{bytewise:?}"));
        assert!(matches!(whole.framing, Framing::Unwatched));
    }

    #[test]
    fn stops_watching_what_it_does_not_follow() {
        // HTTP/2 preface, upgrades: binary data follows.
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\n\n"]), Ok(()));
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\n\n"]),
            Ok(())
        );
    }
}
