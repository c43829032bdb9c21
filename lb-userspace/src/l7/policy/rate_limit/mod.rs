//! `rate_limit`: per-route request rate limits (NGINX's `limit_req`, Envoy's `local_ratelimit`),
//! GCRA per key (`gcra.rs`) in this process's memory (`store.rs`) or, with `store = "redis"`,
//! in Redis shared by several lb processes (`shared.rs`).
//!
//! ```toml
//! [[route.rate_limit]]         # several may apply; each counts on its own
//! key = "client_ip"            # client_ip | consumer | "claim:NAME" | "header:NAME" | route
//! rate = "10/s"                # N/s, N/m, N/h: the steady rate
//! burst = 20                   # default 1: requests a fresh key may make at once
//! dry_run = false              # count and log would-be rejections, reject nothing
//! max_keys = 100000            # keys remembered; least recently used dropped beyond
//! name = "per-ip"              # RateLimit fields and metrics (default: its index)
//! store = "redis"              # default "local"
//! redis = "127.0.0.1:6379"     # host:port, /path.sock, redis://host:port/db, redis+unix:///path
//! redis_timeout = "20ms"       # per decision; slower or failed: decided locally
//! nodes = 3                    # while Redis is unreachable each node allows rate/nodes
//! ```
//!
//! Keys: `client_ip` is `ctx.client` (the client behind `trusted_proxies`); `consumer` the
//! API-key consumer; `claim:a.b` the verified JWT claim `b` inside claim `a` (strings as they
//! are, numbers and booleans as JSON text; objects, arrays and null are no key);
//! `header:NAME` the header's first value; `route` one key for the whole route. A request
//! without the key (no consumer, claim or header, or an empty one) is not counted by that
//! limit, as NGINX does with an empty key.
//!
//! `burst` is GCRA's: tau = T * (burst - 1) with T = period / N, so `burst` is how many
//! requests a fresh key may make at once (governor's `max_burst`; NGINX's `burst` + 1 with
//! `nodelay`). Over a limit: 429 with `Retry-After` (whole seconds, rounded up, until the
//! next request would be allowed). A request one limit rejects uses up no other limit's
//! budget (it is given back), so rejected requests count nowhere.
//!
//! Every response of the route (429s, backend answers, lb's own) carries the IETF draft-11
//! fields for each enforced limit that counted the request: `RateLimit-Policy: "NAME";q=N;w=S`
//! (the configured rate: N requests per S seconds) and `RateLimit: "NAME";r=R;t=T` (R requests
//! allowed right now, at most `burst`; T seconds, rounded up, until the key is back to its
//! whole burst). Dry-run limits add no fields.
use std::{borrow::Cow, collections::HashMap, fmt, ops::Range};

use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::l7::answer::plain;
use crate::{
    config::{ConfigError, RouteConfig},
    l7::{context::RequestCtx, pool::ProxyBody},
};

pub mod gcra;
pub mod shared;
pub mod store;

use gcra::{Decision, Gcra, ceil_secs};
use shared::{RedisSettings, SharedStore};
use store::{Key, Store, Via};

/// The most keys one limit may remember (~50 bytes each).
pub const MAX_KEYS_LIMIT: i64 = 10_000_000;
const DEFAULT_MAX_KEYS: usize = 100_000;

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    ClientIp,
    Consumer,
    /// A JWT claim: its dotted path, split.
    Claim(Vec<String>),
    Header(HeaderName),
    Route,
}

