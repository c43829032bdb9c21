//! What the cache does for one GET or HEAD, whoever fetches for it (a route's pool, the
//! forward proxy's origins): look up (`lookup`), then either an answer from the store, with
//! perhaps a background refresh for the caller to run (`Refresh`), or a fetch to make
//! (`Fetch`: the request head to send, then what the answer does to the store). The caller
//! sends the requests; this file never touches the network.
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};

use super::{
    CacheStatus, RouteCache,
    entry::{Freshness, Stored, StoredHead},
    fill::{FillBody, Filling},
    key::CacheKey,
    lock::{self, FillGuard, Turn},
};
use crate::l7::pool::ProxyBody;

pub const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// What the store has for a request.
pub(in crate::l7) enum Lookup {
    /// Answered from the store: HIT, or STALE within stale-while-revalidate, then with the
    /// refresh the caller runs in the background when nobody else is refreshing the entry.
    Served(Response<ProxyBody>, CacheStatus, Option<Refresh>),
    /// Not answerable from the store: fetch `Fetch::request`, then `Fetch::finish`.
    Fetch(Fetch),
}

/// A fetch for a request the store could not answer.
pub(in crate::l7) struct Fetch {
    key: CacheKey,
    parts: Parts,
    found: Option<std::sync::Arc<Stored>>,
    usable_on_error: bool,
    /// This request fills the key (None: a HEAD, or a waiter whose fill stored nothing).
    guard: Option<FillGuard>,
}

/// A background refresh of an entry served stale.
pub(in crate::l7) struct Refresh {
    key: CacheKey,
    parts: Parts,
    stored: std::sync::Arc<Stored>,
    guard: FillGuard,
}

/// Whether the cache serves this request at all (else it passes through: BYPASS).
pub fn cacheable_request(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !crate::l7::forward::has_body(headers)
        && !headers.contains_key(header::UPGRADE)
}

/// Looks `key` up for the request `parts` (a cacheable one: `cacheable_request`). Waits,
/// up to the cache's `lock_timeout`, when another request is filling the key.
pub(in crate::l7) async fn lookup(cache: &RouteCache, key: CacheKey, parts: Parts) -> Lookup {
    let head_only = parts.method == Method::HEAD;
    let found = cache.store().get(&key, &parts.headers);
    let now = Instant::now();
    // The client asking for a revalidation makes a fresh entry count as stale.
    let freshness = found.as_ref().map(|s| match s.head.freshness(now) {
        Freshness::Fresh | Freshness::Revalidating if asks_revalidation(&parts.headers) => {
            Freshness::Stale {
                usable_on_error: false,
            }
        }
        other => other,
    });
    match (&found, freshness) {
        (Some(stored), Some(Freshness::Fresh)) => {
            return Lookup::Served(serve(stored, &parts), CacheStatus::Hit, None);
        }
        (Some(stored), Some(Freshness::Revalidating)) => {
            let answer = serve(stored, &parts);
            let refresh = cache.locks().try_fill(&key).map(|guard| Refresh {
                key,
                parts,
                stored: stored.clone(),
                guard,
            });
            return Lookup::Served(answer, CacheStatus::Stale, refresh);
        }
        _ => {}
    }
    let usable_on_error = matches!(
        freshness,
        Some(Freshness::Stale {
            usable_on_error: true
        })
    );
    // A HEAD that misses is sent on as it is and stores nothing (its answer has no body to
    // store); GETs coalesce.
    let guard = match (head_only, cache.locks().enter(&key)) {
        (true, _) => None,
        (false, Turn::Fill(guard)) => Some(guard),
        (false, Turn::Wait(rx)) => {
            let timeout = cache.settings.lock_timeout;
            if !timeout.is_zero()
                && lock::wait(rx, timeout).await
                && let Some(stored) = cache.store().get(&key, &parts.headers)
                && stored.head.freshness(Instant::now()) == Freshness::Fresh
            {
                return Lookup::Served(serve(&stored, &parts), CacheStatus::Hit, None);
            }
            // The fill timed out or stored nothing usable: fetch, uncached.
            None
        }
    };
    Lookup::Fetch(Fetch {
        key,
        parts,
        found,
        usable_on_error,
        guard,
    })
}

impl Fetch {
    /// The request head to send (no body): the client's, with the stored entry's validators
    /// in place of the client's own conditions when there is one.
    pub fn request(&self) -> Parts {
        let mut parts = self.parts.clone();
        if let Some(stored) = &self.found {
            add_validators(&mut parts.headers, &stored.head);
        }
        parts
    }

