//! The JSON access log: one line per request, written when its response has been sent (or
//! abandoned), so it carries the bytes sent and the whole duration.
//!
//! Lines go over a bounded channel to a writer thread: a request never waits on the disk.
//! When the writer falls behind by more than `QUEUE` lines, lines are dropped and counted
//! (`AccessLog::dropped`) rather than slowing the proxy. `AccessLog::reopen` (SIGUSR1, as
//! logrotate expects of NGINX) has the writer close the file and open the path again, after
//! the lines queued before it.
use std::{
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;

use super::pool::ProxyBody;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
pub struct AccessLog {
    lines: SyncSender<Message>,
    /// `--access-log-fields`: only these, in `FIELDS` order (None: all).
    fields: Option<Vec<&'static str>>,
    /// Shared with `lb_access_log_dropped` when metrics are on (`Observer` hands it over).
    dropped: prometheus_client::metrics::counter::Counter,
}

/// What the writer thread is sent.
enum Message {
    Line(String),
    /// Close the file and open its path again (it was rotated away).
    Reopen,
}

/// `-`: standard output; anything else: a file, appended to (created if missing).
fn open_target(target: &Path) -> io::Result<Box<dyn Write + Send>> {
    Ok(if target.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(target)?,
        )
    })
}

impl AccessLog {
    /// `-`: standard output; anything else: a file, appended to (created if missing).
    pub fn open(target: &Path) -> io::Result<Self> {
        let out = open_target(target)?;
        let (lines, rx) = sync_channel(QUEUE);
        let path = target.to_owned();
        std::thread::Builder::new()
            .name("lb-access-log".into())
            .spawn(move || write_lines(rx, out, &path))?;
        Ok(Self {
            lines,
            fields: None,
            dropped: Default::default(),
        })
    }

    /// Writes only `fields` (names from `FIELDS`; an unknown one is an error naming the
    /// known ones).
    pub fn with_fields(mut self, fields: &[String]) -> Result<Self, String> {
        let mut chosen = Vec::new();
        for name in fields {
            let Some(known) = FIELDS.iter().find(|f| **f == name.trim()) else {
                return Err(format!(
                    "unknown access log field {name:?} (known: {})",
                    FIELDS.join(", ")
                ));
            };
            chosen.push(*known);
        }
        // The log's own order, whatever the order asked.
        chosen.sort_by_key(|f| FIELDS.iter().position(|k| k == f));
        chosen.dedup();
        self.fields = Some(chosen);
        Ok(self)
    }

