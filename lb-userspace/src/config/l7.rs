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
//!   [pool.health_check]          # optional: active checks (keys: see health_check.rs)
//!   type = "http"
//!   path = "/healthz"
//!   [pool.circuit_breaker]       # optional caps, each optional (guards.rs); over one: 503
//!   max_connections = 512        # upstream connections open or opening
//!   max_pending_requests = 64    # requests waiting for a new upstream connection
//!   max_requests = 1024          # in flight to the pool (to the response head)
//!   max_retries = 8              # retries in flight (over it the retry is not made)
//!   [pool.outlier_detection]     # optional; replaces max_fails / fail_timeout
//!   consecutive_5xx = 5          # 5xx or no answer, in a row (0: off)
//!   consecutive_gateway_errors = 5   # 502/503/504/connect/timeout in a row (0: off)
//!   base_ejection_time = "30s"   # x times ejected (decays while healthy) ...
//!   max_ejection_time = "300s"   # ... at most this
//!   max_ejected_percent = 10     # never more of the pool at once (one always may)
//!   [pool.adaptive_concurrency]  # optional: limit from live latency (gradient)
//!   min_limit = 3
//!   max_limit = 1000
//!   window = "100ms"
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
//! [[listener]]                   # a forward proxy (egress gateway); takes no routes
//! name = "egress"
//! address = "127.0.0.1:3128"
//! mode = "forward_proxy"         # CONNECT tunnels + absolute-form http requests
//! egress_mode = "enforce"        # enforce (403) | report (log, let through); SSRF guard: always
//! proxy_auth_file = "/etc/lb/proxy-users"   # optional: user:argon2-PHC lines (407 without)
//! connect_http10 = false         # true: serve CONNECT over HTTP/1.0 (else 405)
//! inspect_hosts = ["*.api.example.com"]  # optional TLS inspection of these names, with:
//! inspect_ca_cert = "/etc/lb/inspect-ca.pem"  # the CA that mints their certificates
//! inspect_ca_key = "/etc/lb/inspect-ca.key"   # its key (keep it private)
//! proxy_jwt_provider = "idp"     # optional: Proxy-Authorization: Bearer tokens of this provider
//! proxy_jwt_claim = "sub"        # the claim that names the user (default sub)
//!   [listener.cache]             # optional: cacheable GETs through the proxy, after the
//!   max_bytes = 268435456        # egress decision ([route.cache] keys)
//!   [[listener.egress_rule]]     # first match wins; none: denied
//!   action = "allow"             # allow | deny
//!   hosts = ["*.debian.org"]     # exact or *.suffix (the requested name)
//!   ports = [80, 443]            # default for allow rules: 443 (CONNECT), 80 (plain http)
//!   cidrs = ["10.30.0.0/16"]     # resolved address; non-public ones need an allow naming them
//!   users = ["ci"]               # proxy users
//!   paths = ["/v1/*"]            # plain http and inspected requests: /exact or /prefix*
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
use std::path::Path;

use toml::Spanned;

use super::{
    ConfigError, RawFile,
    jwt_provider::{self, JwtProviderConfig, RawJwtProvider},
    listener::{self, ListenerConfig, RawListener},
    pool::{self, PoolConfig, RawPool},
    route::{self, RawRoute, RouteConfig},
};

#[derive(Clone, Debug, Default)]
pub struct L7Config {
    pub pools: Vec<PoolConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[[jwt_provider]]` sections (named by routes' `jwt` policies).
    pub jwt_providers: Vec<JwtProviderConfig>,
}

impl L7Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Parses `text` (the whole backend file; this takes its L7 sections).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = RawFile::parse(text, path)?;
        Self::from_raw(
            raw.pools,
            raw.listeners,
            raw.jwt_providers,
            raw.routes,
            raw.api_keys,
            text,
            path,
        )
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = ConfigError::read_file(path)?;
        Self::parse(&text, path)
    }

    /// The L7 sections in reading order: pools, listeners, then routes (which name both).
    pub(crate) fn from_raw(
        raw_pools: Vec<Spanned<RawPool>>,
        raw_listeners: Vec<Spanned<RawListener>>,
        raw_jwt_providers: Vec<Spanned<RawJwtProvider>>,
        raw_routes: Vec<Spanned<RawRoute>>,
        raw_api_keys: Option<super::api_keys::RawApiKeys>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let pools = pool::parse(raw_pools, text, path)?;
        // Providers before listeners: a forward proxy's `proxy_jwt_provider` names one.
        let jwt_providers = jwt_provider::parse(raw_jwt_providers, text, path)?;
        let provider_names = jwt_providers.iter().map(|p| p.name.clone()).collect();
        let listeners = listener::parse(raw_listeners, &provider_names, text, path)?;
        let err = |span, message| ConfigError::at(path, text, span, message);
        let inputs = crate::l7::policy::PolicyInputs {
            consumers: raw_api_keys
                .map(|raw| super::api_keys::load(&raw, &err).map(std::sync::Arc::new))
                .transpose()?,
            jwt_providers: provider_names,
        };
        let routes = route::parse(raw_routes, &pools, &listeners, &inputs, text, path)?;
        Ok(Self {
            pools,
            listeners,
            routes,
            jwt_providers,
        })
    }
}
