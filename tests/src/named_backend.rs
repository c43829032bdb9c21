//! A backend that answers with its name, so a test sees which backend a request reached.
//! `GET /healthz` is the health check (not counted); `/slow` answers after `slow`; every other
//! path answers at once with `NAME PATH`.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Counts {
    /// Requests other than health checks.
    pub requests: AtomicU64,
    /// `/slow` requests being answered now.
    pub slow_in_progress: AtomicU64,
    /// `/slow` requests answered.
    pub slow_done: AtomicU64,
}

pub struct NamedBackend {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts it on 127.0.0.1 (ephemeral port) on the current tokio runtime.
pub async fn start(name: &'static str, slow: Duration) -> NamedBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let task = {
        let counts = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counts = counts.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counts = counts.clone();
                        async move { Ok::<_, Infallible>(answer(name, slow, &req, &counts).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        })
    };
    NamedBackend { addr, counts, task }
}

async fn answer<B>(
    name: &str,
    slow: Duration,
    req: &Request<B>,
    counts: &Counts,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if path == "/slow" {
        counts.slow_in_progress.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(slow).await;
        counts.slow_in_progress.fetch_sub(1, Ordering::Relaxed);
        counts.slow_done.fetch_add(1, Ordering::Relaxed);
    }
    Response::new(Full::new(Bytes::from(format!("{name} {path}\n"))))
}
