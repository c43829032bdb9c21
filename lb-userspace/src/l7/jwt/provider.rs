//! `JwtProvider`: one `[[jwt_provider]]` at run time.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{Validation, errors::ErrorKind};
use prometheus_client::metrics::counter::Counter;

use super::{fetch, keys::KeySet};
use crate::config::jwt_provider::{JwtProviderConfig, KeySource};

/// A verified token's claims.
pub type Claims = Arc<serde_json::Map<String, serde_json::Value>>;

/// Verified tokens kept; when full, expired ones are dropped, then (still full) all.
const CACHE_CAPACITY: usize = 10_000;

/// Why a token was refused (the log and metric reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("no key for the token")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing or malformed exp")]
    MissingExp,
    #[error("invalid claims")]
    Claims,
    #[error("provider has no keys yet")]
    NoKeys,
}

impl VerifyError {
    /// A short label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::MissingExp => "missing_exp",
            Self::Claims => "claims",
            Self::NoKeys => "no_keys",
        }
    }
}

/// What a provider did, for metrics and tests.
#[derive(Default)]
pub struct ProviderCounters {
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    /// Verifications answered from the token cache.
    pub cache_hits: AtomicU64,
    /// Signature checks made.
    pub verifications: AtomicU64,
}

struct CachedToken {
    claims: Claims,
    /// `exp` (Unix seconds).
    exp: u64,
}

pub struct JwtProvider {
    pub config: JwtProviderConfig,
    keys: ArcSwap<KeySet>,
    /// Per allowed algorithm (jsonwebtoken checks a key against every algorithm of a
    /// validation, so each holds just one).
    validations: Vec<(jsonwebtoken::Algorithm, Validation)>,
    /// Clock skew, seconds.
    leeway: u64,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// When the key set should be fetched again (None: never fetched successfully).
    refresh_at: Mutex<Option<Instant>>,
    /// The last refetch for an unknown kid (the next waits out the cooldown from it).
    last_refetch: Mutex<Option<Instant>>,
    /// One fetch at a time; requests waiting on an unknown kid share it.
    fetch_lock: tokio::sync::Mutex<()>,
    /// A background refresh is running.
    refreshing: AtomicBool,
    cache: Mutex<HashMap<Box<str>, CachedToken>>,
    pub counters: ProviderCounters,
    /// `lb_jwks_fetches_total` (ok, failed), when metrics are kept.
    fetch_meters: Option<(Counter, Counter)>,
}

