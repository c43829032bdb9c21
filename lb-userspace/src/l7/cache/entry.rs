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
    Stale {
        usable_on_error: bool,
    },
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
        // The freshness lifetime (the library's time to live is what is left of it after the
        // response's Age; `age` below counts that Age again).
        let mut fresh_for = match policy.time_to_live(now) {
            ttl if ttl.is_zero() => ttl,
            ttl => ttl + policy.age(now),
        };
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
        let mut merged = head_of(self.status, &self.headers);
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

/// A response head with `status` and a copy of `headers`.
fn head_of(status: StatusCode, headers: &HeaderMap) -> response::Parts {
    let (mut parts, ()) = hyper::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers.clone();
    parts
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(extra: &str) -> CacheSettings {
        #[derive(serde::Deserialize)]
        struct Doc {
            c: toml::Spanned<super::super::settings::RawCache>,
        }
        let text = format!("[c]\n{extra}");
        let doc: Doc = toml::from_str(&text).expect("toml");
        let err = |span: std::ops::Range<usize>, m: String| {
            crate::config::ConfigError::at(Path::new("t"), &text, span, m)
        };
        super::super::settings::compile(&doc.c, &err).expect("settings")
    }

    fn request(headers: &[(&str, &str)]) -> request::Parts {
        let mut r = hyper::Request::get("/x");
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.body(()).expect("request").into_parts().0
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut r = hyper::Response::builder().status(status);
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.body(()).expect("response").into_parts().0
    }

    fn admit(req: &[(&str, &str)], status: u16, res: &[(&str, &str)]) -> Option<StoredHead> {
        StoredHead::admit(&settings(""), &request(req), &response(status, res))
    }

    #[test]
    fn only_what_may_be_shared_is_admitted() {
        let fresh = [("cache-control", "max-age=60")];
        assert!(admit(&[], 200, &fresh).is_some());
        assert!(admit(&[], 200, &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]).is_some());
        for refused in [
            &[("cache-control", "private, max-age=60")][..],
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
            &[("cache-control", "max-age=60"), ("vary", "*")],
            &[
                ("cache-control", "max-age=60"),
                ("content-range", "bytes 0-1/2"),
            ],
            // No freshness information and no default_ttl.
            &[],
        ] {
            assert!(admit(&[], 200, refused).is_none(), "{refused:?}");
        }
        assert!(admit(&[], 206, &fresh).is_none());
        assert!(admit(&[], 500, &fresh).is_none());
        // Authorization: only when the response allows it.
        let auth = [("authorization", "Bearer x")];
        assert!(admit(&auth, 200, &fresh).is_none());
        assert!(admit(&auth, 200, &[("cache-control", "public, max-age=60")]).is_some());
        assert!(admit(&auth, 200, &[("cache-control", "s-maxage=60")]).is_some());
        // The client's own no-store.
        assert!(admit(&[("cache-control", "no-store")], 200, &fresh).is_none());
        // default_ttl: for 200/301/302 answers that state nothing.
        let ttl = settings("default_ttl = \"1m\"\n");
        let head = StoredHead::admit(&ttl, &request(&[]), &response(200, &[])).expect("ttl");
        assert_eq!(head.freshness(Instant::now()), Freshness::Fresh);
        let nocache = response(200, &[("cache-control", "no-cache")]);
        assert!(StoredHead::admit(&ttl, &request(&[]), &nocache).is_none());
    }

    #[test]
    fn freshness_counts_the_age_it_arrived_with() {
        let head =
            admit(&[], 200, &[("cache-control", "max-age=60"), ("age", "50")]).expect("admitted");
        let now = Instant::now();
        assert_eq!(head.age(now).as_secs(), 50);
        assert_eq!(head.freshness(now), Freshness::Fresh);
        let later = now + Duration::from_secs(11);
        assert_eq!(
            head.freshness(later),
            Freshness::Stale {
                usable_on_error: false
            }
        );
        assert!(
            !head.headers.contains_key(header::AGE),
            "Age is made per answer"
        );
    }

    #[test]
    fn stale_windows_from_the_response_or_the_settings() {
        let now = Instant::now();
        let cc = "max-age=10, stale-while-revalidate=20, stale-if-error=100";
        let head = admit(&[], 200, &[("cache-control", cc)]).expect("admitted");
        assert_eq!(
            head.freshness(now + Duration::from_secs(15)),
            Freshness::Revalidating
        );
        assert_eq!(
            head.freshness(now + Duration::from_secs(50)),
            Freshness::Stale {
                usable_on_error: true
            }
        );
        assert_eq!(
            head.freshness(now + Duration::from_secs(200)),
            Freshness::Stale {
                usable_on_error: false
            }
        );
        // must-revalidate forbids serving stale.
        let strict = admit(
            &[],
            200,
            &[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=100",
            )],
        )
        .expect("admitted");
        assert_eq!(
            strict.freshness(now + Duration::from_secs(50)),
            Freshness::Stale {
                usable_on_error: false
            }
        );
        // The settings fill in what the response does not say; a response that is never
        // fresh is kept for them.
        let s = settings("stale_if_error = \"1h\"\n");
        let head = StoredHead::admit(
            &s,
            &request(&[]),
            &response(200, &[("cache-control", "max-age=0")]),
        )
        .expect("kept for stale-if-error");
        assert_eq!(
            head.freshness(now),
            Freshness::Stale {
                usable_on_error: true
            }
        );
    }

    #[test]
    fn vary_selects_the_variant_and_304_refreshes() {
        let head = admit(
            &[("accept-language", "de")],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language"),
                ("etag", "\"a\""),
            ],
        )
        .expect("admitted");
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        assert!(head.matches(&de));
        assert!(!head.matches(&en));
        assert!(!head.matches(&HeaderMap::new()));
        assert_eq!(
            head.validators(),
            vec![(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\""))]
        );
        let refreshed = head
            .refreshed(
                &settings(""),
                &request(&[("accept-language", "de")]),
                &response(
                    304,
                    &[("cache-control", "max-age=120"), ("content-length", "0")],
                ),
            )
            .expect("still storable");
        assert_eq!(
            refreshed.headers.get(header::CACHE_CONTROL),
            Some(&HeaderValue::from_static("max-age=120"))
        );
        assert!(!refreshed.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            refreshed.headers.get(header::ETAG),
            head.headers.get(header::ETAG)
        );
    }
}
