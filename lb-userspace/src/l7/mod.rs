//! The L7 tier (in progress): an HTTP reverse proxy with routing and upstream pools.
//!
//! - `config.rs`: the `[[pool]]`, `[[listener]]`, `[[route]]` sections of the backend file.
//! - `selection/`: backend choice (one module per algorithm).
//! - `pool.rs`: a pool's backends, algorithm, in-flight counts and keep-alive client.
//! - `headers.rs`: hop-by-hop removal, X-Forwarded-*, X-Request-Id.
//! - `server.rs`: listeners, accept, PROXY header, TLS, HTTP/1.1 + HTTP/2 connections.
//! - `routing.rs`: which route a request takes.
//! - `proxy.rs`: one request's journey: limits, route, backend, headers, forwarding, retries.
//! - `proxy_header.rs`: PROXY v1/v2 headers from trusted peers.
//! - `tls.rs`: HTTPS listeners (SNI certificate choice, ALPN, resumption).
//! - `stream/`: tcp and udp listeners (byte-stream proxy, TLS passthrough by SNI, PROXY
//!   header to backends, UDP sessions).
pub mod config;
mod headers;
mod pool;
mod proxy;
pub mod proxy_header;
mod routing;
pub mod selection;
mod server;
mod stream;
mod tls;

pub use config::{
    Algorithm, HashKey, HostMatch, L7Config, ListenerConfig, ListenerMode, PoolConfig, RouteConfig,
    StreamSettings,
};
pub use server::{L7Error, RunningL7, serve};
