//! The L7 sections of the backend file.
//!
//! ```toml
//! [[pool]]
//! name = "web"
//! algorithm = "round_robin"      # round_robin (smooth weighted) | least_conn | p2c | consistent_hash
//! hash_key = "client_ip"         # consistent_hash: client_ip | "header:NAME" | "cookie:NAME"
//! connect_timeout = "2s"
//! request_timeout = "30s"        # until the response headers arrive
//! retries = 1                    # idempotent requests only, each to a different backend
//! proxy_protocol = "v2"          # optional: send a PROXY v1/v2 header on each upstream connection
//!                                # (such connections are private: one client each)
//! retry_budget_percent = 20      # retries in flight <= 20% of requests in flight, 0..=100
//! retry_budget_min = 3           # ... but this many concurrent retries are always allowed
//! max_fails = 3                  # consecutive failures (connect, timeout, 5xx) that eject a
//! fail_timeout = "10s"           # backend for this long (nginx semantics); 0 = never eject
//! idle_per_backend = 256         # idle keep-alive connections kept per backend (0: none)
//! idle_timeout = "60s"           # ... closed after this long unused
//! protocol = "http1"             # to the backends: http1 | h2c (cleartext HTTP/2) | h2 (TLS, ALPN h2)
//! tls = false                    # HTTPS to the backends (implied by protocol = "h2")
//! ca_file = "/etc/lb/ca.pem"     # tls: verify against these (PEM); default: the system bundle
//! tls_server_name = "api.internal"  # tls: SNI and verified name; default: the backend's IP
//! tls_insecure = false           # tls: DANGEROUS, no verification (anyone can impersonate)
//!   [pool.health_check]          # optional: active checks (keys: see health/config.rs)
//!   type = "http"
//!   path = "/healthz"
//!   [[pool.backend]]
//!   address = "10.0.0.1:8080"
//!   weight = 1                   # default 1; 0 = no new requests
//!   backup = false               # used only when no primary is available
//!   max_connections = 100        # optional: most requests in flight to it; at the cap it is
//!                                # skipped (all at their cap: 503)
//!
//! [[listener]]
//! name = "public"
//! address = "0.0.0.0:8443"
//!   [[listener.tls]]             # optional: HTTPS; certificates chosen by SNI
//!   cert = "/etc/lb/site.pem"    # chain, PEM
//!   key = "/etc/lb/site.key"
//!   server_names = ["example.com", "*.example.com"]   # the first cert is also the default
//! proxy_protocol_from = ["10.0.0.0/8"]   # these peers must send a PROXY v1/v2 header first
//! proxy_protocol_timeout = "5s"
//! max_header_bytes = 65536      # request head limit (431 beyond), >= 8192
//! max_body_bytes = 104857600    # body limit (413; declared: before reading, chunked: counted)
//! header_timeout = "10s"        # complete request head within this (then closed)
//! trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]   # believe these peers' X-Forwarded-For:
//!                                # the client is its rightmost address not in these networks
//! body_timeout = "30s"          # each next request body piece within this (408, closed)
//! max_connections = 10000       # open client connections; more wait in the accept queue
//!
//! [[listener]]                   # a stream listener: no HTTP, each connection forwarded
//! name = "edge"
//! address = "0.0.0.0:443"
//! mode = "tcp"                   # http (default) | tcp | udp
//! idle_timeout = "10m"           # tcp/udp: closed after this long without traffic (udp: 30s)
//! client_hello_timeout = "5s"    # tcp with sni routes: whole ClientHello within this
//! max_sessions = 10000           # udp: client sessions at once (new clients dropped beyond)
//!
//! [[route]]                      # tcp: TLS passed through, routed by the ClientHello's SNI
//! listener = "edge"
//! sni = "*.example.com"          # optional: exact name or *.suffix; no sni = any / no SNI
//! pool = "web"                   # tcp/udp routes: no host/path keys; pool hashes client_ip
//!
//! [[route]]                      # first match wins, in file order
//! listener = "public"
//! host = "*.example.com"         # optional: exact name or *.suffix
//! path_prefix = "/api"           # optional (default "/"), on segment boundaries
//! strip_prefix = true            # remove the prefix before forwarding
//! pool = "web"
//!
//! [[route]]                      # every condition given must hold
//! listener = "public"
//! path = "/health"               # exact path; at most one of path, path_prefix, path_regex
//! # path_regex = "^/v[0-9]+/"    # a match anywhere in the path (raw, percent-encoded)
//! methods = ["GET", "HEAD"]      # optional (default any), upper case
//!   [[route.header]]             # optional, repeatable: all must match; each has one of
//!   name = "x-canary"            #   value = "1" (exact), present = true|false,
//!   value = "1"                  #   regex = "^(1|yes)$" (a match in some value)
//! rewrite_prefix = "/healthz"    # replaces the matched path_prefix or path
//! # rewrite_regex = "/new/$1"    # with path_regex: its match replaced ($1, ${name}, $$)
//! split = [{ pool = "stable", weight = 95 }, { pool = "canary", weight = 5 }]
//!                                # instead of pool: smooth weighted round robin (weight
//!                                # default 1, 0 = none; the total must be above 0)
//! ```
use std::{
    collections::HashSet,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    proxy_header::ProxyVersion,
    route_rules::{HeaderMatch, RawHeaderMatch, RawSplitTarget, Rewrite, SplitTarget},
    selection::Backend,
};
use crate::{
    config::{ConfigError, RawFile},
    health::config::{HealthCheckConfig, RawHealthCheck},
};

