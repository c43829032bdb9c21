//! `cors`: Cross-Origin Resource Sharing per route (the Fetch standard's CORS protocol, as
//! Envoy's `cors` filter and tower-http's `CorsLayer`).
//!
//! ```toml
//! [route.cors]
//! allow_origins = ["https://app.example.com", "https://*.example.com"]  # or ["*"]: any
//! allow_methods = ["GET", "POST"]          # default GET, HEAD, POST; ["*"]: any
//! allow_headers = ["content-type"]         # request headers a preflight may ask for; ["*"]: any
//! expose_headers = ["x-request-id"]        # response headers scripts may read; ["*"]: any
//! allow_credentials = false                # cookies / Authorization allowed
//! max_age = "10m"                          # how long browsers cache a preflight ("0s": not)
//! ```
//!
//! Request phase (first of the route's policies, before authentication: a preflight carries
//! no credentials): a preflight (OPTIONS with Origin and Access-Control-Request-Method) is
//! answered by lb: 204 with the CORS headers when the origin, the method and every requested
//! header are allowed; otherwise 403 without CORS headers (the browser then blocks the real
//! request). Any other request with an allowed Origin goes on, and its response (the
//! backend's or lb's own) gets Access-Control-Allow-Origin, -Allow-Credentials,
//! -Expose-Headers and `Vary: Origin` in the response phase. No Origin, or one not allowed:
//! no CORS headers, only `Vary: Origin` (unless the answer is `*` for everyone), so a shared
//! cache keeps the variants apart.
//!
//! At load: `*` with `allow_credentials` is refused (browsers ignore a wildcard with
//! credentials), as are empty lists, origins that are not `scheme://host[:port]`, and bad
//! method or header names.
use std::{ops::Range, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::l7::answer::plain;
use crate::{
    config::ConfigError,
    l7::{headers::add_vary, pool::ProxyBody},
};

/// An `allow_origins` entry, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, lower case.
    Exact(String),
    /// `scheme://*.suffix[:port]`: any host ending in `.suffix` (any depth).
    Subdomain {
        scheme: String,
        /// `.example.com`, lower case.
        suffix: String,
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Whether the request's `Origin` is allowed by this entry (case-insensitive, no
    /// allocation).
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(e) => origin.eq_ignore_ascii_case(e),
            Self::Subdomain {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, authority)) = origin.split_once("://") else {
                    return false;
                };
                if !s.eq_ignore_ascii_case(scheme) {
                    return false;
                }
                let host = match (authority.rsplit_once(':'), port) {
                    (Some((host, p)), Some(port)) if p.parse::<u16>().ok() == Some(*port) => host,
                    (None, None) => authority,
                    _ => return false,
                };
                host.len() > suffix.len()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// Why an `allow_origins` entry is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("{0:?} is not an origin: use scheme://host[:port]")]
    Form(String),
    #[error("{0:?} has a path: an origin is scheme://host[:port] only")]
    Path(String),
    #[error("{0:?}: bad scheme")]
    Scheme(String),
    #[error("{0:?}: bad host (a name, [IPv6], or *.name for any subdomain)")]
    Host(String),
    #[error("{0:?}: bad port")]
    Port(String),
}

/// Parses an `allow_origins` entry other than `*`.
pub fn parse_origin(text: &str) -> Result<OriginPattern, OriginError> {
    let lower = text.to_ascii_lowercase();
    let (scheme, authority) = lower
        .split_once("://")
        .ok_or_else(|| OriginError::Form(text.to_owned()))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(OriginError::Scheme(text.to_owned()));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(OriginError::Path(text.to_owned()));
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| OriginError::Host(text.to_owned()))?;
        match &authority[end + 1..] {
            "" => (&authority[..=end], None),
            rest => (
                &authority[..=end],
                Some(
                    rest.strip_prefix(':')
                        .ok_or_else(|| OriginError::Port(text.to_owned()))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| OriginError::Port(text.to_owned()))
        })
        .transpose()?;
    let name_ok = |h: &str| {
        !h.is_empty()
            && !h.starts_with('.')
            && !h.ends_with('.')
            && !h.contains("..")
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(rest) = host.strip_prefix("*.") {
        if !name_ok(rest) {
            return Err(OriginError::Host(text.to_owned()));
        }
        return Ok(OriginPattern::Subdomain {
            scheme: scheme.to_owned(),
            suffix: format!(".{rest}"),
            port,
        });
    }
    let ipv6 = host.len() > 2
        && host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    if !ipv6 && !name_ok(host) {
        return Err(OriginError::Host(text.to_owned()));
    }
    Ok(OriginPattern::Exact(lower))
}

