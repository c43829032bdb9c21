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
//!   [[pool.backend]]
//!   address = "10.0.0.1:8080"
//!   weight = 1                   # default 1; 0 = no new requests
//!   backup = false               # used only when no primary is available
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
//! max_body_bytes = 104857600    # declared body limit (413 before reading)
//! header_timeout = "10s"        # complete request head within this (then closed)
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
//! path_prefix = "/api"           # optional (default "/")
//! strip_prefix = true            # remove the prefix before forwarding
//! pool = "web"
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

use super::{proxy_header::ProxyVersion, selection::Backend};
use crate::config::{ConfigError, RawFile};

mod stream;
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

#[derive(Clone, Debug)]
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
}

/// One certificate of an HTTPS listener.
#[derive(Clone, Debug)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names it answers for (exact or `*.suffix`); the listener's first certificate also
    /// answers everything else.
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug)]
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
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self {
            Self::Exact(h) => host == *h,
            Self::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub pool: String,
    /// tcp listeners: the ClientHello's server name (None: any, and connections without SNI).
    pub sni: Option<HostMatch>,
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
    #[serde(default, rename = "backend")]
    backends: Vec<Spanned<RawBackend>>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<u32>,
    #[serde(default)]
    backup: bool,
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
    mode: Option<Spanned<ListenerMode>>,
    idle_timeout: Option<Spanned<String>>,
    client_hello_timeout: Option<Spanned<String>>,
    max_sessions: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsCert {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    server_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    listener: Spanned<String>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    strip_prefix: bool,
    pool: Spanned<String>,
    sni: Option<Spanned<String>>,
}

impl L7Config {
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
            let pool = pool.into_inner();
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
            let mut backends = Vec::new();
            for b in pool.backends {
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
            pools.push(PoolConfig {
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
            });
        }

        let mut listeners = Vec::new();
        let mut listener_names = HashSet::new();
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
            let (mode, stream) = stream::listener_keys(&l, path, text)?;
            let tls = l
                .tls
                .into_iter()
                .map(|t| TlsCertConfig {
                    cert: t.cert,
                    key: t.key,
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
                mode,
                stream,
            });
        }

        let mut routes = Vec::new();
        for r in raw_routes {
            let r = r.into_inner();
            if !listener_names.contains(r.listener.get_ref()) {
                return Err(err(
                    r.listener.span(),
                    format!("route names unknown listener {:?}", r.listener.get_ref()),
                ));
            }
            if !names.contains(r.pool.get_ref()) {
                return Err(err(
                    r.pool.span(),
                    format!("route names unknown pool {:?}", r.pool.get_ref()),
                ));
            }
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
                Some(p) => p.get_ref().clone(),
                None => "/".to_owned(),
            };
            routes.push(RouteConfig {
                listener: r.listener.into_inner(),
                host,
                path_prefix,
                strip_prefix: r.strip_prefix,
                pool: r.pool.into_inner(),
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
