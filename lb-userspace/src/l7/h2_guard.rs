//! HTTP/2 control-frame floods, which h2 (hyper's HTTP/2) answers without limit: every PING
//! gets its ACK, every SETTINGS its ACK, WINDOW_UPDATE, PRIORITY, RST_STREAM on closed streams
//! and frames of unknown types are processed and dropped. h2 applies backpressure (one pending
//! ACK at a time), so memory stays bounded, but a client can keep a core busy for nothing.
//!
//! `H2Guard` sits between the client connection (plain or TLS) and hyper. It watches the
//! bytes as they pass, never copying or holding them back:
//! - the first bytes: the HTTP/2 connection preface or not. Not: the guard turns passive
//!   (HTTP/1.1 pays one branch per read and write).
//! - inbound frames (their 9-byte heads; payloads are skipped): control frames are counted
//!   against a budget earned by useful work, as Envoy does (`ControlBudget`). Over budget, the
//!   guard writes GOAWAY ENHANCE_YOUR_CALM (when hyper is between two frames of its own) and
//!   fails the connection: reads and writes return an error, so hyper drops it.
//! - outbound frames: DATA frames sent earn budget (a client acknowledges them with
//!   WINDOW_UPDATEs), and an error GOAWAY hyper sends (rapid reset, CONTINUATION flood, too
//!   many refused streams, protocol errors) is reported as this connection's close reason.
//!
//! What h2 limits itself is left to it (listener settings in `server.rs`): concurrent streams,
//! reset storms, CONTINUATION frames, header list size, empty DATA frames.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD_LEN: usize = 9;

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

/// GOAWAY error codes (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Control frames any connection may send before it has earned more: a browser's or gRPC
/// client's whole connection set-up (SETTINGS, WINDOW_UPDATE, PRIORITY tree) is a handful;
/// a flood is cut after this many answers (Envoy queues at most 1000 outbound control frames).
const BASE_CONTROL_FRAMES: u64 = 1000;
/// Earned per request stream opened (HEADERS): its RST_STREAM, PRIORITY, WINDOW_UPDATEs.
const CONTROL_FRAMES_PER_STREAM: u64 = 10;
/// Earned per DATA frame lb sends: the client's WINDOW_UPDATEs and PINGs (BDP probes) follow
/// the data it receives (Envoy: 10 WINDOW_UPDATEs per DATA frame sent).
const CONTROL_FRAMES_PER_DATA_SENT: u64 = 10;
/// Earned per DATA frame received.
const CONTROL_FRAMES_PER_DATA_RECEIVED: u64 = 1;
/// A long-lived idle connection's keep-alive PINGs: one more control frame per this much age.
const AGE_PER_CONTROL_FRAME: Duration = Duration::from_secs(10);

/// Why the guard (or hyper, by GOAWAY) ended an HTTP/2 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Close {
    /// Control frames over `ControlBudget`: closed by the guard.
    ControlFrameFlood,
    /// hyper sent GOAWAY with this error code (never NO_ERROR).
    GoAway(u32),
}

impl H2Close {
    /// The metric label (`lb_http2_connections_closed_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::ControlFrameFlood => "control_frame_flood",
            Self::GoAway(code) => match code {
                0x1 => "goaway_protocol_error",
                0x2 => "goaway_internal_error",
                0x3 => "goaway_flow_control_error",
                0x4 => "goaway_settings_timeout",
                0x6 => "goaway_frame_size_error",
                0x9 => "goaway_compression_error",
                0xb => "goaway_enhance_your_calm",
                _ => "goaway_other",
            },
        }
    }
}

impl std::fmt::Display for H2Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// An HTTP/2 connection the guard refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 control frame flood: {control} control frames, {allowed} allowed")]
pub struct ControlFrameFlood {
    pub control: u64,
    pub allowed: u64,
}

/// A frame's 9-byte head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEAD_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// A frame the scanner passed: its head and, for a GOAWAY when the scanner reads them, its
/// error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub head: FrameHead,
    pub goaway_code: Option<u32>,
}