/// A list that may be `["*"]`: anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowList<T> {
    Any,
    Only(Vec<T>),
}

/// One route's CORS settings, compiled (header values built once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    pub origins: AllowList<OriginPattern>,
    pub methods: AllowList<Method>,
    pub headers: AllowList<HeaderName>,
    pub credentials: bool,
    /// Access-Control-Allow-Methods of a preflight (None with `*`: the requested one).
    methods_value: Option<HeaderValue>,
    /// Access-Control-Expose-Headers.
    pub expose: Option<HeaderValue>,
    /// Access-Control-Max-Age (seconds).
    pub max_age: Option<Duration>,
    max_age_value: Option<HeaderValue>,
}

/// What the request phase decided.
pub enum Decision {
    /// Not a CORS request, or an origin not allowed: nothing to do.
    None,
    /// An allowed actual request: the Access-Control-Allow-Origin its response gets.
    Allow(HeaderValue),
    /// A preflight, answered by lb.
    Answer(Response<ProxyBody>),
}

const VARY_PREFLIGHT: [&str; 3] = [
    "Origin",
    "Access-Control-Request-Method",
    "Access-Control-Request-Headers",
];

impl Cors {
    /// The request phase: `Answer` for a preflight, `Allow` for an allowed origin.
    pub fn on_request(&self, method: &Method, headers: &HeaderMap) -> Decision {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Decision::None;
        };
        let allowed = self.allow_origin(origin);
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            return allowed.map_or(Decision::None, Decision::Allow);
        }
        match allowed.and_then(|origin| self.preflight(origin, headers)) {
            Some(answer) => Decision::Answer(answer),
            None => Decision::Answer(refused()),
        }
    }

    /// Access-Control-Allow-Origin for `origin`, when it is allowed: `*` for any origin
    /// without credentials, else the origin itself.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            AllowList::Any if !self.credentials => Some(HeaderValue::from_static("*")),
            AllowList::Any => Some(origin.clone()),
            AllowList::Only(list) => {
                let text = origin.to_str().ok()?;
                list.iter().any(|p| p.matches(text)).then(|| origin.clone())
            }
        }
    }

    /// The 204 of an allowed preflight, or None (method or a header not allowed).
    fn preflight(&self, origin: HeaderValue, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let method = Method::from_bytes(requested.as_bytes()).ok()?;
        let methods_value = match &self.methods {
            AllowList::Only(list) if !list.contains(&method) => return None,
            AllowList::Only(_) => self.methods_value.clone()?,
            AllowList::Any => requested.clone(),
        };
        let mut asked = Vec::new();
        for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            for name in value.to_str().ok()?.split(',') {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                if let AllowList::Only(list) = &self.headers
                    && !list.contains(&name)
                {
                    return None;
                }
                if !asked.contains(&name) {
                    asked.push(name);
                }
            }
        }
        let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods_value);
        if !asked.is_empty() {
            let list = asked
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_str(&list).ok()?,
            );
        }
        if let Some(max_age) = &self.max_age_value {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        add_vary(h, &VARY_PREFLIGHT);
        Some(response)
    }

    /// Whether answers differ by Origin (anything but `*` without credentials): then every
    /// response of the route says `Vary: Origin`, allowed origin or not, so a shared cache
    /// never serves one origin's answer (with or without CORS headers) to another.
    pub fn varies_by_origin(&self) -> bool {
        !matches!(self.origins, AllowList::Any) || self.credentials
    }

    /// The response phase of a request without an allowed Origin.
    pub fn on_other_response(&self, headers: &mut HeaderMap) {
        if self.varies_by_origin() {
            add_vary(headers, &["Origin"]);
        }
    }

    /// The response phase of an allowed actual request (`origin`: what `Allow` carried).
    pub fn on_response(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        add_vary(headers, &["Origin"]);
    }
}

/// A preflight lb refuses: 403, no CORS headers (the browser blocks the real request).
fn refused() -> Response<ProxyBody> {
    let mut response = plain(StatusCode::FORBIDDEN, "CORS preflight refused\n");
    add_vary(response.headers_mut(), &VARY_PREFLIGHT);
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    allow_origins: Spanned<Vec<Spanned<String>>>,
    allow_methods: Option<Spanned<Vec<Spanned<String>>>>,
    allow_headers: Option<Spanned<Vec<Spanned<String>>>>,
    expose_headers: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    allow_credentials: bool,
    max_age: Option<Spanned<String>>,
}

