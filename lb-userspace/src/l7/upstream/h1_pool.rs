//! lb's own keep-alive pool for plain HTTP/1.1 backends (no TLS, no PROXY header): per backend
//! index, a stack of idle `hyper::client::conn::http1::SendRequest`s. Taking one is a lock,
//! a pop and a readiness check; no pool key is hashed, no URI is reparsed, no future is boxed
//! (hyper-util's legacy client did all three per request). The other upstream kinds (TLS,
//! HTTP/2, PROXY headers) keep hyper-util's client.
//!
//! - Reuse: the most recently used connection first (LIFO keeps a small hot set and lets the
//!   rest age out). A connection goes back on its stack when the response body is dropped
//!   (finished or not: hyper closes a connection whose body was not read to the end, and a
//!   closed sender is never reused). HTTP/1.1 carries one request at a time, so a sender on
//!   the stack is waited on (`ready`) before use; it is ready as soon as the connection's
//!   task has seen the end of the previous exchange.
//! - `idle_per_backend`: a connection coming back to a full stack is closed.
//! - `idle_timeout`: a connection idle longer is closed, when found on the stack at checkout
//!   (the stack is ordered by age, so everything below it goes too) and by a sweep every
//!   `idle_timeout` (a task started with the first idle connection, ending with the pool).
//! - A request that never left (the idle connection had just been closed by the backend) is
//!   sent again on the next connection, as hyper-util did (`retry_canceled_requests`).
//! - `max_connections` is the pool's in-flight cap, enforced by selection before a request
//!   gets here.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak, atomic::AtomicBool, atomic::Ordering},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    Method, Request, Response, Uri,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;

use super::connector::connect_tcp;
use crate::l7::{body::UpstreamBody, counted_io::CountedIo, traffic::TrafficStats};

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolSendError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream request: {0}")]
    Http(#[source] hyper::Error),
    /// The pool's circuit breaker had no room for a new connection (nothing was tried).
    #[error(transparent)]
    Overloaded(super::breaker::Overflow),
}

/// Plain HTTP/1.1 connections to a pool's backends.
pub struct Http1Pool {
    backends: Vec<Backend>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Counts connections and pending connects against the pool's caps.
    breaker: Option<Arc<super::Breaker>>,
    sweeping: AtomicBool,
    /// Handed to leases and the sweep so they can reach the stacks.
    this: Weak<Http1Pool>,
}