mod checks;
mod stream;
pub use checks::{addresses_overlap, warnings};
pub use stream::{ListenerMode, StreamSettings};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConn,
    P2c,
    ConsistentHash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(hyper::header::HeaderName),
    Cookie(String),
}

/// Compared on reload (`==`): an unchanged pool keeps its state and connections. TLS
/// settings compare by what the connector was built from, the CA file by its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub backends: Vec<Backend>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    /// Send this PROXY protocol header first on every upstream connection (true client and
    /// the address it connected to).
    pub proxy_protocol: Option<ProxyVersion>,
    /// Active health checks of the backends (none: backends count as up).
    pub health_check: Option<HealthCheckConfig>,
    /// Retries in flight may be at most this percentage of requests in flight ...
    pub retry_budget_percent: u32,
    /// ... but this many concurrent retries are always allowed.
    pub retry_budget_min: u32,
    /// Consecutive failures that eject a backend (0: never) ...
    pub max_fails: u32,
    /// ... for this long.
    pub fail_timeout: Duration,
    /// Per backend (index as in `backends`): most requests in flight at once; None: no cap.
    pub backend_max_connections: Vec<Option<u32>>,
    /// Idle keep-alive connections kept per backend, and for how long.
    pub idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// HTTP/1.1, h2c or h2 (TLS) to the backends.
    pub protocol: super::upstream::UpstreamProtocol,
    /// HTTPS to the backends (None: plain TCP).
    pub tls: Option<super::upstream::UpstreamTls>,
}

/// One certificate of an HTTPS listener.
#[derive(Clone)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names it answers for (exact or `*.suffix`); the listener's first certificate also
    /// answers everything else.
    pub server_names: Vec<String>,
    /// Lines of the `cert` and `key` keys (for `lb check-config`'s unreadable-file errors).
    pub cert_line: usize,
    pub key_line: usize,
}

/// Without the line numbers: moving a section in the file must not restart its listener. The
/// files' contents are not compared: a reload re-reads them for every HTTPS listener it keeps
/// and swaps them in (`RunningL7::reload`).
impl PartialEq for TlsCertConfig {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.server_names == other.server_names
    }
}

impl Eq for TlsCertConfig {}

/// Without the line numbers, as `PartialEq`.
impl std::fmt::Debug for TlsCertConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertConfig")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// Compared on reload (`==`, with the bound address): an unchanged listener keeps accepting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// Empty: plain HTTP. Otherwise HTTPS with these certificates.
    pub tls: Vec<TlsCertConfig>,
    /// Connections from these networks must start with a PROXY v1/v2 header (empty: none).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    pub proxy_protocol_timeout: Duration,
    /// Largest request head (HTTP/1.1; answered 431 beyond), at least 8192.
    pub max_header_bytes: usize,
    /// Largest declared request body (Content-Length; answered 413 before reading it).
    pub max_body_bytes: u64,
    /// Time a client gets to send a complete request head (HTTP/1.1; then the connection is
    /// closed, as NGINX does).
    pub header_timeout: Duration,
    /// Peers whose X-Forwarded-For is believed (walked right to left past these networks to
    /// find the client for X-Real-IP and client-IP hashing). Empty: the peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time a client gets to send the next piece of a request body (then 408 if no response
    /// has started, and the connection is closed; the upstream request is aborted).
    pub body_timeout: Duration,
    /// Client connections served at once; beyond, new ones wait in the kernel accept queue.
    pub max_connections: usize,
    /// http (the reverse proxy) or a stream listener (tcp, udp).
    pub mode: ListenerMode,
    pub stream: StreamSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
}