type Err<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// `["*"]` (None) or the entries; empty lists and `*` among other entries are refused.
fn wildcard_or<'a>(
    list: &'a Spanned<Vec<Spanned<String>>>,
    key: &str,
    credentials: bool,
    err: Err<'_>,
) -> Result<Option<&'a [Spanned<String>]>, ConfigError> {
    let items = list.get_ref();
    if items.is_empty() {
        return Err(err(list.span(), format!("cors: {key} is empty")));
    }
    match items.iter().find(|i| i.get_ref() == "*") {
        None => Ok(Some(items)),
        Some(star) if items.len() > 1 => Err(err(
            star.span(),
            format!("cors: {key}: \"*\" allows anything, it takes no other entries"),
        )),
        Some(star) if credentials => Err(err(
            star.span(),
            format!(
                "cors: {key} = [\"*\"] with allow_credentials = true: browsers refuse a wildcard with credentials; list the values"
            ),
        )),
        Some(_) => Ok(None),
    }
}

fn header_names(
    items: &[Spanned<String>],
    key: &str,
    err: Err<'_>,
) -> Result<Vec<HeaderName>, ConfigError> {
    let mut names = Vec::new();
    for item in items {
        let name = HeaderName::from_bytes(item.get_ref().as_bytes()).map_err(|_| {
            err(
                item.span(),
                format!("cors: {key}: {:?} is not a header name", item.get_ref()),
            )
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

pub(crate) fn compile(raw: &Spanned<RawCors>, err: Err<'_>) -> Result<Cors, ConfigError> {
    let r = raw.get_ref();
    let credentials = r.allow_credentials;
    let origins = match wildcard_or(&r.allow_origins, "allow_origins", credentials, err)? {
        None => AllowList::Any,
        Some(items) => AllowList::Only(
            items
                .iter()
                .map(|o| {
                    parse_origin(o.get_ref())
                        .map_err(|e| err(o.span(), format!("cors: allow_origins: {e}")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let (methods, methods_value) = match &r.allow_methods {
        None => {
            let list = vec![Method::GET, Method::HEAD, Method::POST];
            (
                AllowList::Only(list),
                Some(HeaderValue::from_static("GET, HEAD, POST")),
            )
        }
        Some(raw) => match wildcard_or(raw, "allow_methods", credentials, err)? {
            None => (AllowList::Any, None),
            Some(items) => {
                let mut list = Vec::new();
                for item in items {
                    let text = item.get_ref();
                    let method = Method::from_bytes(text.as_bytes())
                        .ok()
                        .filter(|_| !text.is_empty())
                        .ok_or_else(|| {
                            err(
                                item.span(),
                                format!("cors: allow_methods: {text:?} is not a method"),
                            )
                        })?;
                    if !list.contains(&method) {
                        list.push(method);
                    }
                }
                let joined = list
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let value = HeaderValue::from_str(&joined)
                    .map_err(|_| err(raw.span(), "cors: allow_methods: bad value".to_owned()))?;
                (AllowList::Only(list), Some(value))
            }
        },
    };
    let headers = match &r.allow_headers {
        None => AllowList::Only(Vec::new()),
        Some(raw) => match wildcard_or(raw, "allow_headers", credentials, err)? {
            None => AllowList::Any,
            Some(items) => AllowList::Only(header_names(items, "allow_headers", err)?),
        },
    };
    let expose =
        match &r.expose_headers {
            None => None,
            Some(raw) => match wildcard_or(raw, "expose_headers", credentials, err)? {
                None => Some(HeaderValue::from_static("*")),
                Some(items) => {
                    let names = header_names(items, "expose_headers", err)?;
                    let joined = names
                        .iter()
                        .map(HeaderName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    Some(HeaderValue::from_str(&joined).map_err(|_| {
                        err(raw.span(), "cors: expose_headers: bad value".to_owned())
                    })?)
                }
            },
        };
    let max_age = r
        .max_age
        .as_ref()
        .map(|m| match humantime::parse_duration(m.get_ref()) {
            Ok(d) if d.subsec_nanos() != 0 => Err(err(
                m.span(),
                format!("cors: max_age {:?}: whole seconds only", m.get_ref()),
            )),
            Ok(d) => Ok(d),
            Err(e) => Err(err(
                m.span(),
                format!("cors: max_age {:?}: {e}", m.get_ref()),
            )),
        })
        .transpose()?;
    let max_age_value = max_age.map(|d| HeaderValue::from(d.as_secs()));
    Ok(Cors {
        origins,
        methods,
        headers,
        credentials,
        methods_value,
        expose,
        max_age,
        max_age_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cors(text: &str) -> Result<Cors, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            c: Spanned<RawCors>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.c, &err)
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let exact = parse_origin("https://App.Example.com").expect("valid");
        assert!(exact.matches("https://app.example.com"));
        assert!(exact.matches("HTTPS://APP.EXAMPLE.COM"));
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.test",
            "https://xapp.example.com",
            "null",
        ] {
            assert!(!exact.matches(no), "{no}");
        }
        let sub = parse_origin("https://*.example.com").expect("valid");
        for yes in [
            "https://a.example.com",
            "https://a.b.example.com",
            "https://A.EXAMPLE.COM",
        ] {
            assert!(sub.matches(yes), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.test",
            "https://aexample.com",
            "https://evil.test/.example.com",
            "https://a.example.com/x",
            "a.example.com",
        ] {
            assert!(!sub.matches(no), "{no}");
        }
        let port = parse_origin("http://*.local.test:8080").expect("valid");
        assert!(port.matches("http://a.local.test:8080"));
        assert!(!port.matches("http://a.local.test"));
        assert!(!port.matches("http://a.local.test:8081"));
        assert!(
            parse_origin("http://[::1]:3000")
                .expect("v6")
                .matches("http://[::1]:3000")
        );
    }

    #[test]
    fn bad_origins_are_refused() {
        for (text, want) in [
            ("app.example.com", "not an origin"),
            ("https://app.example.com/", "has a path"),
            ("https://app.example.com/x", "has a path"),
            ("https://", "bad host"),
            ("https://a..b", "bad host"),
            ("https://*.", "bad host"),
            ("https://a.*.com", "bad host"),
            ("https://a:0", "bad port"),
            ("https://a:99999", "bad port"),
            ("https://a:", "bad port"),
            ("1x://a", "bad scheme"),
            ("null", "not an origin"),
        ] {
            let e = parse_origin(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    fn request(method: Method, pairs: &[(&'static str, &'static str)]) -> (Method, HeaderMap) {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        (method, headers)
    }

    #[test]
    fn preflights_are_answered_with_the_allowed_parts() {
        let c = cors(
            "c = { allow_origins = [\"https://*.example.com\"], allow_methods = [\"GET\", \"PUT\"], \
             allow_headers = [\"Content-Type\", \"x-a\"], max_age = \"10m\" }",
        )
        .expect("valid");
        let (m, h) = request(
            Method::OPTIONS,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type, X-A"),
            ],
        );
        let Decision::Answer(r) = c.on_request(&m, &h) else {
            panic!("a preflight is answered");
        };
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-a");
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert_eq!(
            h["vary"],
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        );
        for pairs in [
            [
                ("origin", "https://evil.test"),
                ("access-control-request-method", "PUT"),
            ],
            [
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ],
        ] {
            let (m, h) = request(Method::OPTIONS, &pairs);
            let Decision::Answer(r) = c.on_request(&m, &h) else {
                panic!("refused preflights are answered too");
            };
            assert_eq!(r.status(), 403);
            assert!(r.headers().get("access-control-allow-origin").is_none());
        }
        // An OPTIONS without Access-Control-Request-Method is an actual request.
        let (m, h) = request(Method::OPTIONS, &[("origin", "https://a.example.com")]);
        assert!(matches!(c.on_request(&m, &h), Decision::Allow(_)));
        let (m, h) = request(Method::GET, &[]);
        assert!(matches!(c.on_request(&m, &h), Decision::None));
    }

    #[test]
    fn any_origin_is_a_star_only_without_credentials() {
        let (m, h) = request(Method::GET, &[("origin", "https://x.test")]);
        let star = cors("c = { allow_origins = [\"*\"] }").expect("valid");
        let Decision::Allow(v) = star.on_request(&m, &h) else {
            panic!("allowed");
        };
        assert_eq!(v, "*");
        let creds = cors(
            "c = { allow_origins = [\"https://x.test\"], allow_credentials = true, expose_headers = [\"x-id\"] }",
        )
        .expect("valid");
        let Decision::Allow(v) = creds.on_request(&m, &h) else {
            panic!("allowed");
        };
        let mut out = HeaderMap::new();
        out.insert("vary", HeaderValue::from_static("accept-encoding"));
        creds.on_response(&v, &mut out);
        assert_eq!(out["access-control-allow-origin"], "https://x.test");
        assert_eq!(out["access-control-allow-credentials"], "true");
        assert_eq!(out["access-control-expose-headers"], "x-id");
        assert_eq!(out["vary"], "accept-encoding, Origin");
        creds.on_response(&v, &mut out);
        assert_eq!(out.get_all("vary").iter().count(), 1);
        assert_eq!(out["vary"], "accept-encoding, Origin");
    }

    #[test]
    fn only_a_wildcard_without_credentials_does_not_vary_by_origin() {
        let cors = |origins: AllowList<OriginPattern>, credentials: bool| Cors {
            origins,
            methods: AllowList::Any,
            headers: AllowList::Any,
            credentials,
            methods_value: None,
            expose: None,
            max_age: None,
            max_age_value: None,
        };
        let exact = || AllowList::Only(vec![parse_origin("https://a.test").expect("origin")]);
        assert!(!cors(AllowList::Any, false).varies_by_origin());
        assert!(cors(AllowList::Any, true).varies_by_origin());
        assert!(cors(exact(), false).varies_by_origin());
        let mut headers = HeaderMap::new();
        cors(AllowList::Any, false).on_other_response(&mut headers);
        assert!(headers.get("vary").is_none());
        cors(exact(), false).on_other_response(&mut headers);
        assert_eq!(headers["vary"], "Origin");
    }

    #[test]
    fn vary_is_merged_once() {
        let mut h = HeaderMap::new();
        add_vary(&mut h, &["Origin"]);
        assert_eq!(h["vary"], "Origin");
        let mut h = HeaderMap::new();
        h.append("vary", HeaderValue::from_static("a"));
        h.append("vary", HeaderValue::from_static("origin, b"));
        add_vary(&mut h, &["Origin"]);
        assert_eq!(h.get_all("vary").iter().count(), 2, "already there");
        let mut h = HeaderMap::new();
        h.insert("vary", HeaderValue::from_static("*"));
        add_vary(&mut h, &["Origin"]);
        assert_eq!(h["vary"], "*");
    }

    #[test]
    fn contradictions_and_bad_values_are_refused_with_the_line() {
        for (text, want) in [
            (
                "[c]\nallow_credentials = true\nallow_origins = [\"*\"]\n",
                "wildcard with credentials",
            ),
            (
                "[c]\nallow_credentials = true\nallow_origins = [\"https://a.test\"]\nallow_headers = [\"*\"]\n",
                "allow_headers = [\"*\"] with allow_credentials",
            ),
            (
                "[c]\nallow_credentials = true\nallow_origins = [\"https://a.test\"]\nallow_methods = [\"*\"]\n",
                "allow_methods = [\"*\"] with allow_credentials",
            ),
            ("[c]\nallow_origins = []\n", "allow_origins is empty"),
            (
                "[c]\nallow_origins = [\"https://a.test\"]\nallow_methods = []\n",
                "allow_methods is empty",
            ),
            (
                "[c]\nallow_origins = [\"*\", \"https://a.test\"]\n",
                "takes no other entries",
            ),
            (
                "[c]\nallow_origins = [\"https://a.test/app\"]\n",
                "has a path",
            ),
            (
                "[c]\nallow_origins = [\"https://a.test\"]\nallow_headers = [\"bad name\"]\n",
                "not a header name",
            ),
            (
                "[c]\nallow_origins = [\"https://a.test\"]\nallow_methods = [\"GE T\"]\n",
                "not a method",
            ),
            (
                "[c]\nallow_origins = [\"https://a.test\"]\nmax_age = \"-1s\"\n",
                "max_age",
            ),
            (
                "[c]\nallow_origins = [\"https://a.test\"]\nmax_age = \"soon\"\n",
                "max_age",
            ),
        ] {
            let e = cors(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.line >= 2, "{text}: line {}", e.line);
        }
        let c = cors("[c]\nallow_origins = [\"https://a.test\"]\nmax_age = \"0s\"\n")
            .expect("0: no caching");
        assert_eq!(c.max_age, Some(Duration::ZERO));
    }
}
