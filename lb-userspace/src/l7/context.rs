//! `RequestCtx`: one request as it passes through the pipeline: where it came from, what each
//! phase decided (route, pool, backend, attempts) and what the log phase reports.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
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
    /// The client: the peer, or for a peer in the listener's `trusted_proxies` the address
    /// X-Forwarded-For names (set once the route is known).
    pub client: IpAddr,
    /// Who the request's credentials say it is (set by authentication policies).
    pub identity: Identity,
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
    /// The last backend answer's status.
    pub upstream_status: Option<u16>,
    /// Attempts after the first.
    pub retries: u32,
    /// A retry was wanted but the pool's budget refused it.
    pub retry_denied: bool,
    /// Failed upstream connection attempts.
    pub connect_errors: u32,
    /// An overload guard answered the request (503) itself.
    pub shed: Option<super::upstream::Shed>,
    /// A retry was wanted but the breaker's `max_retries` refused it.
    pub shed_retry: Option<super::upstream::Shed>,
    /// Filled only when an access log is written.
    pub access: Option<AccessRecord>,
    /// What the route's rate limits decided (empty without limits: no allocation).
    pub rate_limits: Vec<super::policy::rate_limit::Outcome>,
    /// What the route's authentication policy decided (counted in the metrics).
    pub auth: Option<AuthResult>,
    /// The route's `cors` allowed the request's origin: the Access-Control-Allow-Origin its
    /// response gets (None: no CORS headers).
    pub cors: Option<hyper::header::HeaderValue>,
    /// Routes with `compress`: the encoding the request accepts (set in the request phase,
    /// used in the response-body phase; None on other routes).
    pub compress: Option<super::policy::compress::Negotiated>,
    /// Routes with `cache`: what the cache did (None on other routes).
    pub cache: Option<super::cache::CacheStatus>,
}

/// One authentication policy's verdict on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthResult {
    /// `api_key`, `client_cert`, ...
    pub policy: &'static str,
    /// `allowed`, `missing`, `invalid`, `forbidden`.
    pub result: &'static str,
}

/// What authentication policies established about the request, for the policies after them
/// (rate-limit keys, upstream headers) and the access log.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The API-key consumer's name.
    pub consumer: Option<Arc<str>>,
    /// The verified JWT's claims.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The client certificate the listener verified (mTLS), for the whole connection.
    pub client_cert: Option<Arc<super::client_cert::PeerCert>>,
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
            client: peer.ip(),
            identity: Identity {
                client_cert: conn.client_cert.clone(),
                ..Identity::default()
            },
            route: None,
            pool: None,
            backend: None,
            status: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            upstream_status: None,
            retries: 0,
            retry_denied: false,
            connect_errors: 0,
            shed: None,
            shed_retry: None,
            access: None,
            auth: None,
            cors: None,
            compress: None,
            cache: None,
            rate_limits: Vec::new(),
        }
    }

    /// The route's index (metrics key).
    pub fn route_index(&self) -> Option<usize> {
        self.route.map(|(i, _)| i)
    }
}