    /// Has the writer reopen the log's path once the lines queued so far are written (a new
    /// file after logrotate moved the old one away). Waits for room in the queue: a reopen is
    /// never dropped.
    pub fn reopen(&self) {
        let _ = self.lines.send(Message::Reopen);
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Counts dropped lines in `counter` (a registered metric) from now on.
    pub fn count_drops_in(&mut self, counter: prometheus_client::metrics::counter::Counter) {
        self.dropped = counter;
    }

    /// A line of another shape (the forward proxy's `egress` lines), queued as any other.
    pub(super) fn write_json(&self, line: &serde_json::Value) {
        self.queue(line.to_string());
    }

    /// Hands a line to the writer; with the queue full it is dropped and counted.
    fn queue(&self, text: String) {
        match self.lines.try_send(Message::Line(text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    fn write(&self, record: &AccessRecord, bytes_out: u64, duration: Duration) {
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client: record.client,
            listener: &record.listener,
            route: record.route.as_ref(),
            pool: record.pool.as_deref(),
            backend: record.backend,
            status: record.status,
            method: &record.method,
            host: record.host.as_deref(),
            path: &record.path,
            bytes_in: record.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration_ms: duration.as_secs_f64() * 1e3,
            upstream_ms: record.upstream_duration.map(|d| d.as_secs_f64() * 1e3),
            retries: record.retries,
            request_id: record.request_id.as_deref(),
            flow_id: record.flow_id.map(|id| format!("{id:016x}")),
            consumer: record.consumer.as_deref(),
            client_cert: record.client_cert.as_deref(),
            cache: record.cache,
            user_agent: record.user_agent.as_deref(),
            referer: record.referer.as_deref(),
            protocol: record.protocol,
            tls_version: record.tls_version,
            sni: record.sni.as_deref(),
            upstream_status: record.upstream_status,
            shed: record.shed,
        };
        // Serializing plain fields cannot fail.
        let text = match &self.fields {
            None => serde_json::to_string(&line),
            Some(fields) => serde_json::to_value(&line).map(|value| select(&value, fields)),
        };
        let Ok(text) = text else {
            return;
        };
        self.queue(text);
    }
}

/// The JSON object of `value`'s `fields`, in that order (absent ones left out).
fn select(value: &serde_json::Value, fields: &[&str]) -> String {
    let mut out = String::from("{");
    for name in fields {
        if let Some(v) = value.get(*name) {
            if out.len() > 1 {
                out.push(',');
            }
            // Field names are plain identifiers: no escaping needed.
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(&v.to_string());
        }
    }
    out.push('}');
    out
}

/// Writes lines until every sender is gone; flushes whenever the queue runs empty. On a
/// reopen the file at `path` is opened again; if that fails, the old one is kept (and the
/// failure logged), so no line is lost to a bad rotation.
fn write_lines(rx: Receiver<Message>, out: Box<dyn Write + Send>, path: &Path) {
    let mut out = io::BufWriter::new(out);
    while let Ok(message) = rx.recv() {
        let mut next = Some(message);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    if writeln!(out, "{line}").is_err() {
                        return;
                    }
                }
                Message::Reopen => {
                    if out.flush().is_err() {
                        return;
                    }
                    match open_target(path) {
                        Ok(file) => out = io::BufWriter::new(file),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), %e, "access log not reopened")
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// One line, as serialized.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: Option<SocketAddr>,
    listener: &'a str,
    route: Option<&'a RouteLabel>,
    pool: Option<&'a str>,
    backend: Option<SocketAddr>,
    status: u16,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    bytes_in: u64,
    bytes_out: u64,
    /// Request head received to response end.
    duration_ms: f64,
    /// The last upstream attempt: request sent to response head.
    upstream_ms: Option<f64>,
    retries: u32,
    request_id: Option<&'a str>,
    /// The L4 flow id the XDP tier gave the connection (hex), when it was a local VIP's.
    flow_id: Option<String>,
    /// The API-key consumer (admitted or refused by `allow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    /// The verified client certificate's name (CN, else first SAN).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<&'a str>,
    /// Routes with `cache`: HIT, MISS, EXPIRED, STALE, REVALIDATED or BYPASS.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    /// lb answered 503 itself: the overload guard that refused the request
    /// (`max_requests`, `adaptive_concurrency`, `memory`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    shed: Option<&'static str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    protocol: &'static str,
    tls_version: Option<&'static str>,
    sni: Option<&'a str>,
    upstream_status: Option<u16>,
}

/// Every field a line can have, in order (`--access-log-fields` picks among them).
pub const FIELDS: [&str; 27] = [
    "time",
    "client",
    "listener",
    "route",
    "pool",
    "backend",
    "status",
    "method",
    "host",
    "path",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_ms",
    "retries",
    "request_id",
    "flow_id",
    "consumer",
    "client_cert",
    "cache",
    "shed",
    "user_agent",
    "referer",
    "protocol",
    "tls_version",
    "sni",
    "upstream_status",
];

/// How a line names its route: by `name` when the route has one, else by its index (a
/// number, as before routes had names).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum RouteLabel {
    Name(String),
    Index(usize),
}

/// What the access log needs of one request, gathered by the proxy.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub client: Option<SocketAddr>,
    pub listener: String,
    pub route: Option<RouteLabel>,
    pub pool: Option<String>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    /// Request body bytes read from the client (counted as they are forwarded).
    pub bytes_in: Arc<AtomicU64>,
    pub upstream_duration: Option<Duration>,
    pub retries: u32,
    pub request_id: Option<String>,
    pub flow_id: Option<u64>,
    pub consumer: Option<Arc<str>>,
    pub client_cert: Option<Arc<str>>,
    pub cache: Option<&'static str>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'static str,
    pub tls_version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    /// The last backend answer's status (none: lb answered itself or no backend answered).
    pub upstream_status: Option<u16>,
    /// The overload guard that shed the request (`Shed::reason`).
    pub shed: Option<&'static str>,
}

/// A response body that counts what it sends and, when dropped (after the last frame, or
/// when the client went away), hands the count to `on_end`: where access log lines are
/// written once a response is over.
pub struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl LoggedBody {
    /// The reverse proxy's line for `record`, written through `observer`.
    pub fn wrap(
        inner: ProxyBody,
        started: Instant,
        observer: Arc<super::observe::Observer>,
        record: AccessRecord,
    ) -> ProxyBody {
        Self::on_end(inner, move |bytes| {
            if let Some(log) = observer.access_log() {
                log.write(&record, bytes, started.elapsed());
            }
        })
    }

    /// `inner`, with `on_end(bytes sent)` called once it is over.
    pub fn on_end(inner: ProxyBody, on_end: impl FnOnce(u64) + Send + Sync + 'static) -> ProxyBody {
        Self {
            inner,
            bytes: 0,
            on_end: Some(Box::new(on_end)),
        }
        .boxed()
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes);
        }
    }
}

/// A request body that counts the bytes it passes on.
pub struct CountedBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
