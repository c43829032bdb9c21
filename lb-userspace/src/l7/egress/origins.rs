//! Keep-alive connections to origins, per forward-proxy listener: idle HTTP/1.1 connections
//! kept by (the exact address dialed, the Host they carried, TLS or not). A request takes one
//! only for an address its own egress decision allowed (the key holds the dialed address, so
//! a pooled connection never reaches an address the request did not check), and only for
//! the same Host and TLS-ness (an inspected tunnel's connection was verified for its host).
//!
//! - A connection goes back when its response body is dropped (read to the end or not: hyper
//!   closes one whose body was cut short, and a closed sender is never kept).
//! - At most `MAX_IDLE_PER_KEY` per key and `MAX_KEYS` keys; a connection idle for
//!   `IDLE_TIMEOUT` is closed when next seen: at checkout, or by the sweep a checkin makes at
//!   most once per `IDLE_TIMEOUT` (or when the map is full). No task of its own: a listener
//!   without traffic keeps at most what it had (origins close their side after their own
//!   keep-alive timeout, which closes ours).
//! - A request that never left (the origin had just closed the idle connection) is tried on
//!   the next connection; so is an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS,
//!   TRACE: RFC 9110 9.2.2) that failed on a kept connection before any response head (the
//!   origin closed it as lb sent: replaying it is safe), once, on a new one. A body is
//!   replayed from a copy taken as it went out (`RecordedBody`, up to `REPLAY_BODY_LIMIT`; a
//!   bigger one, or one not sent whole, is not replayed: the error goes to the client).
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

// The reverse proxy's retry rule: methods a client may send again without asking (RFC 9110
// 9.2.2).
use crate::l7::forward::idempotent;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What requests to origins carry (the client's body, counted; or nothing).
pub(super) type OriginBody = BoxBody<Bytes, BoxError>;

/// The largest request body kept for a replay (what was sent beyond it is not kept).
const REPLAY_BODY_LIMIT: usize = 64 * 1024;

/// Idle connections kept per key.
const MAX_IDLE_PER_KEY: usize = 4;
/// Keys kept at once (distinct origin address + host pairs with idle connections).
const MAX_KEYS: usize = 1024;
/// An idle connection older than this is closed instead of used (below the usual origin
/// keep-alive timeouts, so lb rarely sends into a connection the origin is closing).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which connections a request may use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct OriginKey {
    /// The address dialed (one the request's decision allowed).
    pub addr: SocketAddr,
    /// The Host the requests on it carry (an inspected connection: the name verified).
    pub host: String,
    pub tls: bool,
}

struct Idle {
    sender: SendRequest<OriginBody>,
    since: Instant,
}

#[derive(Default)]
pub(super) struct Origins {
    idle: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_key: HashMap<OriginKey, Vec<Idle>>,
    /// When the last sweep ran (None: never).
    swept: Option<Instant>,
}

impl Kept {
    /// Drops closed and expired connections, and keys left without any.
    fn sweep(&mut self) {
        self.by_key.retain(|_, stack| {
            stack.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed());
            !stack.is_empty()
        });
        self.swept = Some(Instant::now());
    }
}

/// A connection in use by one exchange: back to the pool when dropped (with the response
/// body), unless closed.
struct Lease {
    pool: Weak<Origins>,
    key: OriginKey,
    sender: Option<SendRequest<OriginBody>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.checkin(std::mem::replace(&mut self.key, empty_key()), sender);
        }
    }
}

fn empty_key() -> OriginKey {
    OriginKey {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        host: String::new(),
        tls: false,
    }
}

/// A response, the address it came from, and its connection.
pub(super) struct Sent {
    pub response: Response<Incoming>,
    pub addr: SocketAddr,
    lease: Lease,
}

impl Sent {
    /// The response, its body returning the connection to the pool when dropped.
    pub fn into_response(self) -> Response<LeasedBody> {
        let lease = self.lease;
        self.response.map(|body| LeasedBody {
            body,
            _lease: lease,
        })
    }
}

