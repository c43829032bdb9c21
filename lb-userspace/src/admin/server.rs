//! The admin HTTP endpoints:
//!
//! - `GET /`: the status page (refreshes itself from `/api/status`).
//! - `GET /api/status`: the latest status snapshot as JSON.
//! - `GET /metrics`: OpenMetrics, or the Prometheus text format 0.0.4 when `Accept` asks for
//!   `text/plain` (`exposition.rs`).
//! - `POST /api/drain?pool=P&backend=ADDR` and `POST /api/undrain?...`: stop / resume new
//!   requests and flows to a backend (existing ones finish). Answered by the manager.
//! - `GET /healthz`: 200 while the process serves its admin API (liveness).
//! - `GET /readyz`: 200 once listeners are bound, the configuration loaded and the XDP tier
//!   attached (all done before this server starts), 503 from the stop signal on (draining).
//!
//! With a token (`lb run --admin-token-file`), the mutating endpoints (drain, undrain,
//! purge, upgrade) need `Authorization: Bearer TOKEN` (401 otherwise); reads stay open.
//! - `POST /api/purge?url=URL` (`&prefix=1`: every URL starting with it): removes cached
//!   responses from the routes' caches; answers how many keys went.
//! - `POST /api/upgrade`: hitless binary upgrade (`handover`): answers `upgraded pid N` once
//!   the new process is ready (this one then drains and exits), or why it failed (this one
//!   keeps serving).
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::{metrics::Metrics, status::Status};
use crate::l7::{http_conn::HttpBuilders, lifecycle::Lifecycle};

const PAGE: &str = include_str!("page.html");
const TEXT: &str = "text/plain; charset=utf-8";

/// A request the manager must answer.
#[derive(Debug)]
pub enum AdminCommand {
    Drain {
        pool: String,
        backend: String,
        drain: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Withdraw every VIP from BGP (`drain`) or announce them again.
    DrainNode {
        drain: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        url: String,
        prefix: bool,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Start the binary on disk in this process's place (`handover`); the answer is the new
    /// process's pid once it is ready.
    Upgrade {
        reply: oneshot::Sender<Result<u32, String>>,
    },
}

pub struct AdminState {
    pub status: Arc<ArcSwap<Status>>,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<AdminCommand>,
    /// Cleared when lb starts stopping (`/readyz` then answers 503).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The bearer token mutating endpoints require (None: open).
    pub token: Option<String>,
}

impl AdminState {
    /// Whether `req` may change things: no token configured, or the right one presented
    /// (compared in constant time).
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                subtle::ConstantTimeEq::ct_eq(given.trim().as_bytes(), token.as_bytes()).into()
            })
    }
}

/// The running admin server.
pub struct AdminServer {
    /// The address it is bound to.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// The connections being served, finished gracefully by `stop`.
    lifecycle: Arc<Lifecycle>,
    /// A copy of the listening socket, for the next lb of an upgrade.
    socket: std::os::fd::OwnedFd,
}

impl AdminServer {
    /// Stops accepting, lets the answers being written finish (keep-alive connections close
    /// after their current request) for up to `grace`, then drops what is left.
    pub async fn stop(self, grace: std::time::Duration) {
        self.task.abort();
        // Awaited so the accept loop's socket (and its phase receiver) are gone first.
        let _ = self.task.await;
        self.lifecycle.shutdown(grace).await;
    }

    /// The listening socket for the next lb of an upgrade (`handover`).
    pub fn handover_socket(
        &self,
    ) -> std::io::Result<(crate::handover::HandedSocket, std::os::fd::OwnedFd)> {
        let socket = crate::handover::HandedSocket {
            fd: -1,
            transport: crate::handover::Transport::Tcp,
            name: crate::handover::ADMIN_LISTENER.into(),
            addr: self.addr,
        };
        Ok((socket, self.socket.try_clone()?))
    }
}

/// Binds `addr` (or takes the socket the previous lb handed over for it) and serves until the
/// returned task is aborted.
pub async fn serve_admin(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<AdminServer> {
    use std::os::fd::AsFd as _;
    let listener = match crate::handover::inherited::take_tcp(crate::handover::ADMIN_LISTENER, addr)
    {
        Some(handed) => handed?,
        None => TcpListener::bind(addr).await?,
    };
    let bound = listener.local_addr()?;
    let socket = listener.as_fd().try_clone_to_owned()?;
    let lifecycle = Arc::new(Lifecycle::default());
    let gate = lifecycle.gate(ADMIN_CONNECTIONS);
    let task = tokio::spawn(async move {
        let builders = Arc::new(HttpBuilders::new(
            // The L7 listeners' defaults.
            crate::config::listener::DEFAULT_MAX_HEADER_BYTES,
            crate::config::listener::DEFAULT_HEADER_TIMEOUT,
        ));
        loop {
            let admission = gate.admit().await;
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (state, builders, phase) = (state.clone(), builders.clone(), admission.phase());
            tokio::spawn(admission.run(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(req, &state).await) }
                });
                builders.serve_plain(tcp, service, phase).await;
            }));
        }
    });
    Ok(AdminServer {
        addr: bound,
        task,
        lifecycle,
        socket,
    })
}