impl KeyKind {
    /// The metrics label (the kind, without the claim or header name).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClientIp => "client_ip",
            Self::Consumer => "consumer",
            Self::Claim(_) => "claim",
            Self::Header(_) => "header",
            Self::Route => "route",
        }
    }

    /// This request's key (None: it has none, and this limit does not count it).
    fn of<'r>(&self, headers: &'r HeaderMap, ctx: &'r RequestCtx<'_>) -> Option<Key<'r>> {
        let bytes = |b: &'r [u8]| (!b.is_empty()).then_some(Key::Bytes(Cow::Borrowed(b)));
        match self {
            Self::ClientIp => Some(Key::Ip(ctx.client)),
            Self::Route => Some(Key::Route),
            Self::Consumer => bytes(ctx.identity.consumer.as_deref()?.as_bytes()),
            Self::Header(name) => bytes(headers.get(name)?.as_bytes()),
            Self::Claim(path) => {
                let (first, rest) = path.split_first()?;
                let mut value = ctx.identity.claims.as_deref()?.get(first)?;
                for part in rest {
                    value = value.as_object()?.get(part)?;
                }
                match value {
                    serde_json::Value::String(s) => bytes(s.as_bytes()),
                    serde_json::Value::Number(n) => {
                        Some(Key::Bytes(Cow::Owned(n.to_string().into_bytes())))
                    }
                    serde_json::Value::Bool(b) => Some(Key::Bytes(Cow::Borrowed(if *b {
                        b"true"
                    } else {
                        b"false"
                    }))),
                    _ => None,
                }
            }
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Claim(path) => write!(f, "claim:{}", path.join(".")),
            Self::Header(name) => write!(f, "header:{name}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// One limit's settings as configured; a reload keeps a limit's counters when these, its
/// route's label and its position are unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// `name`, or the limit's index in the route.
    pub name: String,
    pub key: KeyKind,
    /// `rate = "N/unit"`: N ...
    pub count: u64,
    /// ... per this many seconds (1, 60, 3600).
    pub per_secs: u64,
    pub burst: u32,
    pub dry_run: bool,
    pub max_keys: usize,
    /// `store = "redis"`: where and how; None: this process's memory.
    pub redis: Option<RedisSettings>,
}

/// One compiled limit with its state.
#[derive(Clone, Debug)]
pub struct Limit {
    pub settings: LimitSettings,
    gcra: Gcra,
    /// `"NAME";q=N;w=S`, made once.
    policy_field: HeaderValue,
    store: Store,
}

impl Limit {
    /// The same state as `other` (a reload kept it).
    pub fn shares_state_with(&self, other: &Limit) -> bool {
        self.store.same(&other.store)
    }
}

/// A route's limits, in configuration order (one request-phase policy).
#[derive(Clone, Debug)]
pub struct RateLimits {
    limits: Vec<Limit>,
}

/// Equal settings: the state is not compared (it is what a reload keeps).
impl PartialEq for RateLimits {
    fn eq(&self, other: &Self) -> bool {
        self.limits.len() == other.limits.len()
            && self
                .limits
                .iter()
                .zip(&other.limits)
                .all(|(a, b)| a.settings == b.settings)
    }
}

impl Eq for RateLimits {}

/// What one limit decided about one request (in `ctx.rate_limits`, for the response fields
/// and the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The limit's index in the route's limits.
    pub limit: usize,
    pub verdict: Verdict,
    /// Requests the key may make now (after this one).
    pub remaining: u64,
    /// Seconds, rounded up, until the key is back to its whole burst.
    pub reset: u64,
    /// The key took the place of another (the limit was at `max_keys`).
    pub evicted: bool,
    /// Who decided (a redis-backed limit: Redis, its pre-check or its fallback).
    pub via: Via,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// This limit rejected the request (429).
    Limited,
    /// A dry-run limit would have rejected it; it went on.
    DryRunLimited,
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

impl RateLimits {
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Counts the request (its `headers`) against each limit whose key it has; None: it goes
    /// on, Some: the 429. What each limit decided goes to `ctx.rate_limits`.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        ctx: &mut RequestCtx<'_>,
    ) -> Option<Response<ProxyBody>> {
        let mut outcomes = Vec::with_capacity(self.limits.len());
        // Keys of the limits that used up budget: given back if another limit rejects.
        let mut counted = Vec::new();
        let mut wait = None;
        for (index, limit) in self.limits.iter().enumerate() {
            let Some(key) = limit.settings.key.of(headers, ctx) else {
                continue;
            };
            let acquired = limit.store.acquire(&key, &limit.gcra).await;
            let verdict = match acquired.decision {
                Decision::Allow(_) => {
                    counted.push((index, key, acquired));
                    Verdict::Allowed
                }
                Decision::Deny(_) if limit.settings.dry_run => Verdict::DryRunLimited,
                Decision::Deny(ns) => {
                    wait = Some(wait.map_or(ns, |w: u64| w.max(ns)));
                    Verdict::Limited
                }
            };
            outcomes.push(Outcome {
                limit: index,
                verdict,
                remaining: acquired.gcra.remaining(acquired.tat, acquired.now),
                reset: ceil_secs(acquired.gcra.until_full(acquired.tat, acquired.now)),
                evicted: acquired.evicted,
                via: acquired.via,
            });
            if verdict == Verdict::DryRunLimited {
                tracing::info!(
                    route = %route_label(ctx),
                    limit = %limit.settings.name,
                    key = %limit.settings.key,
                    "rate limit dry run: would reject"
                );
            }
        }
        let answer = match wait {
            None => None,
            Some(wait) => {
                for (index, key, acquired) in &counted {
                    let limit = &self.limits[*index];
                    if let Some((tat, now)) = limit.store.refund(key, acquired).await
                        && let Some(o) = outcomes.iter_mut().find(|o| o.limit == *index)
                    {
                        o.remaining = acquired.gcra.remaining(tat, now);
                        o.reset = ceil_secs(acquired.gcra.until_full(tat, now));
                    }
                }
                Some(too_many_requests(wait))
            }
        };
        drop(counted);
        ctx.rate_limits = outcomes;
        answer
    }

    /// The RateLimit-Policy and RateLimit fields of the enforced limits that counted the
    /// request (response phase; `outcomes` from `ctx.rate_limits`).
    pub fn set_fields(&self, outcomes: &[Outcome], headers: &mut HeaderMap) {
        for o in outcomes {
            let Some(limit) = self.limits.get(o.limit).filter(|l| !l.settings.dry_run) else {
                continue;
            };
            headers.append(RATELIMIT_POLICY, limit.policy_field.clone());
            let field = format!(
                "\"{}\";r={};t={}",
                limit.settings.name, o.remaining, o.reset
            );
            if let Ok(value) = HeaderValue::from_str(&field) {
                headers.append(RATELIMIT, value);
            }
        }
    }
}

