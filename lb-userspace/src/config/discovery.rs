//! The `[pool.discovery]` section: a pool's backends found in DNS or etcd, besides (or instead of)
//! the `[[pool.backend]]` list.
//!
//! ```toml
//! [pool.discovery]
//! dns = "api.internal:8080"        # A and AAAA records of the name, each on this port
//! # dns_srv = "_http._tcp.api.internal"  # or SRV records: targets, ports and weights
//! resolver = "10.0.0.2:53"         # the DNS server to ask (default: /etc/resolv.conf's)
//! refresh = "30s"                  # ask again at least this often; sooner when the
//!                                  # answer's TTL ends (never more than once a second)
//! weight = 1                       # the weight of A/AAAA backends (default 1)
//! # etcd_prefix = "/lb/web/"       # or the keys under a prefix in etcd, watched; each value
//! # etcd_endpoints = ["http://10.0.0.5:2379"]  # ADDRESS:PORT or {"address", "weight", "backup"}
//! ```
//!
//! What is found goes through the same path as a reload of the file (health checks, drains,
//! the VIPs' Maglev tables, all or nothing); an answer that fails keeps the last good set.
use std::{net::SocketAddr, ops::Range, path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, value::duration};

/// Where a pool's backends are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoverySource {
    /// A and AAAA records of `name`, each address on `port`.
    Dns { name: String, port: u16 },
    /// SRV records of `name`: each target's addresses on the record's port, with its weight
    /// (records of the lowest priority value are the backends; higher values are backups).
    DnsSrv { name: String },
    /// The keys under `prefix` in etcd (each value `ADDRESS:PORT`, or a JSON object with
    /// `address`, `weight`, `backup`), watched; `endpoints` tried in turn.
    Etcd {
        endpoints: Vec<hyper::Uri>,
        prefix: String,
    },
}

impl std::fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns { name, port } => write!(f, "dns {name}:{port}"),
            Self::DnsSrv { name } => write!(f, "dns_srv {name}"),
            Self::Etcd { prefix, .. } => write!(f, "etcd {prefix}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub source: DiscoverySource,
    /// None: the system's resolver configuration.
    pub resolver: Option<SocketAddr>,
    pub refresh: Duration,
    pub weight: u32,
}

/// etcd's own default client URL.
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// Answers are never asked for more often than this, whatever their TTL (0 included).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    dns: Option<Spanned<String>>,
    dns_srv: Option<Spanned<String>>,
    etcd_prefix: Option<Spanned<String>>,
    etcd_endpoints: Option<Spanned<Vec<String>>>,
    resolver: Option<Spanned<String>>,
    refresh: Option<Spanned<String>>,
    weight: Option<Spanned<u32>>,
}

