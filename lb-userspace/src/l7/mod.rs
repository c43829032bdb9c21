//! The L7 tier: an HTTP reverse proxy (routing, a per-route policy pipeline, upstream pools)
//! and tcp/udp stream listeners.
//!
//! Its settings (`[[pool]]`, `[[listener]]`, `[[route]]`) are compiled from the backend file by
//! `crate::config`; `use crate::config` below lets the modules here name them `super::config::X`.
//!
//! - `selection/`: backend choice (one module per algorithm).
//! - `pool.rs`: a pool's backends, algorithm, in-flight counts and keep-alive client.
//! - `body.rs`: request bodies streamed upstream within size and time limits.
//! - `headers.rs`: hop-by-hop removal, X-Forwarded-*, X-Request-Id.
//! - `hygiene.rs`: raw request-head checks hyper lacks (bare LF, Content-Length with
//!   Transfer-Encoding).
//! - `h2_guard.rs`: HTTP/2 control-frame floods hyper lacks limits for (PING, SETTINGS,
//!   WINDOW_UPDATE, ...), watched on the raw frames; why an HTTP/2 connection was closed.
//! - `lifecycle.rs`: connection slots per listener (`max_connections`), graceful shutdown.
//! - `client_limit.rs`: open connections per client (`max_connections_per_client`).
//! - `overload.rs`: the tier-wide guard (`--max-connections`, `--max-memory`).
//! - `server.rs`: listeners, accept, PROXY header, TLS, HTTP/1.1 + HTTP/2 connections.
//! - `routing.rs`: which route a request takes (and which pool of a weighted split).
//! - `proxy.rs`: `Proxy`, one generation of request-time state (pools, routes, metric handles).
//! - `pipeline.rs`: the request pipeline's phases, in order; `context.rs`: `RequestCtx`.
//! - `forward.rs`: the upstream phase (backend per attempt, timeouts, retries).
//! - `policy/`: per-route policies compiled into each route's chain (header edits, redirect,
//!   respond, timeout, rate limits).
//! - `observe.rs`: what each request reports (metrics handles); `access_log.rs`: JSON lines.
//! - `traffic.rs`: the status page's totals per listener, route and backend (answers by
//!   class, latency histogram, bytes, current and peak); `counted_io.rs`: a connection's bytes.
//! - `proxy_header.rs`: PROXY v1/v2 headers from trusted peers.
//! - `upgrade.rs`: HTTP/1.1 Upgrade (WebSocket): headers passed on, streams spliced after 101.
//! - `tls.rs`: HTTPS listeners (SNI certificate choice, ALPN, resumption).
//! - `client_cert.rs`: client certificates (mTLS): the listener's verifier, what a verified
//!   certificate says (`PeerCert`), `X-Forwarded-Client-Cert`.
//! - `upstream/`: opening upstream connections, private (per-client) upstream connections.
//! - `egress/`: forward-proxy listeners (CONNECT tunnels, absolute-form requests, egress
//!   rules, SSRF guard, proxy authentication).
//! - `stream/`: tcp and udp listeners (byte-stream proxy, TLS passthrough by SNI, PROXY
//!   header to backends, UDP sessions).
pub mod access_log;

mod answer;
mod body;
pub mod cache;
pub mod client_cert;
pub mod client_limit;
mod context;
mod counted_io;
pub mod egress;
mod forward;
/// Entry points for the fuzz targets (`fuzz/`), each checking its parser's invariants.
#[doc(hidden)]
pub mod fuzzing;
mod h2_guard;
mod headers;
pub(crate) mod http_conn;
mod hygiene;
pub mod jwt;
pub(crate) mod lifecycle;
pub mod observe;
pub mod overload;
mod pipeline;
pub mod policy;
mod pool;
mod proxy;
pub mod proxy_header;
mod routing;
pub mod selection;
mod server;
mod stream;
mod tls;
pub mod traffic;
mod upgrade;
pub mod upstream;

use crate::config;

pub use crate::config::route_rules::{HeaderMatch, HeaderRule, Rewrite, SplitTarget};
pub use access_log::AccessLog;
pub use config::{
    Algorithm, HashKey, HostMatch, L7Config, ListenerConfig, ListenerMode, PoolConfig, RouteConfig,
    StreamSettings,
};
pub use observe::Observer;
pub use overload::GlobalLimits;
pub use server::{L7Error, ReloadReport, RunningL7, serve, serve_guarded, serve_observed};
pub use tls::{TlsError, check_certificate};
pub use upstream::{BackendHealth, BackendStatus, PoolState, RetryBudget, RetryCounters};