impl HostMatch {
    /// Case-insensitive, without allocating (this runs per request and route).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// `name`, or None (metrics and the access log then use the route's index).
    pub name: Option<String>,
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// The pool; with `split`, the first split pool (`routing::Router` picks the real one).
    pub pool: String,
    /// `path`: the whole path must be exactly this (instead of `path_prefix`, then "/").
    pub path_exact: Option<String>,
    /// `path_regex`: the path must contain a match (instead of `path_prefix`, then "/").
    pub path_regex: Option<regex::Regex>,
    /// Empty: any method.
    pub methods: Vec<hyper::Method>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// `rewrite_prefix`, `rewrite_regex`, or `strip_prefix` as `Rewrite::Prefix("/")`.
    pub rewrite: Option<Rewrite>,
    /// Weighted pools instead of `pool` (empty: just `pool`).
    pub split: Vec<SplitTarget>,
    /// tcp listeners: the ClientHello's server name (None: any, and connections without SNI).
    pub sni: Option<HostMatch>,
    /// The route's policies, compiled, by pipeline phase.
    pub chain: super::policy::RouteChain,
}

impl RouteConfig {
    /// The route's label in metrics and the access log: its name, or its index.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }
}

#[derive(Clone, Debug, Default)]
pub struct L7Config {
    pub pools: Vec<PoolConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    name: Spanned<String>,
    #[serde(default)]
    algorithm: Algorithm,
    hash_key: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    #[serde(default = "one")]
    retries: u32,
    proxy_protocol: Option<ProxyVersion>,
    health_check: Option<RawHealthCheck>,
    #[serde(default, rename = "backend")]
    backends: Vec<Spanned<RawBackend>>,
    // Upstream keys, read by `upstream::config`.
    pub(super) retry_budget_percent: Option<Spanned<u32>>,
    pub(super) retry_budget_min: Option<u32>,
    pub(super) max_fails: Option<u32>,
    pub(super) fail_timeout: Option<Spanned<String>>,
    pub(super) idle_per_backend: Option<usize>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<super::upstream::UpstreamProtocol>>,
    pub(super) tls: Option<Spanned<bool>>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) tls_server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tls_insecure: bool,
}

impl RawPool {
    pub(crate) fn name(&self) -> String {
        self.name.get_ref().clone()
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    address: Spanned<String>,
    weight: Option<u32>,
    #[serde(default)]
    backup: bool,
    pub(super) max_connections: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    #[serde(default)]
    tls: Vec<RawTlsCert>,
    #[serde(default)]
    proxy_protocol_from: Vec<Spanned<String>>,
    proxy_protocol_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<usize>>,
    max_body_bytes: Option<u64>,
    header_timeout: Option<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    mode: Option<Spanned<ListenerMode>>,
    idle_timeout: Option<Spanned<String>>,
    client_hello_timeout: Option<Spanned<String>>,
    max_sessions: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsCert {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    #[serde(default)]
    server_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Labels the route in metrics and the access log (default: its index).
    pub(super) name: Option<Spanned<String>>,
    listener: Spanned<String>,
    host: Option<Spanned<String>>,
    pub(super) path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    /// Required unless `split` is given (checked in `route_rules.rs`).
    pub(super) pool: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) path_regex: Option<Spanned<String>>,
    pub(super) methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default, rename = "header")]
    pub(super) headers: Vec<Spanned<RawHeaderMatch>>,
    pub(super) rewrite_prefix: Option<Spanned<String>>,
    pub(super) rewrite_regex: Option<Spanned<String>>,
    pub(super) split: Option<Spanned<Vec<Spanned<RawSplitTarget>>>>,
    /// tcp listeners: route by the ClientHello's server name.
    pub(super) sni: Option<Spanned<String>>,
    // Policies (http routes), compiled by `policy::compile`.
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) request_headers: Option<Spanned<super::policy::headers::RawHeaderEdits>>,
    pub(super) response_headers: Option<Spanned<super::policy::headers::RawHeaderEdits>>,
    pub(super) redirect: Option<Spanned<super::policy::redirect::RawRedirect>>,
    pub(super) respond: Option<Spanned<super::policy::respond::RawRespond>>,
}

/// `body_timeout`: a duration above zero, 30 s by default.
fn body_timeout(
    value: &Option<Spanned<String>>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(Duration::from_secs(30));
    };
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) if d.is_zero() => Err(err(v.span(), "body_timeout must be above 0".to_owned())),
        Ok(d) => Ok(d),
        Err(e) => Err(err(
            v.span(),
            format!("body_timeout {:?}: {e}", v.get_ref()),
        )),
    }
}

