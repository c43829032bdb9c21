//! `[[jwt_provider]]`: who issues the tokens routes accept (`jwt = { provider = ... }` on a
//! route), and where their keys come from.
//!
//! ```toml
//! [[jwt_provider]]
//! name = "idp"
//! issuer = "https://id.example.com/"   # `iss` must equal this
//! audiences = ["api"]                  # `aud` must hold one of these (default: not checked)
//! algorithms = ["RS256", "ES256"]      # allowed; default RS256, RS384, RS512, PS256, PS384,
//!                                      # PS512, ES256, ES384, EdDSA (never none, never HS*)
//! jwks_url = "https://id.example.com/.well-known/jwks.json"   # exactly one of jwks_url,
//! # discovery = true                   # ISSUER/.well-known/openid-configuration -> jwks_uri
//! # jwks_file = "/etc/lb/jwks.json"    # read at load and on reload
//! ca_file = "/etc/lb/idp-ca.pem"       # https key fetches: verify against these (default: system)
//! clock_skew = "60s"                   # exp / nbf leeway
//! cache_min = "1m"                     # Cache-Control max-age of the key set kept within
//! cache_max = "24h"                    #   [cache_min, cache_max]; without max-age: cache_max
//! refetch_cooldown = "30s"             # an unknown kid refetches at most once per this
//! fetch_timeout = "5s"
//! ```
use std::{
    collections::HashSet,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError,
    value::{duration, positive_duration},
};

/// Where a provider's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Url(String),
    /// `ISSUER/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// A local JWKS file, its content read at load (a changed file is a changed setting).
    File {
        path: PathBuf,
        jwks: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub ca_file: Option<PathBuf>,
    pub clock_skew: Duration,
    pub cache_min: Duration,
    pub cache_max: Duration,
    pub refetch_cooldown: Duration,
    pub fetch_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtProvider {
    name: Spanned<String>,
    issuer: Spanned<String>,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Option<Spanned<Vec<String>>>,
    jwks_url: Option<Spanned<String>>,
    discovery: Option<Spanned<bool>>,
    jwks_file: Option<Spanned<PathBuf>>,
    ca_file: Option<PathBuf>,
    clock_skew: Option<Spanned<String>>,
    cache_min: Option<Spanned<String>>,
    cache_max: Option<Spanned<String>>,
    refetch_cooldown: Option<Spanned<String>>,
    fetch_timeout: Option<Spanned<String>>,
}

/// The asymmetric algorithms a key-set provider may allow.
const ASYMMETRIC: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Checks and compiles the `[[jwt_provider]]` sections.
pub(super) fn parse(
    raw: Vec<Spanned<RawJwtProvider>>,
    text: &str,
    path: &Path,
) -> Result<Vec<JwtProviderConfig>, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);
    let mut names = HashSet::new();
    let mut providers = Vec::new();
    for p in raw {
        let span = p.span();
        let p = p.into_inner();
        let name = p.name.get_ref().clone();
        if !names.insert(name.clone()) {
            return Err(err(
                p.name.span(),
                format!("duplicate jwt_provider {name:?}"),
            ));
        }
        if p.issuer.get_ref().is_empty() {
            return Err(err(p.issuer.span(), "issuer is empty".to_owned()));
        }
        let algorithms: Vec<Algorithm> = match &p.algorithms {
            None => ASYMMETRIC.iter().map(|(_, a)| *a).collect(),
            Some(list) if list.get_ref().is_empty() => {
                return Err(err(list.span(), "algorithms is empty".to_owned()));
            }
            Some(list) => list
                .get_ref()
                .iter()
                .map(|a| {
                    ASYMMETRIC
                        .iter()
                        .find(|(n, _)| n == a)
                        .map(|(_, alg)| *alg)
                        .ok_or_else(|| {
                            let why = if a.starts_with("HS") || a.eq_ignore_ascii_case("none") {
                                "never allowed for a key-set provider"
                            } else {
                                "unknown"
                            };
                            err(
                                list.span(),
                                format!(
                                    "algorithm {a:?}: {why} (allowed: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let discovery = p.discovery.as_ref().is_some_and(|d| *d.get_ref());
        let keys = match (&p.jwks_url, discovery, &p.jwks_file) {
            (Some(url), false, None) => {
                check_url(url.get_ref())
                    .map_err(|why| err(url.span(), format!("jwks_url: {why}")))?;
                KeySource::Url(url.get_ref().clone())
            }
            (None, true, None) => {
                check_url(p.issuer.get_ref())
                    .map_err(|why| err(p.issuer.span(), format!("issuer (discovery): {why}")))?;
                KeySource::Discovery
            }
            (None, false, Some(file)) => {
                let jwks = std::fs::read_to_string(file.get_ref()).map_err(|e| {
                    err(
                        file.span(),
                        format!("jwks_file {}: {e}", file.get_ref().display()),
                    )
                })?;
                crate::l7::jwt::KeySet::parse(&jwks, &algorithms).map_err(|why| {
                    err(
                        file.span(),
                        format!("jwks_file {}: {why}", file.get_ref().display()),
                    )
                })?;
                KeySource::File {
                    path: file.get_ref().clone(),
                    jwks,
                }
            }
            _ => {
                return Err(err(
                    span,
                    format!(
                        "jwt_provider {name:?} needs exactly one of jwks_url, discovery = true, jwks_file"
                    ),
                ));
            }
        };
        let cache_min =
            positive_duration(&p.cache_min, Duration::from_secs(60), "cache_min", &err)?;
        let cache_max = positive_duration(
            &p.cache_max,
            Duration::from_secs(24 * 3600),
            "cache_max",
            &err,
        )?;
        if cache_min > cache_max {
            return Err(err(
                p.cache_min.as_ref().map_or(span.clone(), Spanned::span),
                "cache_min is above cache_max".to_owned(),
            ));
        }
        providers.push(JwtProviderConfig {
            name,
            issuer: p.issuer.get_ref().clone(),
            audiences: p.audiences,
            algorithms,
            keys,
            ca_file: p.ca_file,
            clock_skew: duration(&p.clock_skew, Duration::from_secs(60), "clock_skew", &err)?,
            cache_min,
            cache_max,
            refetch_cooldown: positive_duration(
                &p.refetch_cooldown,
                Duration::from_secs(30),
                "refetch_cooldown",
                &err,
            )?,
            fetch_timeout: positive_duration(
                &p.fetch_timeout,
                Duration::from_secs(5),
                "fetch_timeout",
                &err,
            )?,
        });
    }
    Ok(providers)
}

/// An http or https URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(format!("{url:?} is not an http(s) URL")),
    }
}
