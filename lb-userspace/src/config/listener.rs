//! `[[listener]]`: address, TLS certificates, PROXY header trust, request limits, trusted
//! proxies; the stream (tcp/udp) keys are read by `stream.rs`, address clashes checked by
//! `checks.rs`.
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
    ConfigError, checks,
    stream::{self, ListenerMode, StreamSettings},
    value::{duration, positive_duration},
};

/// A listener's request-head limit when `max_header_bytes` is not set.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a client has for a request head when `header_timeout` is not set.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names it answers for (exact or `*.suffix`); the listener's first certificate also
    /// answers everything else.
    pub server_names: Vec<String>,
    /// A DER OCSP response stapled to every handshake with this certificate (NGINX
    /// `ssl_stapling_file`): re-read with the certificate on every reload.
    pub ocsp: Option<PathBuf>,
    /// Lines of the `cert`, `key` and `ocsp` keys (for `lb check-config`'s errors).
    pub cert_line: usize,
    pub key_line: usize,
    pub ocsp_line: usize,
}

/// Without the line numbers: moving a section in the file must not restart its listener. The
/// files' contents are not compared: a reload re-reads them for every HTTPS listener it keeps
/// and swaps them in (`RunningL7::reload`).
impl PartialEq for TlsCertConfig {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.server_names == other.server_names
            && self.ocsp == other.ocsp
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
            .field("ocsp", &self.ocsp)
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
    /// Open connections per client address (http, tcp); beyond, new ones are closed.
    pub max_connections_per_client: Option<usize>,
    /// http (the reverse proxy) or a stream listener (tcp, udp).
    pub mode: ListenerMode,
    pub stream: StreamSettings,
    /// HTTPS listeners: client certificates verified against `client_ca` (mTLS).
    pub client_auth: Option<crate::l7::client_cert::ClientAuth>,
    /// forward_proxy listeners: egress rules, mode and proxy credentials.
    pub egress: Option<std::sync::Arc<crate::l7::egress::policy::EgressSettings>>,
    /// http listeners: bodies for lb's own answers by status (a route's win).
    pub error_pages: Option<std::sync::Arc<crate::l7::policy::error_pages::ErrorPages>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    pub(crate) address: Spanned<String>,
    #[serde(default)]
    pub(crate) tls: Vec<RawTlsCert>,
    #[serde(default)]
    pub(crate) proxy_protocol_from: Vec<Spanned<String>>,
    pub(crate) proxy_protocol_timeout: Option<Spanned<String>>,
    pub(crate) max_header_bytes: Option<Spanned<usize>>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) header_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    pub(crate) body_timeout: Option<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<usize>>,
    pub(crate) mode: Option<Spanned<ListenerMode>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) client_hello_timeout: Option<Spanned<String>>,
    pub(crate) max_sessions: Option<Spanned<usize>>,
    pub(crate) client_ca: Option<Spanned<PathBuf>>,
    pub(crate) client_auth: Option<Spanned<String>>,
    pub(crate) max_connections_per_client: Option<Spanned<usize>>,
    pub(crate) egress_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) egress_rule: Vec<Spanned<super::egress::RawEgressRule>>,
    pub(crate) error_pages: Option<Spanned<crate::l7::policy::error_pages::RawErrorPages>>,
    pub(crate) proxy_auth_file: Option<Spanned<PathBuf>>,
    pub(crate) connect_http10: Option<Spanned<bool>>,
    pub(crate) sni_ports: Option<Spanned<Vec<u16>>>,
    pub(crate) allow_missing_sni: Option<Spanned<bool>>,
    pub(crate) inspect_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) inspect_ca_cert: Option<Spanned<PathBuf>>,
    pub(crate) inspect_ca_key: Option<Spanned<PathBuf>>,
    pub(crate) inspect_ca_file: Option<Spanned<PathBuf>>,
    pub(crate) cache: Option<Spanned<crate::l7::cache::settings::RawCache>>,
    pub(crate) proxy_jwt_provider: Option<Spanned<String>>,
    pub(crate) proxy_jwt_claim: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsCert {
    pub(crate) cert: Spanned<PathBuf>,
    pub(crate) key: Spanned<PathBuf>,
    #[serde(default)]
    pub(crate) server_names: Vec<String>,
    pub(crate) ocsp: Option<Spanned<PathBuf>>,
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

/// Checks and compiles the `[[listener]]` sections, in file order.
pub(super) fn parse(
    raw_listeners: Vec<Spanned<RawListener>>,
    jwt_providers: &HashSet<String>,
    text: &str,
    path: &Path,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);

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
        let egress = super::egress::listener_keys(&l, mode, jwt_providers, path, text)?;
        let client_auth = client_auth(&l, &err)?;
        let tls = l
            .tls
            .into_iter()
            .map(|t| TlsCertConfig {
                cert_line: ConfigError::at(path, text, t.cert.span(), String::new()).line,
                key_line: ConfigError::at(path, text, t.key.span(), String::new()).line,
                ocsp_line: t.ocsp.as_ref().map_or(0, |o| {
                    ConfigError::at(path, text, o.span(), String::new()).line
                }),
                cert: t.cert.into_inner(),
                key: t.key.into_inner(),
                server_names: t.server_names,
                ocsp: t.ocsp.map(Spanned::into_inner),
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
            &err,
        )?;
        let max_header_bytes = match &l.max_header_bytes {
            Some(n) if *n.get_ref() < 8192 => {
                return Err(err(
                    n.span(),
                    format!("max_header_bytes {} is below 8192", n.get_ref()),
                ));
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_HEADER_BYTES,
        };
        let error_pages = match &l.error_pages {
            Some(raw) if mode != ListenerMode::Http => {
                return Err(err(
                    raw.span(),
                    "error_pages: only http listeners answer with pages".to_owned(),
                ));
            }
            Some(raw) => Some(crate::l7::policy::error_pages::compile(raw, &err)?),
            None => None,
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
                DEFAULT_HEADER_TIMEOUT,
                "header_timeout",
                &err,
            )?,
            trusted_proxies: trusted_proxies(&l.trusted_proxies, text, path)?,
            body_timeout: positive_duration(
                &l.body_timeout,
                Duration::from_secs(30),
                "body_timeout",
                &err,
            )?,
            max_connections: max_connections(&l.max_connections, &err)?,
            max_connections_per_client: match &l.max_connections_per_client {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(err(
                        n.span(),
                        "max_connections_per_client must be at least 1".to_owned(),
                    ));
                }
                n => n.as_ref().map(|n| *n.get_ref()),
            },
            mode,
            stream,
            client_auth,
            egress,
            error_pages,
        });
    }
    Ok(listeners)
}

