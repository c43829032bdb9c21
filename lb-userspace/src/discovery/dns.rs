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

use crate::config::discovery::DiscoveryConfig;
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

/// What is asked.
pub enum Query<'a> {
    /// A and AAAA records of `name`, each address on `port`.
    Ip { name: &'a str, port: u16 },
    /// SRV records of `name`.
    Srv { name: &'a str },
}

/// The backends `query` names now, sorted, and how long the answer is valid (its TTL).
/// An answer without addresses is an error: the caller keeps its last good set.
pub async fn lookup(
    resolver: &TokioResolver,
    query: &Query<'_>,
    weight: u32,
) -> Result<(Vec<Backend>, Duration), DnsError> {
    let now = Instant::now();
    let failed = |name: &str| {
        let name = name.to_owned();
        move |source| DnsError::Lookup { name, source }
    };
    let mut backends = Vec::new();
    let valid_until = match *query {
        Query::Ip { name, port } => {
            let ips = resolver.lookup_ip(name).await.map_err(failed(name))?;
            backends.extend(ips.iter().map(|ip| Backend {
                addr: SocketAddr::new(ip, port),
                weight,
                backup: false,
            }));
            ips.valid_until()
        }
        Query::Srv { name } => {
            let records = resolver.srv_lookup(name).await.map_err(failed(name))?;
            let mut valid_until = records.as_lookup().valid_until();
            // RFC 2782: the lowest priority value is used first; the others are backups.
            let first = records.iter().map(|r| r.priority()).min();
            for record in records.iter() {
                let target = record.target().to_utf8();
                let ips = resolver
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(failed(&target))?;
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
        let (Query::Ip { name, .. } | Query::Srv { name }) = *query;
        return Err(DnsError::Empty(name.to_owned()));
    }
    Ok((backends, valid_until.saturating_duration_since(now)))
}
