//! The `[pool.discovery]` section: a pool's backends found in DNS, besides (or instead of)
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub source: DiscoverySource,
    /// None: the system's resolver configuration.
    pub resolver: Option<SocketAddr>,
    pub refresh: Duration,
    pub weight: u32,
}

/// Answers are never asked for more often than this, whatever their TTL (0 included).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    dns: Option<Spanned<String>>,
    dns_srv: Option<Spanned<String>>,
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
        let source = match (&raw.dns, &raw.dns_srv) {
            (Some(dns), None) => {
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
            }
            (None, Some(srv)) => {
                if !valid_name(srv.get_ref()) {
                    return Err(err(
                        srv.span(),
                        format!("dns_srv {:?} is not a DNS name", srv.get_ref()),
                    ));
                }
                DiscoverySource::DnsSrv {
                    name: srv.get_ref().clone(),
                }
            }
            (Some(_), Some(srv)) => {
                return Err(err(
                    srv.span(),
                    "discovery takes one of dns and dns_srv".to_owned(),
                ));
            }
            (None, None) => {
                return Err(err(
                    section,
                    "[pool.discovery] needs dns = \"NAME:PORT\" or dns_srv = \"_service._tcp.NAME\""
                        .to_owned(),
                ));
            }
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
                "lb.toml:3: discovery takes one of dns and dns_srv",
            ),
            ("weight = 2\n", "needs dns = \"NAME:PORT\" or dns_srv"),
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