fn route_label(ctx: &RequestCtx<'_>) -> String {
    ctx.route.map_or_else(String::new, |(i, r)| r.label(i))
}

fn too_many_requests(wait: u64) -> Response<ProxyBody> {
    let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    response
}

/// Gives each limit of `routes` the state of the limit of `previous` with the same route
/// label, position and settings (a reload that left it unchanged keeps its counters).
/// Returns how many limits kept their state.
pub fn keep_state<'p>(
    routes: &mut [RouteConfig],
    previous: impl Iterator<Item = (usize, &'p RouteConfig)>,
) -> usize {
    let mut old: HashMap<(String, usize), &Limit> = HashMap::new();
    for (i, route) in previous {
        if let Some(limits) = route.chain.rate_limits() {
            for (j, limit) in limits.limits.iter().enumerate() {
                old.insert((route.label(i), j), limit);
            }
        }
    }
    if old.is_empty() {
        return 0;
    }
    let mut kept = 0;
    for (i, route) in routes.iter_mut().enumerate() {
        let label = route.label(i);
        if let Some(limits) = route.chain.rate_limits_mut() {
            for (j, limit) in limits.limits.iter_mut().enumerate() {
                if let Some(prev) = old
                    .get(&(label.clone(), j))
                    .filter(|p| p.settings == limit.settings)
                {
                    limit.store = prev.store.clone();
                    kept += 1;
                }
            }
        }
    }
    kept
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    key: Spanned<String>,
    rate: Spanned<String>,
    burst: Option<Spanned<i64>>,
    #[serde(default)]
    dry_run: bool,
    max_keys: Option<Spanned<i64>>,
    name: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    redis: Option<Spanned<String>>,
    redis_timeout: Option<Spanned<String>>,
    nodes: Option<Spanned<i64>>,
}

const DEFAULT_REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(20);

/// The `store`, `redis`, `redis_timeout` and `nodes` keys: None for `store = "local"`.
fn redis_settings(
    r: &RawRateLimit,
    fail: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<RedisSettings>, ConfigError> {
    let redis = match &r.store {
        None => false,
        Some(s) if s.get_ref() == "local" => false,
        Some(s) if s.get_ref() == "redis" => true,
        Some(s) => {
            return Err(fail(
                s.span(),
                format!("store {:?}: use \"local\" or \"redis\"", s.get_ref()),
            ));
        }
    };
    if !redis {
        let stray = [
            ("redis", r.redis.as_ref().map(Spanned::span)),
            ("redis_timeout", r.redis_timeout.as_ref().map(Spanned::span)),
            ("nodes", r.nodes.as_ref().map(Spanned::span)),
        ];
        if let Some((what, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
            return Err(fail(
                span,
                format!("{what} applies only with store = \"redis\""),
            ));
        }
        return Ok(None);
    }
    let Some(address) = &r.redis else {
        let span = r.store.as_ref().map_or(r.key.span(), Spanned::span);
        return Err(fail(
            span,
            "store = \"redis\" needs redis = \"HOST:PORT\" (or a redis:// URL or socket path)"
                .to_owned(),
        ));
    };
    let url =
        shared::redis_url(address.get_ref()).map_err(|e| fail(address.span(), e.to_string()))?;
    let timeout = match &r.redis_timeout {
        None => DEFAULT_REDIS_TIMEOUT,
        Some(t) => humantime::parse_duration(t.get_ref())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                fail(
                    t.span(),
                    format!(
                        "redis_timeout {:?}: a duration above 0, e.g. \"20ms\"",
                        t.get_ref()
                    ),
                )
            })?,
    };
    let nodes = match &r.nodes {
        None => 1,
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| fail(n.span(), format!("nodes {} must be 1 or more", n.get_ref())))?,
    };
    Ok(Some(RedisSettings {
        url,
        timeout,
        nodes,
    }))
}