impl JwtProvider {
    /// The provider for `config`. A file's keys are loaded now; a URL's are fetched in the
    /// background when a tokio runtime is running (an unreachable provider does not stop lb
    /// from starting: its routes answer 401 until keys arrive).
    pub fn new(config: JwtProviderConfig, fetch_meters: Option<(Counter, Counter)>) -> Arc<Self> {
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = config.clock_skew.as_secs();
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp"]);
                validation.set_issuer(&[config.issuer.as_str()]);
                if config.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&config.audiences);
                }
                (alg, validation)
            })
            .collect();
        let keys = match &config.keys {
            KeySource::File { jwks, .. } => {
                KeySet::parse(jwks, &config.algorithms).unwrap_or_default()
            }
            KeySource::Url(_) | KeySource::Discovery => KeySet::default(),
        };
        // The system bundle or the configured CA; a provider whose CA cannot be read fails
        // its fetches (and says why) rather than stopping lb.
        let tls = crate::l7::upstream::tls::client_config(
            crate::l7::upstream::UpstreamProtocol::Http1,
            config.ca_file.as_deref(),
            false,
        )
        .map(|(tls, _)| tls)
        .map_err(|e| tracing::warn!(provider = %config.name, error = %e, "jwt provider TLS"))
        .ok();
        let provider = Arc::new(Self {
            validations,
            leeway: config.clock_skew.as_secs(),
            keys: ArcSwap::from_pointee(keys),
            tls,
            refresh_at: Mutex::new(None),
            last_refetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            cache: Mutex::new(HashMap::new()),
            counters: ProviderCounters::default(),
            fetch_meters,
            config,
        });
        if provider.fetches_keys() && tokio::runtime::Handle::try_current().is_ok() {
            provider.refresh_in_background();
        }
        provider
    }

    fn fetches_keys(&self) -> bool {
        !matches!(self.config.keys, KeySource::File { .. })
    }

    /// Keys in the current set.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Verifies `token`: from the cache when it was verified before and has not expired,
    /// else signature (refetching the key set once for an unknown kid, within the cooldown)
    /// and claims.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Claims, VerifyError> {
        let now = unix_now();
        if let Some(claims) = self.cached(token, now) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.maybe_refresh();
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(VerifyError::Algorithm);
        };
        let kid = header.kid.as_deref();
        if !self.knows(kid) && self.fetches_keys() {
            self.refetch_for_unknown_key(kid).await;
        }
        self.maybe_refresh();
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        let mut outcome = Err(VerifyError::UnknownKey);
        for key in keys.candidates(kid, header.alg) {
            self.counters.verifications.fetch_add(1, Ordering::Relaxed);
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, key, validation,
            ) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(reason(e.kind()));
                    // Another key of the family may match a token without kid; any other
                    // failure is final.
                    if outcome != Err(VerifyError::Signature) {
                        break;
                    }
                }
            }
        }
        let claims = Arc::new(outcome?);
        if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) {
            self.remember(token, claims.clone(), exp, now);
        }
        Ok(claims)
    }

    fn cached(&self, token: &str, now: u64) -> Option<Claims> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(token)?;
        (now <= entry.exp.saturating_add(self.leeway)).then(|| entry.claims.clone())
    }

    fn remember(&self, token: &str, claims: Claims, exp: u64, now: u64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            let leeway = self.leeway;
            cache.retain(|_, t| now <= t.exp.saturating_add(leeway));
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(token.into(), CachedToken { claims, exp });
    }

    /// Whether the key set has the token's key (without a kid: any key at all).
    fn knows(&self, kid: Option<&str>) -> bool {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.has_kid(kid),
            None => !keys.is_empty(),
        }
    }

    /// An unknown kid (or no keys at all): one fetch, unless one was tried within the
    /// cooldown. Concurrent requests wait for the same fetch (and do not fetch again when it
    /// brought the key).
    async fn refetch_for_unknown_key(&self, kid: Option<&str>) {
        let _one = self.fetch_lock.lock().await;
        if self.knows(kid) {
            return;
        }
        {
            let Ok(mut last) = self.last_refetch.lock() else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < self.config.refetch_cooldown) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.fetch_now().await;
    }

    /// The key set's time is up: refresh in the background (requests go on with the keys
    /// they have).
    fn maybe_refresh(self: &Arc<Self>) {
        if !self.fetches_keys() {
            return;
        }
        let due = self
            .refresh_at
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| Instant::now() >= t);
        if due {
            self.refresh_in_background();
        }
    }

    /// No fetch yet, or the last one's time is up.
    fn refresh_due(&self) -> bool {
        self.refresh_at
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_none_or(|t| Instant::now() >= t)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let provider = self.clone();
        tokio::spawn(async move {
            {
                let _one = provider.fetch_lock.lock().await;
                // A request's refetch may have done it meanwhile.
                if provider.refresh_due() {
                    provider.fetch_now().await;
                }
            }
            provider.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the key set; on failure the last good keys stay and the next background
    /// refresh is tried after the cooldown.
    async fn fetch_now(&self) {
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let (next, result) = match self.fetch_keys().await {
            Ok((set, max_age)) => {
                let ttl = max_age
                    .unwrap_or(self.config.cache_max)
                    .clamp(self.config.cache_min, self.config.cache_max);
                let changed = self.keys.load().kids() != set.kids();
                self.keys.store(Arc::new(set));
                if changed && let Ok(mut cache) = self.cache.lock() {
                    // A key may have been withdrawn: tokens are checked again.
                    cache.clear();
                }
                if let Some((ok, _)) = &self.fetch_meters {
                    ok.inc();
                }
                tracing::info!(provider = %self.config.name, keys = self.key_count(), ttl = ?ttl, "jwt keys fetched");
                (ttl, Ok(()))
            }
            Err(e) => {
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                if let Some((_, failed)) = &self.fetch_meters {
                    failed.inc();
                }
                tracing::warn!(provider = %self.config.name, error = %e, "jwt keys not fetched; keeping the last good keys");
                (self.config.refetch_cooldown, Err(e))
            }
        };
        let _ = result;
        if let Ok(mut t) = self.refresh_at.lock() {
            *t = Some(Instant::now() + next);
        }
    }

    async fn fetch_keys(&self) -> Result<(KeySet, Option<Duration>), String> {
        let timeout = self.config.fetch_timeout;
        let url = match &self.config.keys {
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery => {
                let doc = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let discovery = fetch::get(&doc, self.tls.as_ref(), timeout).await?;
                fetch::jwks_uri(&discovery.body)?
            }
            KeySource::File { jwks, .. } => {
                return KeySet::parse(jwks, &self.config.algorithms).map(|k| (k, None));
            }
        };
        let fetched = fetch::get(&url, self.tls.as_ref(), timeout).await?;
        let text = std::str::from_utf8(&fetched.body).map_err(|_| format!("{url}: not UTF-8"))?;
        let set =
            KeySet::parse(text, &self.config.algorithms).map_err(|e| format!("{url}: {e}"))?;
        Ok((set, fetched.max_age))
    }
}

fn reason(kind: &ErrorKind) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature => VerifyError::Signature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::Issuer,
        ErrorKind::InvalidAudience => VerifyError::Audience,
        ErrorKind::InvalidAlgorithm => VerifyError::Algorithm,
        ErrorKind::MissingRequiredClaim(_) => VerifyError::MissingExp,
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => VerifyError::Claims,
        _ => VerifyError::Malformed,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