/// `max_connections`: at least 1, 10000 by default.
fn max_connections(
    value: &Option<Spanned<usize>>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(10_000),
        Some(n) if *n.get_ref() == 0 => Err(err(
            n.span(),
            "max_connections must be at least 1".to_owned(),
        )),
        Some(n) => Ok(*n.get_ref()),
    }
}

impl L7Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Parses `text` (the whole backend file; this takes its L7 sections).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = RawFile::parse(text, path)?;
        Self::from_raw(raw.pools, raw.listeners, raw.routes, text, path)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub(crate) fn from_raw(
        raw_pools: Vec<Spanned<RawPool>>,
        raw_listeners: Vec<Spanned<RawListener>>,
        raw_routes: Vec<Spanned<RawRoute>>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
        let duration = |value: &Option<Spanned<String>>, default: Duration, what: &str| {
            value.as_ref().map_or(Ok(default), |v| {
                humantime::parse_duration(v.get_ref())
                    .map_err(|e| err(v.span(), format!("{what} {:?}: {e}", v.get_ref())))
            })
        };

        let mut pools = Vec::new();
        let mut names = HashSet::new();
        for pool in raw_pools {
            let mut pool = pool.into_inner();
            let name = pool.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return Err(err(pool.name.span(), format!("duplicate pool {name:?}")));
            }
            let hash_key = match &pool.hash_key {
                None => HashKey::ClientIp,
                Some(k) => match k.get_ref().as_str() {
                    "client_ip" => HashKey::ClientIp,
                    other => {
                        if let Some(h) = other.strip_prefix("header:") {
                            HashKey::Header(
                                hyper::header::HeaderName::from_bytes(h.as_bytes())
                                    .map_err(|_| err(k.span(), format!("bad header name {h:?}")))?,
                            )
                        } else if let Some(c) = other.strip_prefix("cookie:") {
                            HashKey::Cookie(c.to_owned())
                        } else {
                            return Err(err(
                                k.span(),
                                format!(
                                    "hash_key {other:?}: expected client_ip, header:NAME or cookie:NAME"
                                ),
                            ));
                        }
                    }
                },
            };
            let caps = super::upstream::config::backend_caps(&pool.backends, &err)?;
            let mut backends = Vec::new();
            for b in std::mem::take(&mut pool.backends) {
                let b = b.into_inner();
                let addr: SocketAddr = b.address.get_ref().parse().map_err(|_| {
                    err(
                        b.address.span(),
                        format!(
                            "backend address {:?} is not ADDRESS:PORT",
                            b.address.get_ref()
                        ),
                    )
                })?;
                backends.push(Backend {
                    addr,
                    weight: b.weight.unwrap_or(1),
                    backup: b.backup,
                });
            }
            let health_check = pool
                .health_check
                .take()
                .map(|raw| HealthCheckConfig::from_raw(raw, text, path))
                .transpose()?;
            let mut pool_config = PoolConfig {
                name,
                algorithm: pool.algorithm,
                hash_key,
                backends,
                connect_timeout: duration(
                    &pool.connect_timeout,
                    Duration::from_secs(2),
                    "connect_timeout",
                )?,
                request_timeout: duration(
                    &pool.request_timeout,
                    Duration::from_secs(30),
                    "request_timeout",
                )?,
                retries: pool.retries,
                proxy_protocol: pool.proxy_protocol,
                retry_budget_percent: 0,
                retry_budget_min: 0,
                max_fails: 0,
                fail_timeout: Duration::ZERO,
                backend_max_connections: caps,
                idle_per_backend: 0,
                idle_timeout: Duration::ZERO,
                protocol: super::upstream::UpstreamProtocol::Http1,
                tls: None,
                health_check,
            };
            super::upstream::config::apply(&pool, &mut pool_config, &err)?;
            pools.push(pool_config);
        }

        let mut listeners = Vec::new();
        let mut listener_names = HashSet::new();
        let mut addresses = Vec::new();
        for l in raw_listeners {
            let l = l.into_inner();
            let name = l.name.get_ref().clone();
            if !listener_names.insert(name.clone()) {
                return Err(err(l.name.span(), format!("duplicate listener {name:?}")));
            }
            let addr = l.address.get_ref().parse().map_err(|_| {
                err(
                    l.address.span(),
                    format!(
                        "listener address {:?} is not ADDRESS:PORT",
                        l.address.get_ref()
                    ),
                )
            })?;
            checks::listener_address(&l, addr, &mut addresses, path, text)?;
            let (mode, stream) = stream::listener_keys(&l, path, text)?;
            let tls = l
                .tls
                .into_iter()
                .map(|t| TlsCertConfig {
                    cert_line: ConfigError::at(path, text, t.cert.span(), String::new()).line,
                    key_line: ConfigError::at(path, text, t.key.span(), String::new()).line,
                    cert: t.cert.into_inner(),
                    key: t.key.into_inner(),
                    server_names: t.server_names,
                })
                .collect();
            let proxy_protocol_from = l
                .proxy_protocol_from
                .iter()
                .map(|net| {
                    net.get_ref().parse::<ipnet::IpNet>().map_err(|_| {
                        err(
                            net.span(),
                            format!("{:?} is not a network (ADDRESS/PREFIX)", net.get_ref()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let proxy_protocol_timeout = duration(
                &l.proxy_protocol_timeout,
                Duration::from_secs(5),
                "proxy_protocol_timeout",
            )?;
            let max_header_bytes = match &l.max_header_bytes {
                Some(n) if *n.get_ref() < 8192 => {
                    return Err(err(
                        n.span(),
                        format!("max_header_bytes {} is below 8192", n.get_ref()),
                    ));
                }
                Some(n) => *n.get_ref(),
                None => 64 * 1024,
            };
            listeners.push(ListenerConfig {
                name,
                addr,
                tls,
                proxy_protocol_from,
                proxy_protocol_timeout,
                max_header_bytes,
                max_body_bytes: l.max_body_bytes.unwrap_or(100 << 20),
                header_timeout: duration(
                    &l.header_timeout,
                    Duration::from_secs(10),
                    "header_timeout",
                )?,
                trusted_proxies: trusted_proxies(&l.trusted_proxies, text, path)?,
                body_timeout: body_timeout(&l.body_timeout, &err)?,
                max_connections: max_connections(&l.max_connections, &err)?,
                mode,
                stream,
            });
        }

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for r in raw_routes {
            let route_span = r.span();
            let r = r.into_inner();
            if !listener_names.contains(r.listener.get_ref()) {
                return Err(err(
                    r.listener.span(),
                    format!("route names unknown listener {:?}", r.listener.get_ref()),
                ));
            }
            if let Some(name) = &r.name {
                let valid = !name.get_ref().is_empty()
                    && name
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !valid {
                    return Err(err(
                        name.span(),
                        format!(
                            "route name {:?}: use letters, digits, '-', '_' and '.'",
                            name.get_ref()
                        ),
                    ));
                }
                if !route_names.insert(name.get_ref().clone()) {
                    return Err(err(
                        name.span(),
                        format!("duplicate route name {:?}", name.get_ref()),
                    ));
                }
            }
            let chain = super::policy::compile(&r, route_span.clone(), &err)?;
            let rules = super::route_rules::parse(
                &r,
                route_span,
                &names,
                chain.answers_itself(),
                text,
                path,
            )?;
            let sni = stream::route_keys(&r, &listeners, &pools, path, text)?;
            let host = r.host.as_ref().map(|h| {
                let h = h.get_ref().to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                    None => HostMatch::Exact(h),
                }
            });
            let path_prefix = match &r.path_prefix {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(err(
                        p.span(),
                        format!("path_prefix {:?} must start with /", p.get_ref()),
                    ));
                }
                Some(p) if checks::glob_char(p.get_ref()).is_some() => {
                    return Err(checks::glob_prefix(p, path, text));
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_owned(),
            };
            routes.push(RouteConfig {
                name: r.name.map(Spanned::into_inner),
                chain,
                listener: r.listener.into_inner(),
                host,
                path_prefix,
                strip_prefix: r.strip_prefix,
                pool: rules.pool,
                path_exact: rules.path_exact,
                path_regex: rules.path_regex,
                methods: rules.methods,
                headers: rules.headers,
                rewrite: rules.rewrite,
                split: rules.split,
                sni,
            });
        }
        Ok(Self {
            pools,
            listeners,
            routes,
        })
    }
}

/// `trusted_proxies`: networks, or single addresses.
fn trusted_proxies(
    list: &[Spanned<String>],
    text: &str,
    path: &Path,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .map(|net| {
            let value = net.get_ref();
            value
                .parse::<ipnet::IpNet>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::at(
                        path,
                        text,
                        net.span(),
                        format!("trusted_proxies: {value:?} is not an address or network"),
                    )
                })
        })
        .collect()
}