/// Checks and compiles a route's `[[route.rate_limit]]` tables (None when there are none).
pub(crate) fn compile(
    raw: &[Spanned<RawRateLimit>],
    route: &str,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<RateLimits>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.len());
    for (index, r) in raw.iter().enumerate() {
        let fail = |span: Range<usize>, m: String| err(span, format!("rate_limit: {m}"));
        let r = r.get_ref();
        let name = match &r.name {
            Some(n) => {
                let valid = !n.get_ref().is_empty()
                    && n.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !valid {
                    return Err(fail(
                        n.span(),
                        format!(
                            "name {:?}: use letters, digits, '-', '_' and '.'",
                            n.get_ref()
                        ),
                    ));
                }
                n.get_ref().clone()
            }
            None => index.to_string(),
        };
        if limits.iter().any(|l| l.settings.name == name) {
            let span = r.name.as_ref().map_or(r.key.span(), Spanned::span);
            return Err(fail(span, format!("duplicate name {name:?} in this route")));
        }
        let key = key_kind(r.key.get_ref()).map_err(|m| fail(r.key.span(), m))?;
        let (count, per_secs) = rate(r.rate.get_ref()).map_err(|m| fail(r.rate.span(), m))?;
        let burst = match &r.burst {
            None => 1,
            Some(b) => u32::try_from(*b.get_ref())
                .ok()
                .filter(|&b| b >= 1)
                .ok_or_else(|| {
                    fail(b.span(), format!("burst {} must be 1 or more", b.get_ref()))
                })?,
        };
        let max_keys = match &r.max_keys {
            None => DEFAULT_MAX_KEYS,
            Some(m) if (1..=MAX_KEYS_LIMIT).contains(m.get_ref()) => {
                usize::try_from(*m.get_ref()).unwrap_or(DEFAULT_MAX_KEYS)
            }
            Some(m) => {
                return Err(fail(
                    m.span(),
                    format!("max_keys {} is not in 1..={MAX_KEYS_LIMIT}", m.get_ref()),
                ));
            }
        };
        let interval = per_secs * 1_000_000_000 / count;
        let gcra = Gcra::new(interval, burst).ok_or_else(|| {
            let span = r.burst.as_ref().map_or(r.rate.span(), Spanned::span);
            fail(
                span,
                format!("burst {burst} at rate {:?} is too large", r.rate.get_ref()),
            )
        })?;
        let policy_field = HeaderValue::from_str(&format!("\"{name}\";q={count};w={per_secs}"))
            .map_err(|_| fail(r.rate.span(), format!("name {name:?} is not a field value")))?;
        let redis = redis_settings(r, &fail)?;
        let store = match &redis {
            None => Store::local(max_keys),
            Some(settings) => {
                let shared =
                    SharedStore::new(settings, count, per_secs, burst, route, &name, max_keys)
                        .map_err(|e| {
                            let span = r.store.as_ref().map_or(r.rate.span(), Spanned::span);
                            fail(span, format!("store = \"redis\": {e}"))
                        })?;
                Store::Redis(std::sync::Arc::new(shared))
            }
        };
        let settings = LimitSettings {
            name,
            key,
            count,
            per_secs,
            burst,
            dry_run: r.dry_run,
            max_keys,
            redis,
        };
        limits.push(Limit {
            store,
            settings,
            gcra,
            policy_field,
        });
    }
    Ok(Some(RateLimits { limits }))
}

