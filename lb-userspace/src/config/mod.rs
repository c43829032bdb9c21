//! The backend file: one TOML file with the L4 sections (`[encap]`, `[[vip]]`) and the L7
//! sections (`[[pool]]`, `[[listener]]`, `[[route]]`). Parsed once as a whole (unknown keys
//! anywhere are errors) into raw serde types (`RawFile` here, each section's `Raw*` type in its
//! module), then checked and compiled section by section into the settings the tiers run on.
//! Every error names file, line and reason (`ConfigError`).
//!
//! Reading order, top-down (each module uses only those below it, and the tier types its
//! settings hold):
//! - this file: `Config`, the whole file; `RawFile`, the document as serde reads it.
//! - `vip.rs`: `[encap]`, `[l4]` and `[[vip]]` (the L4 tier).
//! - `l7.rs`: the L7 sections in order: `pool.rs` (with `upstream.rs` for its upstream keys,
//!   `health_check.rs` for `[pool.health_check]`, `discovery.rs` for `[pool.discovery]`,
//!   `guards.rs` for the overload guards),
//!   `listener.rs` (with `stream.rs` for tcp/udp keys, `egress.rs` for forward_proxy keys),
//!   `route.rs` (with `route_rules.rs` for match/rewrite/split keys, `stream.rs` for `sni`,
//!   and the policy keys compiled by `crate::l7::policy`).
//! - `bgp.rs`: `[bgp]`, announcing the VIPs through BIRD.
//! - `checks.rs`: checks across sections (listener address clashes, literal path prefixes)
//!   and `lb check-config`'s warnings.
//! - `error.rs`: `ConfigError`.
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub mod api_keys;
pub mod bgp;
pub mod checks;
pub mod discovery;
pub mod egress;
mod error;
pub(crate) mod guards;
pub mod health_check;
pub mod jwt_provider;
pub mod l7;
pub mod listener;
pub mod pool;
pub mod route;
pub mod route_rules;
pub mod stream;
pub(crate) mod upstream;
pub mod value;
pub mod vip;

pub use error::ConfigError;
pub use l7::L7Config;
// The settings the tiers run on, by name.
pub use checks::addresses_overlap;
use listener::RawListener;
pub use listener::{ListenerConfig, TlsCertConfig};
pub use pool::PoolConfig;
use pool::RawPool;
pub use pool::{Algorithm, HashKey};
use route::RawRoute;
pub use route::{HostMatch, RouteConfig};
pub use stream::{ListenerMode, StreamSettings};
use vip::{L4Config, RawEncap, RawL4, RawVip, RealConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub encap: Option<RawEncap>,
    pub l4: Option<RawL4>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Spanned<RawVip>>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<Spanned<RawPool>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "jwt_provider")]
    pub jwt_providers: Vec<Spanned<jwt_provider::RawJwtProvider>>,
    pub api_keys: Option<api_keys::RawApiKeys>,
    pub bgp: Option<Spanned<bgp::RawBgp>>,
}

impl RawFile {
    /// The names of the `[[pool]]` sections (unvalidated).
    pub fn pool_names(&self) -> std::collections::HashSet<String> {
        self.pools.iter().map(|p| p.get_ref().name()).collect()
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))
    }
}

/// The whole backend file: both tiers, validated together (a VIP may name a pool).
#[derive(Clone, Debug)]
pub struct Config {
    pub l4: L4Config,
    pub l7: L7Config,
    /// Announcing the VIPs by BGP (`[bgp]`); None: this node announces nothing.
    pub bgp: Option<bgp::BgpConfig>,
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = RawFile::parse(text, path)?;
        let pools = raw.pool_names();
        let bgp = raw
            .bgp
            .map(|b| bgp::BgpConfig::from_raw(b, text, path))
            .transpose()?;
        let l7 = L7Config::from_raw(
            raw.pools,
            raw.listeners,
            raw.jwt_providers,
            raw.routes,
            raw.api_keys,
            text,
            path,
        )?;
        let mut l4 = L4Config::from_raw(raw.encap, raw.l4, raw.vips, &pools, text, path)?;
        for vip in &mut l4.vips {
            if let Some(pool) = vip.pool.as_ref().and_then(|name| l7.pool(name)) {
                vip.reals = reals_of_pool(pool);
            }
        }
        Ok(Self { l4, l7, bgp })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = ConfigError::read_file(path)?;
        Self::parse(&text, path)
    }
}

/// A pool's backends as L4 reals: one per distinct IP (backends on several ports of one host
/// are one real, with their weights added).
pub fn reals_of_pool(pool: &PoolConfig) -> Vec<RealConfig> {
    let mut reals: Vec<RealConfig> = Vec::new();
    for b in pool.backends.iter().filter(|b| !b.backup) {
        match reals.iter_mut().find(|r| r.addr == b.addr.ip()) {
            Some(r) => r.weight = r.weight.saturating_add(b.weight),
            None => reals.push(RealConfig {
                addr: b.addr.ip(),
                weight: b.weight,
                down: false,
            }),
        }
    }
    reals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vip_naming_a_pool_takes_its_primary_backends_as_reals() {
        let text = "[[pool]]\nname = \"web\"\n\
            [[pool.backend]]\naddress = \"10.0.0.1:80\"\n\
            [[pool.backend]]\naddress = \"10.0.0.1:81\"\nweight = 2\n\
            [[pool.backend]]\naddress = \"10.0.0.2:80\"\n\
            [[pool.backend]]\naddress = \"10.0.0.3:80\"\nbackup = true\n\
            [[vip]]\naddress = \"10.100.0.1:80\"\npool = \"web\"\n";
        let config = Config::parse(text, Path::new("lb.toml")).expect("valid");
        let reals: Vec<_> = config.l4.vips[0]
            .reals
            .iter()
            .map(|r| (r.addr.to_string(), r.weight, r.down))
            .collect();
        assert_eq!(
            reals,
            [("10.0.0.1".into(), 3, false), ("10.0.0.2".into(), 1, false)]
        );
    }
}