    /// The answer to send the client for the fetched `response`, and what the cache did: a
    /// 304 refreshes the stale entry (REVALIDATED), a 5xx within stale-if-error is replaced
    /// by it (STALE), anything else goes on (MISS, or EXPIRED over a stale entry), streamed
    /// into the store as it is sent when storable.
    pub fn finish(
        self,
        cache: &RouteCache,
        response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, CacheStatus) {
        let Self {
            key,
            parts,
            found,
            usable_on_error,
            guard,
        } = self;
        let status = response.status();
        if let Some(stored) = &found {
            if status == StatusCode::NOT_MODIFIED {
                let (not_modified, _) = response.into_parts();
                let refreshed = stored
                    .head
                    .refreshed(&cache.settings, &parts, &not_modified);
                let served = match refreshed {
                    Some(head) => {
                        let stored = Stored {
                            head,
                            body: stored.body.clone(),
                        };
                        let answer = serve(&stored, &parts);
                        cache.store().insert(key, stored);
                        cache.update_gauges();
                        answer
                    }
                    None => serve(stored, &parts),
                };
                drop(guard);
                return (served, CacheStatus::Revalidated);
            }
            if usable_on_error && status.is_server_error() {
                drop(guard);
                return (serve(stored, &parts), CacheStatus::Stale);
            }
        }
        let status = if found.is_some() {
            CacheStatus::Expired
        } else {
            CacheStatus::Miss
        };
        let response = match guard {
            Some(guard) => fill(cache, key, &parts, response, guard),
            None => response,
        };
        (response, status)
    }
}

impl Refresh {
    /// The conditional request head of the refresh.
    pub fn request(&self) -> Parts {
        let mut parts = self.parts.clone();
        add_validators(&mut parts.headers, &self.stored.head);
        parts
    }

    /// Stores what the refresh fetched: a 304 refreshes the entry, a storable answer
    /// replaces it (read to its end here, sent nowhere), anything else leaves it.
    pub async fn complete(self, cache: &RouteCache, response: Response<ProxyBody>) {
        let Self {
            key,
            parts,
            stored,
            guard,
        } = self;
        if response.status() == StatusCode::NOT_MODIFIED {
            let (not_modified, _) = response.into_parts();
            if let Some(head) = stored
                .head
                .refreshed(&cache.settings, &parts, &not_modified)
            {
                cache.store().insert(
                    key,
                    Stored {
                        head,
                        body: stored.body.clone(),
                    },
                );
                cache.update_gauges();
            }
            drop(guard);
            return;
        }
        // Read to the end so the fill stores it (or drops it: uncacheable, too big).
        let mut body = fill(cache, key, &parts, response, guard).into_body();
        while let Some(Ok(_)) = body.frame().await {}
    }
}

/// Sets `X-Cache-Status` on an answer.
pub fn mark(response: &mut Response<ProxyBody>, status: CacheStatus) {
    response
        .headers_mut()
        .insert(X_CACHE_STATUS, HeaderValue::from_static(status.as_str()));
}

/// The fetched answer, with its body copied into the store as it streams when the cache
/// admits it; else as it is (the guard drops: waiters fetch for themselves).
fn fill(
    cache: &RouteCache,
    key: CacheKey,
    request: &Parts,
    response: Response<ProxyBody>,
    guard: FillGuard,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let Some(head) = StoredHead::admit(&cache.settings, request, &parts) else {
        return Response::from_parts(parts, body);
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cache.settings.max_object_bytes) {
        return Response::from_parts(parts, body);
    }
    let updater = cache.clone();
    let filling = Filling {
        store: cache.store().clone(),
        key,
        head,
        limit: cache.settings.max_object_bytes,
        guard: Some(guard),
        on_stored: Some(Box::new(move || updater.update_gauges())),
    };
    Response::from_parts(parts, FillBody::wrap(body, filling))
}

/// A stored response as the answer to `request`: its Age, and for a client whose
/// If-None-Match names its ETag, a 304.
fn serve(stored: &Stored, request: &Parts) -> Response<ProxyBody> {
    let mut headers = stored.head.headers.clone();
    headers.insert(
        header::AGE,
        HeaderValue::from(stored.head.age(Instant::now()).as_secs()),
    );
    if etag_matches(&request.headers, &headers) {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        *response.headers_mut() = headers;
        return response;
    }
    let body = if request.method == Method::HEAD {
        empty()
    } else {
        Full::new(stored.body.clone())
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.head.status;
    *response.headers_mut() = headers;
    response
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The stored response's validators on the fetch, in place of the client's own (the
/// answer, 304 or not, is then about the entry; the client's conditions are applied to
/// what lb sends it).
fn add_validators(headers: &mut HeaderMap, head: &StoredHead) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    for (name, value) in head.validators() {
        headers.insert(name, value);
    }
}

/// `Cache-Control: no-cache` (or `Pragma: no-cache` without Cache-Control) on the request.
fn asks_revalidation(headers: &HeaderMap) -> bool {
    let directive = |name: HeaderName| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
        })
    };
    if headers.contains_key(header::CACHE_CONTROL) {
        directive(header::CACHE_CONTROL)
    } else {
        directive(header::PRAGMA)
    }
}

/// Whether the request's If-None-Match names the response's ETag (weak comparison, RFC 9110
/// 13.1.2; `*` matches any).
fn etag_matches(request: &HeaderMap, response: &HeaderMap) -> bool {
    let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = opaque(etag);
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == etag)
}