/// Admin connections served at once (more wait in the kernel's queue).
const ADMIN_CONNECTIONS: usize = 256;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The percent-decoded value of `name` in `query` (`lb ctl` encodes `[` `]` of IPv6 backends).
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// `%XX` to the byte it names (a malformed escape is kept as written).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() == Method::POST {
        if !state.authorized(&req) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                TEXT,
                "this endpoint needs Authorization: Bearer TOKEN (lb ctl --admin-token-file)\n"
                    .into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"lb admin\""),
            );
            return r;
        }
        if !state.ready.load(std::sync::atomic::Ordering::Relaxed) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n".into());
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if state.ready.load(std::sync::atomic::Ordering::Relaxed) {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n".into())
            }
        }
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        (&Method::GET, "/api/status") => match serde_json::to_string(&**state.status.load()) {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
        },
        (&Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let openmetrics = state.metrics.render();
            if super::exposition::wants_text_004(accept) {
                let text = super::exposition::to_text_004(&openmetrics);
                reply(StatusCode::OK, super::exposition::TEXT_004, text)
            } else {
                reply(StatusCode::OK, super::exposition::OPENMETRICS, openmetrics)
            }
        }
        (&Method::POST, path @ ("/api/drain" | "/api/undrain")) => {
            let query = req.uri().query().unwrap_or_default();
            let (Some(pool), Some(backend)) =
                (query_param(query, "pool"), query_param(query, "backend"))
            else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "needs ?pool=NAME&backend=ADDR:PORT\n".into(),
                );
            };
            let answer = ask(state, StatusCode::NOT_FOUND, |reply| AdminCommand::Drain {
                pool,
                backend,
                drain: path == "/api/drain",
                reply,
            })
            .await;
            match answer {
                Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
                Err(answer) => answer,
            }
        }
        (&Method::POST, path @ ("/api/node/drain" | "/api/node/undrain")) => {
            let answer = ask(state, StatusCode::CONFLICT, |reply| {
                AdminCommand::DrainNode {
                    drain: path == "/api/node/drain",
                    reply,
                }
            })
            .await;
            match answer {
                Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
                Err(answer) => answer,
            }
        }
        (&Method::POST, "/api/purge") => {
            let query = req.uri().query().unwrap_or_default();
            let Some(url) = query_param(query, "url") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "needs ?url=SCHEME://HOST:PORT/PATH (and &prefix=1 for a prefix)\n".into(),
                );
            };
            let prefix = query_param(query, "prefix").is_some_and(|v| v == "1" || v == "true");
            let answer = ask(state, StatusCode::NOT_FOUND, |reply| AdminCommand::Purge {
                url,
                prefix,
                reply,
            })
            .await;
            match answer {
                Ok(n) => reply(StatusCode::OK, TEXT, format!("purged {n}\n")),
                Err(answer) => answer,
            }
        }
        (&Method::POST, "/api/upgrade") => {
            match ask(state, StatusCode::INTERNAL_SERVER_ERROR, |reply| {
                AdminCommand::Upgrade { reply }
            })
            .await
            {
                Ok(pid) => reply(StatusCode::OK, TEXT, format!("upgraded pid {pid}\n")),
                Err(answer) => answer,
            }
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Sends the manager the command `make` builds around a reply channel and waits for its
/// answer; Err is the HTTP answer for a refusal (`refused` with the manager's words) or a
/// manager that is gone (503).
async fn ask<T>(
    state: &AdminState,
    refused: StatusCode,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> AdminCommand,
) -> Result<T, Response<Full<Bytes>>> {
    let gone = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "shutting down\n".into(),
        )
    };
    let (tx, rx) = oneshot::channel();
    if state.commands.send(make(tx)).await.is_err() {
        return Err(gone());
    }
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(reply(refused, TEXT, format!("{e}\n"))),
        Err(_) => Err(gone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = "pool=web&backend=%5B::1%5D:80&bad=%zz";
        assert_eq!(query_param(q, "pool").as_deref(), Some("web"));
        assert_eq!(query_param(q, "backend").as_deref(), Some("[::1]:80"));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "none"), None);
    }
}
