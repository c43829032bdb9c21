//! `redirect`: the route answers with a redirect instead of proxying (NGINX's `return 301`,
//! Envoy's `redirect` action).
//!
//! ```toml
//! [route.redirect]
//! status = 301          # 301 (default) | 302 | 303 | 307 | 308
//! scheme = "https"      # default: the request's
//! host = "example.com"  # default: the request's host
//! port = 8443           # default: the request's port when the scheme is kept, else none
//! path = "/new"         # default: the request's path
//! ```
//!
//! The query is always kept. The classic http -> https is `redirect = { scheme = "https" }`.
use std::{borrow::Cow, ops::Range};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use crate::{config::ConfigError, l7::pool::ProxyBody};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    status: StatusCode,
    scheme: Option<&'static str>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

/// What of the request a redirect keeps.
pub struct Target<'a> {
    pub scheme: &'static str,
    /// The request's host, without port, lowercase (None: the request named none).
    pub host: Option<Cow<'a, str>>,
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// What `req` (received over `scheme`) asked for.
    pub fn of<B>(req: &'a hyper::Request<B>, scheme: &'static str) -> Self {
        Self {
            scheme,
            host: crate::l7::routing::host_of(req),
            port: request_port(req),
            path: req.uri().path(),
            query: req.uri().query(),
        }
    }
}

/// The port the client addressed (Host header, or an HTTP/2 authority), if it named one.
fn request_port<B>(req: &hyper::Request<B>) -> Option<u16> {
    match req.headers().get(header::HOST) {
        Some(h) => h
            .to_str()
            .ok()?
            .parse::<hyper::http::uri::Authority>()
            .ok()?
            .port_u16(),
        None => req.uri().port_u16(),
    }
}

impl Redirect {
    pub fn answer(&self, request: &Target<'_>, local: std::net::SocketAddr) -> Response<ProxyBody> {
        let scheme = self.scheme.unwrap_or(request.scheme);
        let local_host;
        let host = match (&self.host, request.host.as_deref()) {
            (Some(h), _) => h.as_str(),
            (None, Some(h)) => h,
            (None, None) => {
                local_host = match local.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                };
                &local_host
            }
        };
        // A port carries over only with the scheme: http://a:8080 -> https://a, not :8080.
        let port = self
            .port
            .or(request.port.filter(|_| scheme == request.scheme))
            .filter(|&p| p != default_port(scheme));
        let path = self.path.as_deref().unwrap_or(request.path);
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(path);
        if let Some(q) = request.query {
            location.push('?');
            location.push_str(q);
        }
        let mut response = Response::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.status;
        // Everything in it came from a valid request or a checked config, but a host given
        // by the client is only checked loosely: an invalid value answers without Location
        // rather than panicking.
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        response
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    status: Option<u16>,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

pub(crate) fn compile(
    raw: &Spanned<RawRedirect>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Redirect, ConfigError> {
    let fail = |message: String| err(raw.span(), format!("redirect: {message}"));
    let r = raw.get_ref();
    let status = match r.status.unwrap_or(301) {
        s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s)
            .map_err(|_| fail(format!("status {s} is not a redirect status")))?,
        s => {
            return Err(fail(format!(
                "status {s} is not a redirect status (301, 302, 303, 307, 308)"
            )));
        }
    };
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => return Err(fail(format!("scheme {other:?}: expected http or https"))),
    };
    if let Some(host) = &r.host {
        let valid = !host.is_empty()
            && host
                .parse::<hyper::http::uri::Authority>()
                .is_ok_and(|a| a.port().is_none() && a.host() == host.as_str());
        if !valid {
            return Err(fail(format!(
                "host {host:?} is not a host name (give a port with port =)"
            )));
        }
    }
    if r.port == Some(0) {
        return Err(fail("port 0".to_owned()));
    }
    if let Some(path) = &r.path {
        let valid = path.starts_with('/')
            && !path.contains(['?', '#'])
            && path.parse::<hyper::http::uri::PathAndQuery>().is_ok();
        if !valid {
            return Err(fail(format!(
                "path {path:?} must start with / and hold no query or fragment"
            )));
        }
    }
    Ok(Redirect {
        status,
        scheme,
        host: r.host.clone(),
        port: r.port,
        path: r.path.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn redirect(text: &str) -> Result<Redirect, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            r: Spanned<RawRedirect>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let err = |span: Range<usize>, m: String| ConfigError::at(Path::new("t"), text, span, m);
        compile(&doc.r, &err)
    }

    fn location(r: &Redirect, target: &Target<'_>) -> (u16, String) {
        let local = "10.0.0.1:80".parse().expect("addr");
        let response = r.answer(target, local);
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (response.status().as_u16(), location)
    }

    const REQUEST: Target<'static> = Target {
        scheme: "http",
        host: Some(Cow::Borrowed("example.com")),
        port: Some(8080),
        path: "/a/b",
        query: Some("x=1&y=2"),
    };

    #[test]
    fn http_to_https_keeps_host_path_and_query_and_drops_the_port() {
        let r = redirect("r = { scheme = \"https\" }").expect("valid");
        assert_eq!(
            location(&r, &REQUEST),
            (301, "https://example.com/a/b?x=1&y=2".to_owned())
        );
    }

    #[test]
    fn every_part_can_be_replaced() {
        let r = redirect(
            "r = { status = 308, scheme = \"https\", host = \"b.example\", port = 8443, path = \"/new\" }",
        )
        .expect("valid");
        assert_eq!(
            location(&r, &REQUEST),
            (308, "https://b.example:8443/new?x=1&y=2".to_owned())
        );
        let r = redirect("r = { status = 302, path = \"/moved\" }").expect("valid");
        assert_eq!(
            location(&r, &REQUEST),
            (302, "http://example.com:8080/moved?x=1&y=2".to_owned())
        );
        let no_host = Target {
            host: None,
            port: None,
            query: None,
            ..REQUEST
        };
        assert_eq!(
            location(&r, &no_host),
            (302, "http://10.0.0.1/moved".to_owned())
        );
        let r = redirect("r = { port = 80 }").expect("valid");
        assert_eq!(
            location(&r, &REQUEST),
            (301, "http://example.com/a/b?x=1&y=2".to_owned())
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for (text, reason) in [
            ("r = { status = 200 }", "not a redirect status"),
            ("r = { scheme = \"ftp\" }", "expected http or https"),
            ("r = { host = \"a.example:80\" }", "is not a host name"),
            ("r = { host = \"\" }", "is not a host name"),
            ("r = { path = \"new\" }", "must start with /"),
            ("r = { path = \"/a?b\" }", "must start with /"),
            ("r = { port = 0 }", "port 0"),
        ] {
            let e = redirect(text).expect_err(text);
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }
}
