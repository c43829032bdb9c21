//! DNS lookups for `[pool.discovery]` (hickory-resolver): A and AAAA records of a name on a
//! configured port, or SRV records (targets, ports, weights, priorities).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
};

use crate::config::discovery::{DiscoveryConfig, DiscoverySource};
use crate::l7::selection::Backend;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("resolver configuration: {0}")]
    Config(hickory_resolver::ResolveError),
    #[error("{name}: {source}")]
    Lookup {
        name: String,
        source: hickory_resolver::ResolveError,
    },
    #[error("{0}: no addresses")]
    Empty(String),
}

/// The resolver a pool's discovery asks: the configured server, or the system's.
pub fn resolver(config: &DiscoveryConfig) -> Result<TokioResolver, DnsError> {
    let mut builder = match config.resolver {
        Some(server) => TokioResolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                Vec::new(),
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
        None => TokioResolver::builder_tokio().map_err(DnsError::Config)?,
    };
    // Both families: a name with A and AAAA records has backends of both.
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(builder.build())
}

/// The backends `source` names now, sorted, and how long the answer is valid (its TTL).
/// An answer without addresses is an error: the caller keeps its last good set.
pub async fn lookup(
    resolver: &TokioResolver,
    source: &DiscoverySource,
    weight: u32,
) -> Result<(Vec<Backend>, Duration), DnsError> {
    let now = Instant::now();
    let mut backends = Vec::new();
    let valid_until =
        match source {
            DiscoverySource::Dns { name, port } => {
                let ips =
                    resolver
                        .lookup_ip(name.as_str())
                        .await
                        .map_err(|source| DnsError::Lookup {
                            name: name.clone(),
                            source,
                        })?;
                backends.extend(ips.iter().map(|ip| Backend {
                    addr: SocketAddr::new(ip, *port),
                    weight,
                    backup: false,
                }));
                ips.valid_until()
            }
            DiscoverySource::DnsSrv { name } => {
                let records = resolver.srv_lookup(name.as_str()).await.map_err(|source| {
                    DnsError::Lookup {
                        name: name.clone(),
                        source,
                    }
                })?;
                let mut valid_until = records.as_lookup().valid_until();
                // RFC 2782: the lowest priority value is used first; the others are backups.
                let first = records.iter().map(|r| r.priority()).min();
                for record in records.iter() {
                    let target = record.target().to_utf8();
                    let ips = resolver
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|source| DnsError::Lookup {
                            name: target.clone(),
                            source,
                        })?;
                    valid_until = valid_until.min(ips.valid_until());
                    backends.extend(ips.iter().map(|ip| Backend {
                        addr: SocketAddr::new(ip, record.port()),
                        // Weight 0 means "rarely" in RFC 2782; lb's weights start at 1.
                        weight: u32::from(record.weight()).max(1),
                        backup: Some(record.priority()) != first,
                    }));
                }
                valid_until
            }
        };
    backends.sort_by_key(|b| (b.backup, b.addr));
    backends.dedup_by_key(|b| b.addr);
    if backends.is_empty() {
        let name = match source {
            DiscoverySource::Dns { name, .. } | DiscoverySource::DnsSrv { name } => name.clone(),
        };
        return Err(DnsError::Empty(name));
    }
    Ok((backends, valid_until.saturating_duration_since(now)))
}