/// Finds the frames of an HTTP/2 byte stream fed in pieces of any size: collects each 9-byte
/// head (a head split across pieces is the only thing it keeps) and skips payloads.
#[derive(Debug, Default)]
pub struct FrameScanner {
    head: [u8; FRAME_HEAD_LEN],
    /// Bytes of `head` collected.
    head_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u32,
    /// Read a GOAWAY's error code (its payload's bytes 4..8) before reporting it.
    goaway_codes: bool,
    /// A GOAWAY whose first payload bytes are being collected, and how many are in.
    goaway: Option<(FrameHead, [u8; 8], usize)>,
}

impl FrameScanner {
    /// A scanner reporting GOAWAY error codes (`goaway_codes`) or not.
    pub fn new(goaway_codes: bool) -> Self {
        Self {
            goaway_codes,
            ..Self::default()
        }
    }

    /// True between two frames (no head or payload half passed).
    pub fn at_frame_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// Feeds the next bytes of the stream, calling `on_frame` for each frame whose head (and
    /// GOAWAY code) is complete; stops at `on_frame`'s first error.
    pub fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(Frame) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let used = match &mut self.goaway {
                    Some((head, first, have)) => {
                        let used = (first.len() - *have).min(bytes.len());
                        first[*have..*have + used].copy_from_slice(&bytes[..used]);
                        *have += used;
                        if *have == first.len() {
                            let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
                            let head = *head;
                            self.goaway = None;
                            self.payload_left -= used as u32;
                            on_frame(Frame {
                                head,
                                goaway_code: Some(code),
                            })?;
                            bytes = &bytes[used..];
                            continue;
                        }
                        used
                    }
                    // `payload_left` is a u32: the minimum fits a usize.
                    None => (self.payload_left as usize).min(bytes.len()),
                };
                self.payload_left -= used as u32;
                bytes = &bytes[used..];
                continue;
            }
            let head = if self.head_len == 0
                && let Some((head, rest)) = bytes.split_first_chunk::<FRAME_HEAD_LEN>()
            {
                // The usual case: a whole head in this piece, read in place.
                bytes = rest;
                FrameHead::parse(head)
            } else {
                let used = (FRAME_HEAD_LEN - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + used].copy_from_slice(&bytes[..used]);
                self.head_len += used;
                bytes = &bytes[used..];
                if self.head_len < FRAME_HEAD_LEN {
                    return Ok(());
                }
                self.head_len = 0;
                FrameHead::parse(&self.head)
            };
            self.payload_left = head.length;
            if self.goaway_codes && head.kind == GOAWAY && head.length >= 8 {
                self.goaway = Some((head, [0; 8], 0));
            } else {
                on_frame(Frame {
                    head,
                    goaway_code: None,
                })?;
            }
        }
        Ok(())
    }
}

/// The control frames one connection may send: a base, plus what it earned by requests and
/// data, plus a little per age (keep-alive PINGs of an idle connection).
#[derive(Debug)]
pub struct ControlBudget {
    control: u64,
    streams: u64,
    data_received: u64,
    data_sent: u64,
    started: Instant,
}

impl ControlBudget {
    pub fn new(started: Instant) -> Self {
        Self {
            control: 0,
            streams: 0,
            data_received: 0,
            data_sent: 0,
            started,
        }
    }

