//! `RequestCtx`: one request as it passes through the pipeline: where it came from, what each
//! phase decided (route, pool, backend, attempts) and what the log phase reports.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{access_log::AccessRecord, config::RouteConfig, upstream::ConnInfo};

pub struct RequestCtx<'a> {
    pub listener: &'a str,
    /// The client's address (the one a PROXY header named, when one was sent).
    pub peer: SocketAddr,
    /// `http` or `https` (the downstream connection's).
    pub scheme: &'static str,
    pub conn: &'a ConnInfo,
    pub started: Instant,
    /// The matched route and its index in the configuration.
    pub route: Option<(usize, &'a RouteConfig)>,
    /// Index of the pool in the configuration.
    pub pool: Option<usize>,
    /// Index of the last backend tried, within the pool.
    pub backend: Option<usize>,
    pub status: u16,
    /// Request head to response head.
    pub duration: Duration,
    /// The last attempt's time to the upstream response head.
    pub upstream_duration: Option<Duration>,
    /// Attempts after the first.
    pub retries: u32,
    /// A retry was wanted but the pool's budget refused it.
    pub retry_denied: bool,
    /// Failed upstream connection attempts.
    pub connect_errors: u32,
    /// Filled only when an access log is written.
    pub access: Option<AccessRecord>,
}

impl<'a> RequestCtx<'a> {
    pub fn new(
        listener: &'a str,
        peer: SocketAddr,
        scheme: &'static str,
        conn: &'a ConnInfo,
    ) -> Self {
        Self {
            listener,
            peer,
            scheme,
            conn,
            started: Instant::now(),
            route: None,
            pool: None,
            backend: None,
            status: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            retries: 0,
            retry_denied: false,
            connect_errors: 0,
            access: None,
        }
    }

    /// The route's index (metrics key).
    pub fn route_index(&self) -> Option<usize> {
        self.route.map(|(i, _)| i)
    }
}