struct Backend {
    addr: SocketAddr,
    /// The backend's totals, which its connections count their bytes in.
    traffic: Option<Arc<TrafficStats>>,
    /// The Host header for requests without one (hyper-util's rule: the port only when it is
    /// not 80).
    host: HeaderValue,
    /// Oldest first.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A connection in use by one exchange: back to its stack when dropped (with the response
/// body), unless closed or discarded.
pub struct Lease {
    pool: Weak<Http1Pool>,
    backend: usize,
    sender: Option<SendRequest<UpstreamBody>>,
}

impl Http1Pool {
    /// `backends`: each backend's address and the totals its connections count bytes in.
    pub fn new(
        backends: &[(SocketAddr, Option<Arc<TrafficStats>>)],
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        breaker: Option<Arc<super::Breaker>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            backends: backends
                .iter()
                .map(|(addr, traffic)| Backend {
                    addr: *addr,
                    traffic: traffic.clone(),
                    host: host_value(*addr),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            max_idle,
            idle_timeout,
            connect_timeout,
            breaker,
            sweeping: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    /// Sends `req` (absolute URI, as for hyper-util's client) to backend `i`, on an idle
    /// connection or a new one. The lease must live as long as the response body.
    pub async fn send(
        &self,
        i: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolSendError> {
        let Some(backend) = self.backends.get(i) else {
            return Err(PoolSendError::Connect {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source: io::Error::new(io::ErrorKind::NotFound, "no such backend"),
            });
        };
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| backend.host.clone());
        if req.method() != Method::CONNECT {
            origin_form(req.uri_mut());
        }
        while let Some(mut sender) = self.checkout(backend) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(i, sender))),
                Err(mut failed) => match failed.take_message() {
                    // Not sent: the connection was going away. The next one gets it.
                    Some(unsent) => req = unsent,
                    None => return Err(PoolSendError::Http(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect(backend).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(PoolSendError::Http)?;
        Ok((response, self.lease(i, sender)))
    }

    fn lease(&self, backend: usize, sender: SendRequest<UpstreamBody>) -> Lease {
        Lease {
            pool: self.this.clone(),
            backend,
            sender: Some(sender),
        }
    }

    /// The most recently used open connection of `backend`, if any younger than the idle
    /// timeout.
    fn checkout(&self, backend: &Backend) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = lock(&backend.idle);
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() >= self.idle_timeout {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(&self, backend: &Backend) -> Result<SendRequest<UpstreamBody>, PoolSendError> {
        let addr = backend.addr;
        // Pending (counted) until connected; then the slot lives with the connection.
        let connecting = match &self.breaker {
            None => None,
            Some(b) => Some(
                b.connect()
                    .map_err(|shed| PoolSendError::Overloaded(super::breaker::Overflow(shed)))?,
            ),
        };
        let tcp = connect_tcp(addr, self.connect_timeout)
            .await
            .map_err(|source| PoolSendError::Connect { addr, source })?;
        let tcp = CountedIo::upstream(tcp, backend.traffic.clone());
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(PoolSendError::Http)?;
        let slot = connecting.map(super::breaker::Connecting::established);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%addr, %err, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    fn checkin(&self, backend: usize, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let Some(backend) = self.backends.get(backend) else {
            return;
        };
        {
            let mut idle = lock(&backend.idle);
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            self.start_sweep();
        }
    }

    /// Closes idle connections past the idle timeout every `idle_timeout`, until the pool goes.
    fn start_sweep(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = self.this.clone();
        let period = self.idle_timeout.max(Duration::from_millis(10));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        for backend in &self.backends {
            lock(&backend.idle).retain(|conn| {
                conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed()
            });
        }
    }

    /// Idle connections of backend `i`.
    #[cfg(test)]
    fn idle(&self, i: usize) -> usize {
        self.backends.get(i).map_or(0, |b| lock(&b.idle).len())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Closes the connection instead of keeping it (taken over by an upgrade).
    pub fn discard(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.checkin(self.backend, sender);
        }
    }
}

/// A response body that returns its connection to the pool when dropped.
pub struct LeasedBody {
    body: Incoming,
    _lease: Lease,
}

impl LeasedBody {
    pub fn new(body: Incoming, lease: Lease) -> Self {
        Self {
            body,
            _lease: lease,
        }
    }
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

/// Nothing panics while a stack is locked, so a poisoned one is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Host` for a backend: `IP:PORT`, or the address alone on port 80.
fn host_value(addr: SocketAddr) -> HeaderValue {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let text = match addr.port() {
        80 => ip,
        port => format!("{ip}:{port}"),
    };
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// The request target as an origin server wants it: path and query only ("/" for none).
fn origin_form(uri: &mut Uri) {
    *uri = match uri.path_and_query() {
        Some(target) if target.as_str() != "/" => {
            let mut parts = hyper::http::uri::Parts::default();
            parts.path_and_query = Some(target.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::{server::conn::http1 as server, service::service_fn};
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback HTTP/1.1 backend answering "ok"; counts the connections it accepted and
    /// those still open. With `one_shot` it closes each connection after one answer
    /// (`Connection: close`).
    struct TestBackend {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestBackend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn backend(one_shot: bool) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = server::Builder::new()
                        .keep_alive(!one_shot)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestBackend {
            addr,
            accepted,
            open,
            task,
        }
    }

    fn get(addr: SocketAddr) -> Request<UpstreamBody> {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *req.uri_mut() = format!("http://{addr}/x").parse().expect("uri");
        req
    }

    /// One request through `pool` to backend 0, body read to the end, connection returned.
    async fn fetch(pool: &Http1Pool, addr: SocketAddr) -> Result<(), PoolSendError> {
        let (response, lease) = pool.send(0, get(addr)).await?;
        let body = LeasedBody::new(response.into_body(), lease);
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(bytes, "ok");
        Ok(())
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 2 s");
    }

    fn pool(addr: SocketAddr, max_idle: usize, idle_timeout: Duration) -> Arc<Http1Pool> {
        Http1Pool::new(
            &[(addr, None)],
            max_idle,
            idle_timeout,
            Duration::from_secs(2),
            None,
        )
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let b = backend(false).await;
        let pool = pool(b.addr, 8, Duration::from_secs(60));
        for _ in 0..5 {
            fetch(&pool, b.addr).await.expect("request");
        }
        assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(0), 1);
    }

    #[tokio::test]
    async fn a_full_idle_stack_closes_the_returning_connection() {
        let b = backend(false).await;
        let pool = pool(b.addr, 1, Duration::from_secs(60));
        let (first, second) = tokio::join!(pool.send(0, get(b.addr)), pool.send(0, get(b.addr)));
        let (r1, l1) = first.expect("first");
        let (r2, l2) = second.expect("second");
        assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
        drop((r1, l1, r2, l2));
        assert_eq!(pool.idle(0), 1);
        eventually("the extra connection closed", || {
            b.open.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let b = backend(false).await;
        let pool = pool(b.addr, 8, Duration::from_millis(150));
        fetch(&pool, b.addr).await.expect("request");
        assert_eq!(pool.idle(0), 1);
        // The sweep closes it without any further request.
        eventually("the idle connection closed", || {
            b.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(pool.idle(0), 0);
        fetch(&pool, b.addr).await.expect("request");
        assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
        // Found expired at checkout (before any sweep ran): not used either.
        let pool = Http1Pool::new(
            &[(b.addr, None)],
            8,
            Duration::from_millis(1),
            Duration::from_secs(2),
            None,
        );
        fetch(&pool, b.addr).await.expect("request");
        tokio::time::sleep(Duration::from_millis(5)).await;
        fetch(&pool, b.addr).await.expect("request");
        assert_eq!(b.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_not_reused() {
        let b = backend(true).await;
        let pool = pool(b.addr, 8, Duration::from_secs(60));
        for n in 1..=3 {
            fetch(&pool, b.addr).await.expect("request");
            eventually("the backend closed", || b.open.load(Ordering::SeqCst) == 0).await;
            assert_eq!(b.accepted.load(Ordering::SeqCst), n);
        }
        // Straight after the answer, before the backend's close is seen: still not an error
        // (the answer said close, so the connection never goes back on the stack).
        for _ in 0..20 {
            fetch(&pool, b.addr).await.expect("request");
        }
    }

    /// A request body that sends one chunk, then never ends.
    struct EndlessUpload {
        sent: bool,
    }

    impl Body for EndlessUpload {
        type Data = Bytes;
        type Error = crate::l7::body::BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_body_is_not_handed_out() {
        let b = backend(false).await;
        let pool = pool(b.addr, 8, Duration::from_secs(60));
        // The backend answers without reading the upload, which goes on.
        let mut upload = Request::new(EndlessUpload { sent: false }.boxed());
        *upload.method_mut() = Method::POST;
        *upload.uri_mut() = format!("http://{}/up", b.addr).parse().expect("uri");
        let (response, lease) = pool.send(0, upload).await.expect("answer");
        let body = LeasedBody::new(response.into_body(), lease);
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
        // That connection is mid-upload (hyper gives it up rather than reuse it): the next
        // request gets another connection at once instead of waiting behind it.
        tokio::time::timeout(Duration::from_secs(2), fetch(&pool, b.addr))
            .await
            .expect("not stuck behind the upload")
            .expect("request");
        assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle(0), 1, "only the free connection is idle");
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors_and_hosts_are_set() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = listener.local_addr().expect("addr");
        drop(listener);
        let pool = pool(closed, 8, Duration::from_secs(60));
        let err = pool.send(0, get(closed)).await.expect_err("refused");
        assert!(matches!(err, PoolSendError::Connect { .. }), "{err}");
        assert!(pool.send(1, get(closed)).await.is_err(), "no backend 1");
    }

    #[test]
    fn host_values_and_origin_form() {
        assert_eq!(host_value("10.0.0.1:80".parse().expect("addr")), "10.0.0.1");
        assert_eq!(
            host_value("10.0.0.1:8080".parse().expect("addr")),
            "10.0.0.1:8080"
        );
        assert_eq!(host_value("[::1]:81".parse().expect("addr")), "[::1]:81");
        let mut uri: Uri = "http://10.0.0.1:8080/a/b?q=1".parse().expect("uri");
        origin_form(&mut uri);
        assert_eq!(uri, "/a/b?q=1");
        let mut uri: Uri = "http://10.0.0.1:8080".parse().expect("uri");
        origin_form(&mut uri);
        assert_eq!(uri, "/");
    }
}