    /// Counts a frame the client sent; Err when it is a control frame over the budget.
    pub fn received(&mut self, head: FrameHead) -> Result<(), ControlFrameFlood> {
        match head.kind {
            // An empty DATA frame earns nothing (h2 limits those itself).
            DATA if head.length > 0 => self.data_received += 1,
            DATA => {}
            HEADERS => self.streams += 1,
            // Part of a header block: h2 limits how many.
            CONTINUATION => {}
            // PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE and
            // unknown types (which h2 ignores).
            _ => {
                self.control += 1;
                // The age only when the rest is spent: no clock read per frame.
                if self.control > self.allowed(Duration::ZERO) {
                    let allowed = self.allowed(self.started.elapsed());
                    if self.control > allowed {
                        return Err(ControlFrameFlood {
                            control: self.control,
                            allowed,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts a DATA frame lb sent.
    pub fn data_sent(&mut self) {
        self.data_sent += 1;
    }

    /// Control frames allowed to a connection of this `age`.
    fn allowed(&self, age: Duration) -> u64 {
        let aged = age.as_secs() / AGE_PER_CONTROL_FRAME.as_secs();
        BASE_CONTROL_FRAMES
            .saturating_add(self.streams.saturating_mul(CONTROL_FRAMES_PER_STREAM))
            .saturating_add(self.data_sent.saturating_mul(CONTROL_FRAMES_PER_DATA_SENT))
            .saturating_add(
                self.data_received
                    .saturating_mul(CONTROL_FRAMES_PER_DATA_RECEIVED),
            )
            .saturating_add(aged)
    }
}

/// An HTTP/2 connection being watched.
#[derive(Debug)]
struct Http2Watch {
    inbound: FrameScanner,
    outbound: FrameScanner,
    budget: ControlBudget,
    /// The highest stream the client opened (the GOAWAY's last stream).
    last_stream: u32,
}

impl Http2Watch {
    fn new() -> Self {
        Self {
            inbound: FrameScanner::new(false),
            outbound: FrameScanner::new(true),
            budget: ControlBudget::new(Instant::now()),
            last_stream: 0,
        }
    }

    fn received(&mut self, bytes: &[u8]) -> Result<(), ControlFrameFlood> {
        let (budget, last_stream) = (&mut self.budget, &mut self.last_stream);
        self.inbound.feed(bytes, |frame| {
            if frame.head.kind == HEADERS {
                *last_stream = (*last_stream).max(frame.head.stream);
            }
            budget.received(frame.head)
        })
    }

    /// Follows what hyper wrote: an error GOAWAY among it is returned.
    fn sent(&mut self, bytes: &[u8]) -> Option<H2Close> {
        let mut goaway = None;
        let budget = &mut self.budget;
        let _ = self.outbound.feed(bytes, |frame| {
            match (frame.head.kind, frame.goaway_code) {
                (DATA, _) => budget.data_sent(),
                (_, Some(code)) if code != 0 => goaway = goaway.or(Some(H2Close::GoAway(code))),
                _ => {}
            }
            Ok::<_, std::convert::Infallible>(())
        });
        goaway
    }

    /// GOAWAY ENHANCE_YOUR_CALM with a short reason as debug data.
    fn goaway(&self) -> Vec<u8> {
        const DEBUG: &[u8] = b"too many control frames";
        let length = (8 + DEBUG.len()) as u32;
        let mut frame = Vec::with_capacity(FRAME_HEAD_LEN + 8 + DEBUG.len());
        frame.extend_from_slice(&length.to_be_bytes()[1..]);
        frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&self.last_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(DEBUG);
        frame
    }
}

#[derive(Debug)]
enum State {
    /// This many bytes of the preface seen so far.
    Sniffing(usize),
    /// Boxed: only HTTP/2 connections pay for the scanners.
    Http2(Box<Http2Watch>),
    /// Not HTTP/2: bytes pass unwatched.
    Passive,
    /// Over budget: every read and write fails.
    Refused,
}

/// A client connection whose HTTP/2 frames are watched (module docs). `on_close` hears, at
/// most once, why the connection is being ended.
pub struct H2Guard<S, F: FnOnce(H2Close)> {
    inner: S,
    state: State,
    on_close: Option<F>,
}

impl<S, F: FnOnce(H2Close)> H2Guard<S, F> {
    pub fn new(inner: S, on_close: F) -> Self {
        Self {
            inner,
            state: State::Sniffing(0),
            on_close: Some(on_close),
        }
    }

    fn report(&mut self, close: H2Close) {
        if let Some(on_close) = self.on_close.take() {
            on_close(close);
        }
    }

    /// Looks at bytes the client sent.
    fn received(&mut self, mut bytes: &[u8]) -> Result<(), ControlFrameFlood> {
        if let State::Sniffing(seen) = self.state {
            let wanted = &PREFACE[seen..];
            let n = wanted.len().min(bytes.len());
            if bytes[..n] != wanted[..n] {
                self.state = State::Passive;
                return Ok(());
            }
            if n < wanted.len() {
                self.state = State::Sniffing(seen + n);
                return Ok(());
            }
            self.state = State::Http2(Box::new(Http2Watch::new()));
            bytes = &bytes[n..];
        }
        match &mut self.state {
            State::Http2(watch) => watch.received(bytes),
            _ => Ok(()),
        }
    }
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 connection refused",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: FnOnce(H2Close) + Unpin> AsyncRead for H2Guard<S, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.state {
            State::Passive => return Pin::new(&mut this.inner).poll_read(cx, buf),
            State::Refused => return Poll::Ready(Err(refused())),
            State::Sniffing(_) | State::Http2(_) => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let Err(flood) = this.received(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        // GOAWAY only between two of hyper's frames (never inside one), best effort: a small
        // write into the socket's buffer; then nothing more is read or written.
        if let State::Http2(watch) = &this.state
            && watch.outbound.at_frame_boundary()
        {
            let goaway = watch.goaway();
            if let Poll::Ready(Ok(n)) = Pin::new(&mut this.inner).poll_write(cx, &goaway)
                && n == goaway.len()
            {
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
        }
        this.state = State::Refused;
        this.report(H2Close::ControlFrameFlood);
        buf.set_filled(before);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, flood)))
    }
}

impl<S: AsyncWrite + Unpin, F: FnOnce(H2Close) + Unpin> AsyncWrite for H2Guard<S, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match &mut this.state {
            State::Http2(watch) => {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                if let Some(close) = watch.sent(&buf[..n]) {
                    this.report(close);
                }
                Poll::Ready(Ok(n))
            }
            State::Refused => Poll::Ready(Err(refused())),
            State::Sniffing(_) | State::Passive => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match &mut this.state {
            State::Http2(watch) => {
                let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
                let mut left = n;
                let mut close = None;
                for buf in bufs {
                    if left == 0 {
                        break;
                    }
                    let used = left.min(buf.len());
                    close = close.or(watch.sent(&buf[..used]));
                    left -= used;
                }
                if let Some(close) = close {
                    this.report(close);
                }
                Poll::Ready(Ok(n))
            }
            State::Refused => Poll::Ready(Err(refused())),
            State::Sniffing(_) | State::Passive => {
                Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
            }
        }
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
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn heads(scanner: &mut FrameScanner, pieces: &[&[u8]]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for piece in pieces {
            let _ = scanner.feed(piece, |f| {
                frames.push(f);
                Ok::<_, ()>(())
            });
        }
        frames
    }

    #[test]
    fn finds_every_frame_wherever_the_stream_is_split() {
        let mut stream = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        stream.extend(frame(HEADERS, 0x4, 1, &[0x82; 20]));
        stream.extend(frame(DATA, 0x1, 1, &[7; 300]));
        stream.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0xb, b'x']));
        stream.extend(frame(PING, 0, 0, &[1; 8]));
        let whole = heads(&mut FrameScanner::new(true), &[&stream]);
        let kinds: Vec<u8> = whole.iter().map(|f| f.head.kind).collect();
        assert_eq!(kinds, [SETTINGS, HEADERS, DATA, GOAWAY, PING]);
        assert_eq!(whole[2].head.length, 300);
        assert_eq!(whole[3].goaway_code, Some(0xb));
        for split in 0..stream.len() {
            for second in split..stream.len() {
                let mut scanner = FrameScanner::new(true);
                let parts = [&stream[..split], &stream[split..second], &stream[second..]];
                assert_eq!(heads(&mut scanner, &parts), whole, "split {split}/{second}");
                assert!(scanner.at_frame_boundary());
            }
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(heads(&mut FrameScanner::new(true), &bytewise), whole);
        // Without GOAWAY codes, the GOAWAY is reported at its head.
        let plain = heads(&mut FrameScanner::new(false), &[&stream]);
        assert_eq!(plain[3].goaway_code, None);
    }

    #[test]
    fn knows_when_it_is_inside_a_frame() {
        let f = frame(DATA, 0, 1, &[0; 10]);
        let mut scanner = FrameScanner::new(true);
        heads(&mut scanner, &[&f[..4]]);
        assert!(!scanner.at_frame_boundary(), "inside a head");
        heads(&mut scanner, &[&f[4..12]]);
        assert!(!scanner.at_frame_boundary(), "inside a payload");
        heads(&mut scanner, &[&f[12..]]);
        assert!(scanner.at_frame_boundary());
    }

    fn head(kind: u8, length: u32) -> FrameHead {
        FrameHead {
            length,
            kind,
            flags: 0,
            stream: 0,
        }
    }

    #[test]
    fn control_frames_beyond_the_base_need_requests_or_data() {
        let mut budget = ControlBudget::new(Instant::now());
        for _ in 0..BASE_CONTROL_FRAMES {
            budget.received(head(PING, 8)).expect("within the base");
        }
        assert!(budget.received(head(SETTINGS, 0)).is_err());

        let mut budget = ControlBudget::new(Instant::now());
        budget.received(head(HEADERS, 10)).expect("a request");
        budget.data_sent();
        // Empty DATA and CONTINUATION frames earn nothing and cost nothing here.
        budget.received(head(DATA, 0)).expect("empty data");
        budget
            .received(head(CONTINUATION, 0))
            .expect("continuation");
        let earned = BASE_CONTROL_FRAMES + CONTROL_FRAMES_PER_STREAM + CONTROL_FRAMES_PER_DATA_SENT;
        for _ in 0..earned {
            budget
                .received(head(WINDOW_UPDATE, 4))
                .expect("earned by the request and its response");
        }
        let flood = budget
            .received(head(0x42, 0))
            .expect_err("unknown types count");
        assert_eq!((flood.control, flood.allowed), (earned + 1, earned));
    }

    #[test]
    fn an_old_connection_earns_keep_alive_pings() {
        let budget = ControlBudget::new(Instant::now());
        assert_eq!(
            budget.allowed(AGE_PER_CONTROL_FRAME * 6 * 60),
            BASE_CONTROL_FRAMES + 6 * 60
        );
    }

    type Closes = Arc<Mutex<Vec<H2Close>>>;

    fn guarded(
        io: tokio::io::DuplexStream,
    ) -> (
        H2Guard<tokio::io::DuplexStream, impl FnOnce(H2Close) + Unpin>,
        Closes,
    ) {
        let closes = Closes::default();
        let seen = closes.clone();
        let guard = H2Guard::new(io, move |c| seen.lock().expect("lock").push(c));
        (guard, closes)
    }

    #[tokio::test]
    async fn a_ping_flood_gets_goaway_and_the_connection_fails() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut server, closes) = guarded(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut flood = PREFACE.to_vec();
        flood.extend(frame(SETTINGS, 0, 0, &[]));
        flood.extend(frame(HEADERS, 0x5, 1, &[0x82]));
        for _ in 0..2 * BASE_CONTROL_FRAMES {
            flood.extend(frame(PING, 0, 0, &[9; 8]));
        }
        // Fed in odd pieces, so frames straddle reads.
        for piece in flood.chunks(1000 - 7) {
            client_write.write_all(piece).await.expect("write");
        }
        let mut buf = vec![0; 4096];
        let error = loop {
            match server.read(&mut buf).await {
                Ok(0) => panic!("EOF before the guard tripped"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(*closes.lock().expect("lock"), [H2Close::ControlFrameFlood]);
        assert!(server.write(b"more").await.is_err(), "no write after");
        drop(server);
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.expect("read");
        let frames = heads(&mut FrameScanner::new(true), &[&answer]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].goaway_code, Some(ENHANCE_YOUR_CALM));
        assert_eq!(
            &answer[9..13],
            &1u32.to_be_bytes(),
            "last stream: the request"
        );
    }

    #[tokio::test]
    async fn http1_passes_unwatched() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut server, closes) = guarded(server);
        // Begins like the preface, then is not.
        let request = b"PRIX / HTTP/1.1\r\n\r\n".repeat(500);
        client.write_all(&request).await.expect("write");
        drop(client);
        let mut read = Vec::new();
        server.read_to_end(&mut read).await.expect("read");
        assert_eq!(read, request);
        assert!(matches!(server.state, State::Passive));
        assert!(closes.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn reports_the_error_goaway_hyper_sends() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut server, closes) = guarded(server);
        // The preface split across reads.
        client.write_all(&PREFACE[..5]).await.expect("write");
        let mut buf = [0; 64];
        let _ = server.read(&mut buf).await.expect("read");
        client.write_all(&PREFACE[5..]).await.expect("write");
        let _ = server.read(&mut buf).await.expect("read");
        assert!(matches!(server.state, State::Http2(_)));
        // A graceful GOAWAY is no close reason; an error one is.
        let graceful = frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]);
        let calm = frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0xb, b'r']);
        server.write_all(&graceful).await.expect("write");
        server.write_all(&calm[..12]).await.expect("write");
        assert!(closes.lock().expect("lock").is_empty());
        server.write_all(&calm[12..]).await.expect("write");
        assert_eq!(
            *closes.lock().expect("lock"),
            [H2Close::GoAway(ENHANCE_YOUR_CALM)]
        );
    }
}