impl Origins {
    /// Sends `req` on an idle connection of the first of `keys` that has one, else on the
    /// connection `connect` opens (its key says where it went).
    pub async fn send<F, Fut, E>(
        self: &Arc<Self>,
        keys: &[OriginKey],
        mut req: Request<OriginBody>,
        connect: F,
    ) -> Result<Sent, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(OriginKey, SendRequest<OriginBody>), E>>,
        E: From<hyper::Error>,
    {
        'kept: for key in keys {
            while let Some(mut sender) = self.checkout(key) {
                if sender.ready().await.is_err() {
                    continue;
                }
                // What a replay needs, for a request that may be replayed (idempotent): its
                // head, and a copy of its body as it goes out.
                let replay = idempotent(req.method()).then(|| {
                    let mut head = Request::new(());
                    *head.method_mut() = req.method().clone();
                    *head.uri_mut() = req.uri().clone();
                    *head.version_mut() = req.version();
                    *head.headers_mut() = req.headers().clone();
                    let recording = (!req.body().is_end_stream()).then(|| {
                        let recording = Arc::new(Mutex::new(Recording {
                            length: req.body().size_hint().exact().or_else(|| {
                                req.headers()
                                    .get(hyper::header::CONTENT_LENGTH)
                                    .and_then(|v| v.to_str().ok()?.parse().ok())
                            }),
                            ..Recording::default()
                        }));
                        let body = std::mem::replace(req.body_mut(), empty());
                        *req.body_mut() = RecordedBody {
                            inner: body,
                            recording: recording.clone(),
                        }
                        .boxed();
                        recording
                    });
                    (head, recording)
                });
                match sender.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(Sent {
                            response,
                            addr: key.addr,
                            lease: self.lease(key.clone(), sender),
                        });
                    }
                    Err(mut failed) => match (failed.take_message(), replay) {
                        // Not sent: the connection was going away. The next one gets it.
                        (Some(unsent), _) => req = unsent,
                        // Sent, and the connection closed under it: a new one gets it, with
                        // the body sent (when it went out whole and was kept).
                        (None, Some((head, recording))) => {
                            let body = match recording {
                                None => Some(empty()),
                                Some(recording) => lock(&recording).replay(),
                            };
                            let Some(body) = body else {
                                return Err(E::from(failed.into_error()));
                            };
                            tracing::debug!(addr = %key.addr, err = %failed.into_error(), "egress: kept origin connection failed, sending again");
                            req = head.map(|()| body);
                            break 'kept;
                        }
                        (None, None) => return Err(E::from(failed.into_error())),
                    },
                }
            }
        }
        let (key, mut sender) = connect().await?;
        let response = sender.send_request(req).await.map_err(E::from)?;
        Ok(Sent {
            response,
            addr: key.addr,
            lease: self.lease(key, sender),
        })
    }

    fn lease(self: &Arc<Self>, key: OriginKey, sender: SendRequest<OriginBody>) -> Lease {
        Lease {
            pool: Arc::downgrade(self),
            key,
            sender: Some(sender),
        }
    }

    /// The most recently used open connection for `key`, younger than the idle timeout.
    fn checkout(&self, key: &OriginKey) -> Option<SendRequest<OriginBody>> {
        let mut kept = lock(&self.idle);
        let idle = &mut kept.by_key;
        let stack = idle.get_mut(key)?;
        let mut found = None;
        while let Some(conn) = stack.pop() {
            if conn.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                stack.clear();
                break;
            }
            if !conn.sender.is_closed() {
                found = Some(conn.sender);
                break;
            }
        }
        if stack.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn checkin(&self, key: OriginKey, sender: SendRequest<OriginBody>) {
        if sender.is_closed() {
            return;
        }
        let mut kept = lock(&self.idle);
        let full = !kept.by_key.contains_key(&key) && kept.by_key.len() >= MAX_KEYS;
        if full || kept.swept.is_none_or(|at| at.elapsed() >= IDLE_TIMEOUT) {
            kept.sweep();
        }
        if !kept.by_key.contains_key(&key) && kept.by_key.len() >= MAX_KEYS {
            return;
        }
        let stack = kept.by_key.entry(key).or_default();
        if stack.len() < MAX_IDLE_PER_KEY {
            stack.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

fn empty() -> OriginBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// An HTTP/1.1 client connection over `io`, its connection task spawned.
pub(super) async fn handshake<S>(io: S) -> Result<SendRequest<OriginBody>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "egress origin connection");
        }
    });
    Ok(sender)
}

/// A copy of a request body as it was sent.
#[derive(Default)]
struct Recording {
    data: Vec<Bytes>,
    size: usize,
    /// Its length when known (Content-Length): hyper stops polling a body once that much
    /// went out, so its end may never be seen.
    length: Option<u64>,
    /// Sent whole (its end seen).
    complete: bool,
    /// More than `REPLAY_BODY_LIMIT`, or trailers: not kept.
    unkept: bool,
}

impl Recording {
    /// The body to send again: None unless it went out whole and was kept.
    fn replay(&self) -> Option<OriginBody> {
        let whole = self.complete || self.length == Some(self.size as u64);
        if !whole || self.unkept {
            return None;
        }
        let whole: Bytes = self.data.concat().into();
        Some(
            http_body_util::Full::new(whole)
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}

/// A request body that copies what it yields into its [`Recording`].
struct RecordedBody {
    inner: OriginBody,
    recording: Arc<Mutex<Recording>>,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut recording = lock(&self.recording);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) if recording.size + data.len() <= REPLAY_BODY_LIMIT => {
                    recording.size += data.len();
                    recording.data.push(data.clone());
                }
                _ => {
                    recording.unkept = true;
                    recording.data.clear();
                }
            },
            Poll::Ready(None) => recording.complete = true,
            Poll::Ready(Some(Err(_))) => recording.unkept = true,
            Poll::Pending => {}
        }
        drop(recording);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that returns its connection to the pool when dropped.