/// `client_ca` + `client_auth`: the listener's client-certificate verifier (HTTPS only).
fn client_auth(
    l: &RawListener,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<crate::l7::client_cert::ClientAuth>, ConfigError> {
    let required = match &l.client_auth {
        None => true,
        Some(v) if v.get_ref() == "required" => true,
        Some(v) if v.get_ref() == "optional" => false,
        Some(v) => {
            return Err(err(
                v.span(),
                format!(
                    "client_auth {:?}: expected \"required\" or \"optional\"",
                    v.get_ref()
                ),
            ));
        }
    };
    let Some(ca) = &l.client_ca else {
        if let Some(v) = &l.client_auth {
            return Err(err(
                v.span(),
                "client_auth needs client_ca (the CA client certificates must chain to)".to_owned(),
            ));
        }
        return Ok(None);
    };
    let http = l
        .mode
        .as_ref()
        .is_none_or(|m| *m.get_ref() == ListenerMode::Http);
    if l.tls.is_empty() || !http {
        return Err(err(
            ca.span(),
            "client_ca needs an HTTPS listener (mode http with [[listener.tls]] certificates)"
                .to_owned(),
        ));
    }
    crate::l7::client_cert::client_auth(ca.get_ref(), required)
        .map(Some)
        .map_err(|reason| err(ca.span(), reason))
}

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