fn key_kind(text: &str) -> Result<KeyKind, String> {
    match text {
        "client_ip" => return Ok(KeyKind::ClientIp),
        "consumer" => return Ok(KeyKind::Consumer),
        "route" => return Ok(KeyKind::Route),
        _ => {}
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(KeyKind::Header)
            .map_err(|_| format!("key {text:?}: {name:?} is not a header name"));
    }
    if let Some(name) = text.strip_prefix("claim:") {
        let path: Vec<String> = name.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "key {text:?}: a claim name (dotted for nested claims)"
            ));
        }
        return Ok(KeyKind::Claim(path));
    }
    Err(format!(
        "key {text:?}: use client_ip, consumer, route, \"claim:NAME\" or \"header:NAME\""
    ))
}

/// `N/s`, `N/m`, `N/h` -> (N, seconds).
fn rate(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("rate {text:?}: use N/s, N/m or N/h with N of 1 or more");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let per_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(bad());
    }
    // At least one nanosecond between requests.
    if count > per_secs * 1_000_000_000 {
        return Err(format!("rate {text:?} is above 10^9 per second"));
    }
    Ok((count, per_secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn limits(text: &str) -> Result<RateLimits, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            rate_limit: Vec<Spanned<RawRateLimit>>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.rate_limit, "r", &err).map(|l| l.expect("some"))
    }

    #[test]
    fn settings_and_defaults() {
        let l = limits(
            "[[rate_limit]]\nkey = \"client_ip\"\nrate = \"10/s\"\n\
             [[rate_limit]]\nkey = \"claim:org.id\"\nrate = \"5/m\"\nburst = 20\ndry_run = true\n\
             max_keys = 7\nname = \"org\"\n\
             [[rate_limit]]\nkey = \"header:X-Api-Key\"\nrate = \"1/h\"\n",
        )
        .expect("valid");
        let s: Vec<_> = l.limits().iter().map(|l| &l.settings).collect();
        assert_eq!(
            *s[0],
            LimitSettings {
                name: "0".into(),
                key: KeyKind::ClientIp,
                count: 10,
                per_secs: 1,
                burst: 1,
                dry_run: false,
                max_keys: 100_000,
                redis: None,
            }
        );
        assert_eq!(
            (
                &s[1].name,
                &s[1].key,
                s[1].burst,
                s[1].dry_run,
                s[1].max_keys
            ),
            (
                &"org".to_owned(),
                &KeyKind::Claim(vec!["org".into(), "id".into()]),
                20,
                true,
                7
            )
        );
        assert_eq!(s[2].key.to_string(), "header:x-api-key");
        assert_eq!((s[2].count, s[2].per_secs), (1, 3600));
        assert_eq!(l.limits()[0].policy_field, "\"0\";q=10;w=1");
        assert_eq!(
            l.limits()[1].gcra,
            Gcra::new(12_000_000_000, 20).expect("g")
        );
    }

    #[test]
    fn keys_come_from_the_client_the_identity_and_headers() {
        let conn = crate::l7::upstream::ConnInfo::new(
            "10.0.0.9".parse().expect("ip"),
            "127.0.0.1:80".parse().expect("addr"),
            None,
        );
        let mut ctx = RequestCtx::new("l", "10.0.0.9:5000".parse().expect("addr"), "http", &conn);
        ctx.client = "192.0.2.7".parse().expect("ip");
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        let kind = |text: &str| key_kind(text).expect("valid key");
        let key = |text: &str, ctx: &RequestCtx<'_>| {
            kind(text).of(&headers, ctx).map(|k| format!("{k:?}"))
        };
        let bytes = |b: &[u8]| Some(format!("{:?}", Key::Bytes(Cow::Borrowed(b))));
        // No identity yet: consumer and claims are absent.
        assert_eq!(
            key("client_ip", &ctx),
            Some(format!("{:?}", Key::Ip(ctx.client)))
        );
        assert_eq!(key("route", &ctx), Some("Route".to_owned()));
        assert_eq!(key("header:X-User", &ctx), bytes(b"alice"));
        assert_eq!(
            key("header:x-empty", &ctx),
            None,
            "an empty key counts as none"
        );
        assert_eq!(key("header:x-none", &ctx), None);
        assert_eq!(
            (key("consumer", &ctx), key("claim:sub", &ctx)),
            (None, None)
        );
        let claims = serde_json::json!({
            "sub": "u1", "tier": 3, "admin": true, "org": { "id": "acme", "n": null },
            "roles": ["a"], "blank": ""
        });
        let serde_json::Value::Object(claims) = claims else {
            panic!("an object")
        };
        ctx.identity.claims = Some(std::sync::Arc::new(claims));
        ctx.identity.consumer = Some("shop".into());
        assert_eq!(key("consumer", &ctx), bytes(b"shop"));
        assert_eq!(key("claim:sub", &ctx), bytes(b"u1"));
        assert_eq!(key("claim:tier", &ctx), bytes(b"3"));
        assert_eq!(key("claim:admin", &ctx), bytes(b"true"));
        assert_eq!(key("claim:org.id", &ctx), bytes(b"acme"));
        for absent in [
            "claim:org",
            "claim:org.n",
            "claim:org.x",
            "claim:roles",
            "claim:sub.x",
            "claim:blank",
        ] {
            assert_eq!(key(absent, &ctx), None, "{absent}");
        }
    }

    #[test]
    fn nonsense_is_refused_with_the_line() {
        for (body, reason) in [
            (
                "rate = \"0/s\"\nkey = \"client_ip\"",
                "rate \"0/s\": use N/s",
            ),
            (
                "rate = \"10/d\"\nkey = \"client_ip\"",
                "rate \"10/d\": use N/s",
            ),
            (
                "rate = \"ten/s\"\nkey = \"client_ip\"",
                "use N/s, N/m or N/h",
            ),
            (
                "rate = \"2000000000/s\"\nkey = \"route\"",
                "above 10^9 per second",
            ),
            (
                "key = \"cookie:a\"\nrate = \"1/s\"",
                "use client_ip, consumer, route",
            ),
            (
                "key = \"header:a b\"\nrate = \"1/s\"",
                "\"a b\" is not a header name",
            ),
            ("key = \"claim:a..b\"\nrate = \"1/s\"", "a claim name"),
            (
                "burst = 0\nkey = \"route\"\nrate = \"1/s\"",
                "burst 0 must be 1 or more",
            ),
            (
                "burst = -3\nkey = \"route\"\nrate = \"1/s\"",
                "burst -3 must be 1 or more",
            ),
            (
                "max_keys = 0\nkey = \"route\"\nrate = \"1/s\"",
                "max_keys 0 is not in",
            ),
            (
                "name = \"a\\\"b\"\nkey = \"route\"\nrate = \"1/s\"",
                "use letters, digits",
            ),
            (
                "burst = 4000000000\nkey = \"route\"\nrate = \"1/h\"",
                "is too large",
            ),
            (
                "store = \"redis\"\nkey = \"route\"\nrate = \"1/s\"",
                "store = \"redis\" needs redis =",
            ),
            (
                "store = \"memcached\"\nkey = \"route\"\nrate = \"1/s\"",
                "use \"local\" or \"redis\"",
            ),
            (
                "redis = \"http://x:1\"\nstore = \"redis\"\nkey = \"route\"\nrate = \"1/s\"",
                "redis \"http://x:1\": use host:port",
            ),
            (
                "redis = \"a b:1\"\nstore = \"redis\"\nkey = \"route\"\nrate = \"1/s\"",
                "redis \"a b:1\"",
            ),
            (
                "nodes = 0\nstore = \"redis\"\nredis = \"127.0.0.1:6379\"\nkey = \"route\"\nrate = \"1/s\"",
                "nodes 0 must be 1 or more",
            ),
            (
                "redis_timeout = \"0s\"\nstore = \"redis\"\nredis = \"127.0.0.1:6379\"\nkey = \"route\"\nrate = \"1/s\"",
                "redis_timeout \"0s\": a duration above 0",
            ),
            (
                "nodes = 3\nkey = \"route\"\nrate = \"1/s\"",
                "nodes applies only with store = \"redis\"",
            ),
            (
                "store = \"redis\"\nredis = \"127.0.0.1:6379\"\nkey = \"route\"\nrate = \"2000000/s\"",
                "above 10^6 per second",
            ),
        ] {
            let text = format!("[[rate_limit]]\n{body}\n");
            let e = limits(&text).expect_err(body);
            assert!(e.to_string().contains(reason), "{body}: {e}");
            assert_eq!(e.line, 2, "{body}: {e}");
        }
        let e = limits(
            "[[rate_limit]]\nkey = \"route\"\nrate = \"1/s\"\nname = \"x\"\n\
             [[rate_limit]]\nkey = \"route\"\nrate = \"1/s\"\nname = \"x\"\n",
        )
        .expect_err("duplicate");
        assert_eq!(
            e.to_string(),
            "t:8: rate_limit: duplicate name \"x\" in this route"
        );
    }
}
