//! The cache key: scheme, host, port, path and query (the URL an operator purges by), then the
//! values of the route's `key_headers`. Host and port are both in (a key without them served
//! one site's page for another: Pingora CVE-2026-2836).
use hyper::{HeaderMap, Uri, header::HeaderName};

/// A response's key in its route's store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// `scheme://host:port/path?query`.
    pub url: String,
    /// The `key_headers` values, in order (absent: empty), joined; empty without key headers.
    pub extra: Vec<u8>,
}

impl CacheKey {
    /// The key of a request for `uri` on `host` (lowercase, no port), reached over `scheme`
    /// on local port `port`.
    pub fn new(
        scheme: &str,
        host: &str,
        port: u16,
        uri: &Uri,
        headers: &HeaderMap,
        key_headers: &[HeaderName],
    ) -> Self {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{scheme}://{host}:{port}{target}");
        let mut extra = Vec::new();
        for name in key_headers {
            for value in headers.get_all(name) {
                extra.extend_from_slice(value.as_bytes());
                extra.push(b',');
            }
            // A separator no header value can hold, so ["a", ""] and ["", "a"] differ.
            extra.push(b'\n');
        }
        Self { url, extra }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn key_has_scheme_host_port_path_query_and_key_headers() {
        let uri: Uri = "/a/b?x=1".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("accept-language", HeaderValue::from_static("de"));
        let lang = [HeaderName::from_static("accept-language")];
        let k = CacheKey::new("http", "example.com", 8080, &uri, &headers, &lang);
        assert_eq!(k.url, "http://example.com:8080/a/b?x=1");
        assert_eq!(k.extra, b"de,\n");
        // Each part changes the key.
        let other = [
            CacheKey::new("https", "example.com", 8080, &uri, &headers, &lang),
            CacheKey::new("http", "example.org", 8080, &uri, &headers, &lang),
            CacheKey::new("http", "example.com", 8081, &uri, &headers, &lang),
            CacheKey::new(
                "http",
                "example.com",
                8080,
                &"/a/b".parse().expect("uri"),
                &headers,
                &lang,
            ),
            CacheKey::new("http", "example.com", 8080, &uri, &HeaderMap::new(), &lang),
        ];
        for o in other {
            assert_ne!(o, k);
        }
        // Without key headers the request's headers do not matter.
        assert_eq!(
            CacheKey::new("http", "h", 80, &uri, &headers, &[]),
            CacheKey::new("http", "h", 80, &uri, &HeaderMap::new(), &[]),
        );
    }
}