impl DiscoveryConfig {
    pub(crate) fn from_raw(
        raw: Spanned<RawDiscovery>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
        let section = raw.span();
        let raw = raw.into_inner();
        let given: Vec<Range<usize>> = [
            raw.dns.as_ref().map(Spanned::span),
            raw.dns_srv.as_ref().map(Spanned::span),
            raw.etcd_prefix.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(err(
                given[1].clone(),
                "discovery takes one of dns, dns_srv and etcd_prefix".to_owned(),
            ));
        }
        if let (Some(endpoints), None) = (&raw.etcd_endpoints, &raw.etcd_prefix) {
            return Err(err(
                endpoints.span(),
                "etcd_endpoints needs etcd_prefix".to_owned(),
            ));
        }
        let source = if let Some(dns) = &raw.dns {
            let (name, port) = dns
                .get_ref()
                .rsplit_once(':')
                .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
                .filter(|(name, port)| valid_name(name) && *port != 0)
                .ok_or_else(|| {
                    err(
                        dns.span(),
                        format!(
                            "dns {:?}: expected NAME:PORT (a DNS name and a port 1-65535)",
                            dns.get_ref()
                        ),
                    )
                })?;
            DiscoverySource::Dns {
                name: name.to_owned(),
                port,
            }
        } else if let Some(srv) = &raw.dns_srv {
            if !valid_name(srv.get_ref()) {
                return Err(err(
                    srv.span(),
                    format!("dns_srv {:?} is not a DNS name", srv.get_ref()),
                ));
            }
            DiscoverySource::DnsSrv {
                name: srv.get_ref().clone(),
            }
        } else if let Some(prefix) = &raw.etcd_prefix {
            if prefix.get_ref().is_empty() {
                return Err(err(
                    prefix.span(),
                    "etcd_prefix must not be empty (it would take every key)".to_owned(),
                ));
            }
            let endpoints = match &raw.etcd_endpoints {
                None => vec![hyper::Uri::from_static(DEFAULT_ETCD)],
                Some(list) if list.get_ref().is_empty() => {
                    return Err(err(
                        list.span(),
                        "etcd_endpoints must list at least one endpoint".to_owned(),
                    ));
                }
                Some(list) => list
                    .get_ref()
                    .iter()
                    .map(|e| {
                        e.parse::<hyper::Uri>()
                            .ok()
                            .filter(|u| u.scheme_str() == Some("http") && u.host().is_some())
                            .ok_or_else(|| {
                                err(
                                    list.span(),
                                    format!("etcd endpoint {e:?}: expected http://HOST:PORT"),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
            };
            DiscoverySource::Etcd {
                endpoints,
                prefix: prefix.get_ref().clone(),
            }
        } else {
            return Err(err(
                section,
                "[pool.discovery] needs dns = \"NAME:PORT\", dns_srv = \"_service._tcp.NAME\" or etcd_prefix = \"/KEY/PREFIX/\""
                    .to_owned(),
            ));
        };
        let resolver = raw
            .resolver
            .as_ref()
            .map(|r| {
                r.get_ref().parse::<SocketAddr>().map_err(|_| {
                    err(
                        r.span(),
                        format!("resolver {:?} is not ADDRESS:PORT", r.get_ref()),
                    )
                })
            })
            .transpose()?;
        let refresh = duration(&raw.refresh, Duration::from_secs(30), "refresh", &err)?;
        if refresh < MIN_REFRESH {
            let span = raw.refresh.as_ref().map_or(section, Spanned::span);
            return Err(err(span, "refresh must be at least 1s".to_owned()));
        }
        let weight = match &raw.weight {
            Some(w) if *w.get_ref() == 0 => {
                return Err(err(w.span(), "weight must be at least 1".to_owned()));
            }
            Some(w) => *w.get_ref(),
            None => 1,
        };
        Ok(Self {
            source,
            resolver,
            refresh,
            weight,
        })
    }
}

/// A DNS name as lb asks for it: dot-separated labels of letters, digits, `-` and `_` (SRV
/// labels), 1-63 bytes each, 253 at most in all; a final dot allowed.
fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(section: &str) -> Result<DiscoveryConfig, String> {
        #[derive(Deserialize)]
        struct File {
            discovery: Spanned<RawDiscovery>,
        }
        let text = format!("[discovery]\n{section}");
        let file: File = toml::from_str(&text).map_err(|e| e.to_string())?;
        DiscoveryConfig::from_raw(file.discovery, &text, Path::new("lb.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn dns_and_srv_sources_with_defaults() {
        let c = parse("dns = \"api.internal:8080\"\n").expect("parses");
        assert_eq!(
            c.source,
            DiscoverySource::Dns {
                name: "api.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            (c.resolver, c.refresh, c.weight),
            (None, Duration::from_secs(30), 1)
        );
        let c = parse("dns_srv = \"_http._tcp.api.internal\"\nresolver = \"127.0.0.1:5353\"\n")
            .expect("parses");
        assert_eq!(
            c.source,
            DiscoverySource::DnsSrv {
                name: "_http._tcp.api.internal".into()
            }
        );
        assert_eq!(c.resolver, Some("127.0.0.1:5353".parse().expect("addr")));
        let c = parse("etcd_prefix = \"/lb/web/\"\n").expect("parses");
        assert_eq!(
            c.source,
            DiscoverySource::Etcd {
                endpoints: vec![hyper::Uri::from_static("http://127.0.0.1:2379")],
                prefix: "/lb/web/".into()
            }
        );
    }

    #[test]
    fn bad_sections_name_their_line() {
        for (section, message) in [
            (
                "dns = \"api.internal\"\n",
                "lb.toml:2: dns \"api.internal\": expected NAME:PORT",
            ),
            ("dns = \"a..b:80\"\n", "expected NAME:PORT"),
            ("dns = \"api:0\"\n", "expected NAME:PORT"),
            (
                "dns_srv = \"bad name\"\n",
                "lb.toml:2: dns_srv \"bad name\" is not a DNS name",
            ),
            (
                "dns = \"a:1\"\ndns_srv = \"b\"\n",
                "lb.toml:3: discovery takes one of dns, dns_srv and etcd_prefix",
            ),
            (
                "weight = 2\n",
                "needs dns = \"NAME:PORT\", dns_srv = \"_service._tcp.NAME\" or etcd_prefix",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\n",
                "lb.toml:2: etcd_endpoints needs etcd_prefix",
            ),
            (
                "etcd_prefix = \"/p/\"\netcd_endpoints = [\"https://a:1\"]\n",
                "lb.toml:3: etcd endpoint \"https://a:1\": expected http://HOST:PORT",
            ),
            (
                "etcd_prefix = \"\"\n",
                "lb.toml:2: etcd_prefix must not be empty",
            ),
            (
                "dns = \"a:1\"\nrefresh = \"100ms\"\n",
                "lb.toml:3: refresh must be at least 1s",
            ),
            (
                "dns = \"a:1\"\nresolver = \"ns1\"\n",
                "lb.toml:3: resolver \"ns1\" is not ADDRESS:PORT",
            ),
            (
                "dns = \"a:1\"\nweight = 0\n",
                "lb.toml:3: weight must be at least 1",
            ),
        ] {
            let e = parse(section).expect_err(section);
            assert!(e.contains(message), "{section}: {e}");
        }
    }
}
