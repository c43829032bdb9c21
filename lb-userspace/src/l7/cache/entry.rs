//! A stored response and the rules that let it in (RFC 9111 through `http-cache-semantics`,
//! plus lb's own: no `Set-Cookie`, no `Vary: *`, no partial content) and say how fresh it is.
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_cache_semantics::{CacheOptions, CachePolicy};
use hyper::{
    HeaderMap, StatusCode,
    header::{self, HeaderName, HeaderValue},
    http::{request, response},
};

use super::settings::CacheSettings;

/// A response head the cache accepted, waiting for its body.
#[derive(Clone, Debug)]
pub struct StoredHead {
    pub status: StatusCode,
    /// As the backend sent them (hop-by-hop headers already gone), without `Age`.
    pub headers: HeaderMap,
    /// The request headers `Vary` names and the values this response was made for.
    vary: Vec<(HeaderName, Vec<HeaderValue>)>,
    stored_at: Instant,
    /// The `Age` the response already had when it arrived.
    initial_age: Duration,
    fresh_for: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

/// A stored response: its head and its whole body.
#[derive(Debug)]
pub struct Stored {
    pub head: StoredHead,
    pub body: Bytes,
}

/// What an entry's age allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Stale, within `stale-while-revalidate`: served while a background fetch refreshes it.
    Revalidating,
    /// Stale beyond that: fetched again (conditionally when it has validators); served
    /// instead of a failure while within `stale-if-error` (`usable_on_error`).
    Stale { usable_on_error: bool },
}

impl StoredHead {
    /// The head of `response` (answering `request`) if the cache may store it, with its
    /// freshness lifetime; None: it passes through uncached.
    pub fn admit(
        settings: &CacheSettings,
        request: &request::Parts,
        response: &response::Parts,
    ) -> Option<Self> {
        let headers = &response.headers;
        // Never shared: a cookie meant for one client (NGINX does not store these either),
        // a body that depends on everything, a part of a body.
        if headers.contains_key(header::SET_COOKIE)
            || response.status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return None;
        }
        let vary_names = vary_names(headers)?;
        let now = SystemTime::now();
        let policy = CachePolicy::new_options(request, response, now, CacheOptions::default());
        // Storable for a shared cache: GET/HEAD, no no-store, no private, no Authorization
        // unless public / s-maxage / must-revalidate say so.
        if !policy.is_storable() {
            return None;
        }
        let directives = Directives::of(headers);
        let mut fresh_for = policy.time_to_live(now);
        let says_nothing =
            !headers.contains_key(header::CACHE_CONTROL) && !headers.contains_key(header::EXPIRES);
        if fresh_for.is_zero()
            && says_nothing
            && matches!(response.status.as_u16(), 200 | 301 | 302)
            && let Some(ttl) = settings.default_ttl
        {
            fresh_for = ttl;
        }
        let stale_while_revalidate = directives
            .stale_while_revalidate
            .unwrap_or(settings.stale_while_revalidate);
        let stale_if_error = if directives.must_revalidate {
            Duration::ZERO
        } else {
            directives.stale_if_error.unwrap_or(settings.stale_if_error)
        };
        let stale_while_revalidate = if directives.must_revalidate {
            Duration::ZERO
        } else {
            stale_while_revalidate
        };
        // Nothing to gain from an entry that is never fresh and never usable stale (a
        // `no-cache` answer could be revalidated each time; lb passes it through instead).
        if fresh_for.is_zero() && stale_while_revalidate.is_zero() && stale_if_error.is_zero() {
            return None;
        }
        let vary = vary_names
            .into_iter()
            .map(|name| {
                let values = request.headers.get_all(&name).iter().cloned().collect();
                (name, values)
            })
            .collect();
        let mut headers = headers.clone();
        let initial_age = age_header(&headers);
        headers.remove(header::AGE);
        Some(Self {
            status: response.status,
            headers,
            vary,
            stored_at: Instant::now(),
            initial_age,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
        })
    }

    /// Whether this response was made for a request with `headers` (its `Vary` fields
    /// equal).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    /// Whether this entry and `other` are the same variant (the same Vary values).
    pub fn same_variant(&self, other: &Self) -> bool {
        self.vary == other.vary
    }

    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        let age = self.age(now);
        if age < self.fresh_for {
            return Freshness::Fresh;
        }
        let stale_by = age - self.fresh_for;
        if stale_by < self.stale_while_revalidate {
            Freshness::Revalidating
        } else {
            Freshness::Stale {
                usable_on_error: stale_by < self.stale_if_error,
            }
        }
    }

    /// How long past its freshness the entry stays useful (after that it is evicted).
    pub fn lifetime(&self) -> Duration {
        self.fresh_for
            .saturating_sub(self.initial_age)
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }

    /// The validators a conditional request sends for this entry.
    pub fn validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            out.push((header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(modified) = self.headers.get(header::LAST_MODIFIED) {
            out.push((header::IF_MODIFIED_SINCE, modified.clone()));
        }
        out
    }

    /// This head after a `304 Not Modified` answered its revalidation: the 304's headers
    /// replace the stored ones of the same name (RFC 9111 4.3.4; not the body's framing),
    /// and the freshness starts again from the 304's directives.
    pub fn refreshed(
        &self,
        settings: &CacheSettings,
        request: &request::Parts,
        not_modified: &response::Parts,
    ) -> Option<Self> {
        let mut merged = response::Parts::clone_head(self.status, &self.headers);
        for name in not_modified.headers.keys() {
            if matches!(
                name.as_str(),
                "content-length" | "content-encoding" | "transfer-encoding" | "content-range"
            ) {
                continue;
            }
            merged.headers.remove(name);
            for value in not_modified.headers.get_all(name) {
                merged.headers.append(name.clone(), value.clone());
            }
        }
        Self::admit(settings, request, &merged)
    }

    /// Bytes this head takes in the store (roughly: names, values and the fixed part).
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (headers + 128) as u64
    }
}

trait CloneHead {
    fn clone_head(status: StatusCode, headers: &HeaderMap) -> response::Parts;
}

impl CloneHead for response::Parts {
    fn clone_head(status: StatusCode, headers: &HeaderMap) -> response::Parts {
        let (mut parts, ()) = hyper::Response::new(()).into_parts();
        parts.status = status;
        parts.headers = headers.clone();
        parts
    }
}

/// The request headers a response's `Vary` names; None for `Vary: *` (never matches, so
/// never stored).
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

fn age_header(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// The `Cache-Control` response directives the library leaves to the cache.
#[derive(Default)]
struct Directives {
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    must_revalidate: bool,
}

impl Directives {
    fn of(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let (name, arg) = item.split_once('=').unwrap_or((item, ""));
                let name = name.trim().to_ascii_lowercase();
                let seconds = || {
                    arg.trim()
                        .trim_matches('"')
                        .parse::<u64>()
                        .ok()
                        .map(Duration::from_secs)
                };
                match name.as_str() {
                    "stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                    "stale-if-error" => d.stale_if_error = seconds(),
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    _ => {}
                }
            }
        }
        d
    }
}