pub(super) struct LeasedBody {
    body: Incoming,
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Nothing panics while the map is locked, so a poisoned one is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::{Method, server::conn::http1 as server, service::service_fn};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A loopback origin answering "ok"; counts the connections it accepted. With `one_answer`,
    /// each connection answers its first request and is closed, unanswered, on its second.
    async fn origin_with(one_answer: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let stop = std::sync::Mutex::new(Some(stop));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst);
                        let stop = (one_answer && n > 0)
                            .then(|| stop.lock().expect("lock").take())
                            .flatten();
                        async move {
                            if let Some(stop) = stop {
                                // The whole request read (as a kernel buffers it), then
                                // the connection closed unanswered.
                                let _ = req.into_body().collect().await;
                                let _ = stop.send(());
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let connection =
                        server::Builder::new().serve_connection(TokioIo::new(tcp), service);
                    // The second request: the connection is dropped (closed) unanswered.
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped => {}
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
        origin_with(false).await
    }

    fn key(addr: SocketAddr, host: &str) -> OriginKey {
        OriginKey {
            addr,
            host: host.to_owned(),
            tls: false,
        }
    }

    /// One GET to `keys`, dialing `dial` when nothing is kept; whether it dialed.
    async fn get(pool: &Arc<Origins>, keys: &[OriginKey], dial: OriginKey) -> bool {
        let req = Request::get("/")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("request");
        let dialed = std::cell::Cell::new(false);
        let sent = pool
            .send(keys, req, || async {
                dialed.set(true);
                let tcp = TcpStream::connect(dial.addr)
                    .await
                    .expect("origin reachable");
                Ok::<_, hyper::Error>((dial, handshake(tcp).await?))
            })
            .await
            .expect("sent");
        // Read to the end: the connection goes back when the body is dropped.
        let body = sent
            .into_response()
            .into_body()
            .collect()
            .await
            .expect("body");
        assert_eq!(body.to_bytes(), "ok");
        dialed.get()
    }

    #[tokio::test]
    async fn kept_connections_serve_only_their_own_address_and_host() {
        let (a, accepted_a) = origin().await;
        let (b, accepted_b) = origin().await;
        let pool = Arc::new(Origins::default());
        assert!(
            get(&pool, &[key(a, "x")], key(a, "x")).await,
            "nothing kept yet"
        );
        // The same address and Host: the kept connection.
        assert!(!get(&pool, &[key(a, "x")], key(a, "x")).await);
        assert_eq!(accepted_a.load(Ordering::SeqCst), 1);
        // Another address allowed (not A): A's connection is not used.
        assert!(get(&pool, &[key(b, "x")], key(b, "x")).await);
        assert_eq!(accepted_b.load(Ordering::SeqCst), 1);
        // The same address with another Host: not shared either.
        assert!(get(&pool, &[key(a, "y")], key(a, "y")).await);
        assert_eq!(accepted_a.load(Ordering::SeqCst), 2);
        // With several allowed, a kept connection to any of them serves.
        assert!(!get(&pool, &[key(b, "z"), key(a, "y")], key(b, "z")).await);
        assert_eq!(
            accepted_a.load(Ordering::SeqCst) + accepted_b.load(Ordering::SeqCst),
            3
        );
    }

    /// One PUT of `body` (streamed in two frames); the body the origin answered with.
    async fn put(
        pool: &Arc<Origins>,
        at: OriginKey,
        body: &'static [u8],
    ) -> Result<Bytes, hyper::Error> {
        let (half, rest) = body.split_at(body.len() / 2);
        let frames = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(half))),
            Ok(Frame::data(Bytes::from_static(rest))),
        ]);
        let req = Request::put("/")
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .body(http_body_util::StreamBody::new(frames).boxed())
            .expect("request");
        let keys = [at.clone()];
        let sent = pool
            .send(&keys, req, || async {
                let tcp = TcpStream::connect(at.addr).await.expect("origin reachable");
                Ok::<_, hyper::Error>((at, handshake(tcp).await?))
            })
            .await?;
        Ok(sent.into_response().into_body().collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_put_the_origin_drops_on_a_kept_connection_goes_again_with_its_body() {
        let (a, accepted) = origin_with(true).await;
        let pool = Arc::new(Origins::default());
        assert!(get(&pool, &[key(a, "x")], key(a, "x")).await);
        // Taken from the pool, sent whole, dropped by the origin: sent again, body included.
        assert_eq!(
            put(&pool, key(a, "x"), b"payload").await.expect("answered"),
            "ok"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_body_over_the_limit_or_cut_short_is_not_replayed() {
        let mut recording = Recording {
            complete: true,
            ..Recording::default()
        };
        assert!(recording.replay().is_some(), "a whole empty body");
        recording.unkept = true;
        assert!(recording.replay().is_none(), "over the limit");
        let cut = Recording::default();
        assert!(cut.replay().is_none(), "not sent whole");
        assert!(idempotent(&Method::PUT) && !idempotent(&Method::POST));
    }

    #[tokio::test]
    async fn a_get_the_origin_drops_on_a_kept_connection_goes_again_on_a_new_one() {
        let (a, accepted) = origin_with(true).await;
        let pool = Arc::new(Origins::default());
        assert!(get(&pool, &[key(a, "x")], key(a, "x")).await);
        // Taken from the pool, sent, dropped by the origin: sent again on a new connection.
        assert!(
            get(&pool, &[key(a, "x")], key(a, "x")).await,
            "dialed again"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
