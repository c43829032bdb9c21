//! Route lookup: which route (and so which pool) a request goes to. Routes are tried in file
//! order; the first whose listener, host and path match wins.
use hyper::{Request, header};

use super::config::RouteConfig;

/// The request's host name, without port (Host header, or the authority of an HTTP/2 URI).
pub fn host_of<B>(req: &Request<B>) -> Option<String> {
    let authority: hyper::http::uri::Authority = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?.parse().ok()?,
        None => req.uri().authority()?.clone(),
    };
    Some(authority.host().to_ascii_lowercase())
}

/// `prefix` matches whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Self { routes }
    }

    /// The first route of `listener` matching this host and path.
    pub fn find(&self, listener: &str, host: Option<&str>, path: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| {
            r.listener == listener
                && r.host
                    .as_ref()
                    .is_none_or(|m| host.is_some_and(|h| m.matches(h)))
                && path_matches(&r.path_prefix, path)
        })
    }
}

/// The path sent upstream: the route's prefix removed when it says `strip_prefix`.
pub fn upstream_path(route: &RouteConfig, path: &str) -> String {
    if !route.strip_prefix || route.path_prefix == "/" {
        return path.to_owned();
    }
    let rest = path
        .strip_prefix(route.path_prefix.trim_end_matches('/'))
        .unwrap_or(path);
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/api", "/api"));
        assert!(path_matches("/api", "/api/v1"));
        assert!(!path_matches("/api", "/apix"));
        assert!(path_matches("/api/", "/api/v1"));
    }
}
