//! `[route.cache]`: the route's response-cache settings, checked at load.
//!
//! ```toml
//! [route.cache]
//! max_bytes = 67108864          # the route's store, bodies and heads (default 64 MiB)
//! max_object_bytes = 8388608    # a larger response streams through uncached (default 8 MiB)
//! key_headers = ["accept-language"]   # added to scheme + host + port + path + query
//! lock_timeout = "5s"           # concurrent misses wait this long for the first one's fill
//! default_ttl = "1m"            # for 200/301/302 answers with no freshness information
//! stale_while_revalidate = "10s"  # when the response names none
//! stale_if_error = "1m"           # when the response names none
//! ```
use std::{ops::Range, time::Duration};

use hyper::header::HeaderName;
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, value::parse_duration};

/// One route's cache settings, compared on reload: unchanged settings keep the stored
/// responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    /// Request headers whose values are part of the key (lowercase).
    pub key_headers: Vec<HeaderName>,
    /// How long concurrent misses for one key wait for the first one's fill; zero: they do
    /// not wait (each goes to the backend).
    pub lock_timeout: Duration,
    /// Freshness of a 200/301/302 response that states none (NGINX `proxy_cache_valid`);
    /// None: such responses are stored only for what RFC 9111's heuristics give them.
    pub default_ttl: Option<Duration>,
    /// Serve stale this long past freshness while one background fetch refreshes the entry,
    /// when the response's own `stale-while-revalidate` does not say.
    pub stale_while_revalidate: Duration,
    /// Serve stale this long past freshness when the backend fails (unreachable, 5xx, timed
    /// out), when the response's own `stale-if-error` does not say.
    pub stale_if_error: Duration,
}

pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 << 20;
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    max_bytes: Option<Spanned<i64>>,
    max_object_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    key_headers: Vec<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    default_ttl: Option<Spanned<String>>,
    stale_while_revalidate: Option<Spanned<String>>,
    stale_if_error: Option<Spanned<String>>,
}

pub(crate) fn compile(
    raw: &Spanned<RawCache>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<CacheSettings, ConfigError> {
    let r = raw.get_ref();
    let size = |value: &Option<Spanned<i64>>, what: &str, default: u64| match value {
        None => Ok(default),
        Some(v) => u64::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| err(v.span(), format!("cache: {what} must be above 0 (bytes)"))),
    };
    let max_bytes = size(&r.max_bytes, "max_bytes", DEFAULT_MAX_BYTES)?;
    let max_object_bytes = size(
        &r.max_object_bytes,
        "max_object_bytes",
        DEFAULT_MAX_OBJECT_BYTES.min(max_bytes),
    )?;
    if max_object_bytes > max_bytes {
        let span = r
            .max_object_bytes
            .as_ref()
            .map_or_else(|| raw.span(), Spanned::span);
        return Err(err(
            span,
            format!(
                "cache: max_object_bytes ({max_object_bytes}) is above max_bytes ({max_bytes})"
            ),
        ));
    }
    let mut key_headers = Vec::new();
    for name in &r.key_headers {
        let header = HeaderName::from_bytes(name.get_ref().as_bytes()).map_err(|_| {
            err(
                name.span(),
                format!("cache: bad header name {:?} in key_headers", name.get_ref()),
            )
        })?;
        if key_headers.contains(&header) {
            return Err(err(
                name.span(),
                format!("cache: {:?} listed twice in key_headers", name.get_ref()),
            ));
        }
        key_headers.push(header);
    }
    let duration = |value: &Option<Spanned<String>>, what: &str| {
        value
            .as_ref()
            .map(|v| parse_duration(v, &format!("cache: {what}"), err))
            .transpose()
    };
    let default_ttl = match duration(&r.default_ttl, "default_ttl")? {
        Some(d) if d.is_zero() => {
            let span = r
                .default_ttl
                .as_ref()
                .map_or_else(|| raw.span(), Spanned::span);
            return Err(err(
                span,
                "cache: default_ttl must be above 0 (leave it out to store only what the \
                 backend says is fresh)"
                    .to_owned(),
            ));
        }
        other => other,
    };
    Ok(CacheSettings {
        max_bytes,
        max_object_bytes,
        key_headers,
        lock_timeout: duration(&r.lock_timeout, "lock_timeout")?.unwrap_or(DEFAULT_LOCK_TIMEOUT),
        default_ttl,
        stale_while_revalidate: duration(&r.stale_while_revalidate, "stale_while_revalidate")?
            .unwrap_or_default(),
        stale_if_error: duration(&r.stale_if_error, "stale_if_error")?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn compiled(text: &str) -> Result<CacheSettings, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            c: Spanned<RawCache>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.c, &err)
    }

    #[test]
    fn defaults() {
        let s = compiled("[c]\n").expect("valid");
        assert_eq!(s.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(s.max_object_bytes, DEFAULT_MAX_OBJECT_BYTES);
        assert_eq!(s.lock_timeout, DEFAULT_LOCK_TIMEOUT);
        assert_eq!(s.default_ttl, None);
        assert!(s.stale_while_revalidate.is_zero() && s.stale_if_error.is_zero());
        // A small store lowers the default object bound with it.
        let s = compiled("[c]\nmax_bytes = 1000\n").expect("valid");
        assert_eq!(s.max_object_bytes, 1000);
    }

    #[test]
    fn config_errors_have_the_line() {
        for (text, reason) in [
            ("[c]\nmax_bytes = 0\n", "max_bytes must be above 0"),
            (
                "[c]\nmax_object_bytes = -1\n",
                "max_object_bytes must be above 0",
            ),
            (
                "[c]\nmax_bytes = 10\nmax_object_bytes = 20\n",
                "is above max_bytes",
            ),
            ("[c]\nkey_headers = [\"a b\"]\n", "bad header name"),
            ("[c]\nkey_headers = [\"x\", \"X\"]\n", "listed twice"),
            ("[c]\nlock_timeout = \"soon\"\n", "cache: lock_timeout"),
            ("[c]\ndefault_ttl = \"0s\"\n", "default_ttl must be above 0"),
            ("[c]\nstale_if_error = \"x\"\n", "cache: stale_if_error"),
        ] {
            let e = compiled(text).expect_err(text).to_string();
            assert!(e.contains("t:2") || e.contains("t:3"), "{text}: {e}");
            assert!(e.contains(reason), "{text}: {e}");
        }
    }
}
