//! Route lookup: which route (and so which pool) a request goes to. Routes are tried in file
//! order; the first whose listener, host, path, method and headers match wins. A route with a
//! weighted split then picks one of its pools. Everything was compiled at load; matching a
//! request allocates nothing.
use std::{borrow::Cow, sync::Mutex};

use hyper::{HeaderMap, Method, Request, header};

use super::config::{RouteConfig, route_rules::Rewrite};

/// The request's host name, without port, lowercased (Host header, or the authority of an
/// HTTP/2 URI). Borrowed from the request when it is already in that form (the usual
/// `name:port` or lowercase name), so most requests allocate nothing here.
pub fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let host = match req.headers().get(header::HOST) {
        Some(h) => {
            let text = h.to_str().ok()?;
            if let Some(host) = plain_host(text) {
                return Some(Cow::Borrowed(host));
            }
            let authority: hyper::http::uri::Authority = text.parse().ok()?;
            return Some(Cow::Owned(authority.host().to_ascii_lowercase()));
        }
        None => req.uri().authority()?.host(),
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The host of a Host value made only of lowercase letters, digits, dots and dashes, with at
/// most one `:` (before the port): a value `Authority` parses as it is, whose host is what
/// comes before the colon. Anything else (uppercase, IPv6, userinfo, ...) is None.
fn plain_host(text: &str) -> Option<&str> {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    let (host, port) = text.split_once(':').unwrap_or((text, ""));
    (!text.is_empty() && host.bytes().all(plain) && port.bytes().all(|b| b.is_ascii_digit()))
        .then_some(host)
}

/// `prefix` matches whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

/// A route and its run-time state (the weighted split's smooth round-robin counters).
struct Route {
    config: RouteConfig,
    /// One counter per split target (empty without a split).
    split_current: Mutex<Vec<i64>>,
}

impl Route {
    /// Cheapest checks first; nothing here allocates.
    fn matches(
        &self,
        listener: &str,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        let r = &self.config;
        r.listener == listener
            && (r.methods.is_empty() || r.methods.contains(method))
            && r.host
                .as_ref()
                .is_none_or(|m| host.is_some_and(|h| m.matches(h)))
            && match (&r.path_exact, &r.path_regex) {
                (Some(exact), _) => path == exact,
                (None, Some(re)) => re.is_match(path),
                (None, None) => path_matches(&r.path_prefix, path),
            }
            && r.headers.iter().all(|h| h.matches(headers))
    }

    /// The route's pool, or the next pool of its split by smooth weighted round robin (NGINX's
    /// algorithm: deterministic, and weights 95/5 give exactly 95 and 5 in every 100).
    fn pool(&self) -> &str {
        let split = &self.config.split;
        if split.is_empty() {
            return &self.config.pool;
        }
        // Nothing panics while the lock is held, so a poisoned lock's counters are still sound.
        let mut current = self
            .split_current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut total = 0i64;
        let mut best = 0;
        for (i, target) in split.iter().enumerate() {
            let weight = i64::from(target.weight);
            current[i] += weight;
            total += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        &split[best].pool
    }
}

/// Where a request goes: its route and the pool chosen for it.
pub struct Routed<'a> {
    /// The route's position in the configuration (its metrics label).
    pub index: usize,
    pub route: &'a RouteConfig,
    pub pool: &'a str,
}

pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        let routes = routes
            .into_iter()
            .map(|config| Route {
                split_current: Mutex::new(vec![0; config.split.len()]),
                config,
            })
            .collect();
        Self { routes }
    }

    /// The routes with their indices, in file order.
    pub fn configs(&self) -> impl Iterator<Item = (usize, &RouteConfig)> {
        self.routes.iter().map(|r| &r.config).enumerate()
    }

    /// The first route of `listener` (in file order) whose host, path, method and header
    /// conditions all hold for `req`, and the pool (of a split: the next by weight) it takes.
    pub fn route<B>(
        &self,
        listener: &str,
        req: &Request<B>,
        host: Option<&str>,
    ) -> Option<Routed<'_>> {
        let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
        let (index, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(listener, host, method, path, headers))?;
        Some(Routed {
            index,
            route: &route.config,
            pool: route.pool(),
        })
    }
}

/// The path sent upstream: the route's rewrite applied (`strip_prefix` is the rewrite of the
/// prefix to "/").
pub fn upstream_path(route: &RouteConfig, path: &str) -> String {
    match &route.rewrite {
        None => path.to_owned(),
        Some(Rewrite::Prefix(to)) => {
            let matched = route.path_exact.as_deref().unwrap_or(&route.path_prefix);
            // Segment matching leaves either nothing or "/..." after the prefix.
            let rest = path
                .strip_prefix(matched.trim_end_matches('/'))
                .unwrap_or(path);
            if rest.is_empty() {
                to.clone()
            } else if rest.starts_with('/') {
                format!("{}{rest}", to.trim_end_matches('/'))
            } else {
                format!("{}/{rest}", to.trim_end_matches('/'))
            }
        }
        Some(Rewrite::Regex(template)) => {
            let Some(re) = &route.path_regex else {
                return path.to_owned();
            };
            let out = re.replace(path, template.as_str());
            if out.starts_with('/') {
                out.into_owned()
            } else {
                format!("/{out}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_lowercase_without_port_borrowed_when_possible() {
        let with_host = |h: &'static str| {
            Request::builder()
                .header(header::HOST, h)
                .body(())
                .expect("request")
        };
        for (value, host, borrowed) in [
            ("a.example:8080", Some("a.example"), true),
            ("127.0.0.1:19203", Some("127.0.0.1"), true),
            ("a.example", Some("a.example"), true),
            (":80", Some(""), true),
            ("A.Example:80", Some("a.example"), false),
            ("[2001:DB8::1]:443", Some("[2001:db8::1]"), false),
            ("user@a.example", Some("a.example"), false),
            ("a:1:2", None, false),
            ("a b", None, false),
        ] {
            let req = with_host(value);
            let got = host_of(&req);
            assert_eq!(got.as_deref(), host, "{value}");
            assert_eq!(matches!(got, Some(Cow::Borrowed(_))), borrowed, "{value}");
        }
        let h2 = Request::builder()
            .uri("https://B.example:443/x")
            .body(())
            .expect("request");
        assert_eq!(host_of(&h2).as_deref(), Some("b.example"));
        let none = Request::builder().uri("/x").body(()).expect("request");
        assert_eq!(host_of(&none), None);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/api", "/api"));
        assert!(path_matches("/api", "/api/v1"));
        assert!(!path_matches("/api", "/apix"));
        assert!(path_matches("/api/", "/api/v1"));
    }

    fn routes(text: &str) -> Vec<RouteConfig> {
        let pools = "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"b\"\n\
                     [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";
        crate::l7::L7Config::parse(&format!("{pools}{text}"), std::path::Path::new("t.toml"))
            .expect("config")
            .routes
    }

    #[test]
    fn rewrites() {
        let cases = [
            (
                "path_prefix = \"/api\"\nrewrite_prefix = \"/v2\"",
                "/api/x?",
                "/v2/x?",
            ),
            (
                "path_prefix = \"/api\"\nrewrite_prefix = \"/v2\"",
                "/api",
                "/v2",
            ),
            (
                "path_prefix = \"/api/\"\nrewrite_prefix = \"/v2/\"",
                "/api/x",
                "/v2/x",
            ),
            (
                "path_prefix = \"/api\"\nstrip_prefix = true",
                "/api/x",
                "/x",
            ),
            ("path_prefix = \"/api\"\nstrip_prefix = true", "/api", "/"),
            ("rewrite_prefix = \"/v2\"", "/x", "/v2/x"),
            ("path = \"/old\"\nrewrite_prefix = \"/new\"", "/old", "/new"),
            (
                "path_regex = \"^/v([0-9]+)/\"\nrewrite_regex = \"/api/$1/\"",
                "/v3/u",
                "/api/3/u",
            ),
            (
                "path_regex = \"^/([a-z]+)/(.*)$\"\nrewrite_regex = \"$2/$1\"",
                "/a/b/c",
                "/b/c/a",
            ),
            ("path_prefix = \"/api\"", "/api/x", "/api/x"),
        ];
        for (keys, path, expected) in cases {
            let r = routes(&format!(
                "[[route]]\nlistener = \"l\"\npool = \"a\"\n{keys}\n"
            ));
            assert_eq!(upstream_path(&r[0], path), expected, "{keys} {path}");
        }
    }

    #[test]
    fn split_follows_weights_smoothly() {
        let router = Router::new(routes(
            "[[route]]\nlistener = \"l\"\n\
             split = [{ pool = \"a\", weight = 3 }, { pool = \"b\", weight = 1 }]\n",
        ));
        let req = Request::new(());
        let picks: Vec<&str> = (0..8)
            .map(|_| router.route("l", &req, None).expect("route").pool)
            .collect();
        assert_eq!(picks, ["a", "a", "b", "a", "a", "a", "b", "a"]);
    }

    #[test]
    fn methods_headers_and_paths_all_must_match() {
        let router = Router::new(routes(
            "[[route]]\nlistener = \"l\"\npool = \"b\"\npath = \"/x\"\nmethods = [\"POST\"]\n\
             [[route.header]]\nname = \"X-Canary\"\nvalue = \"1\"\n\
             [[route]]\nlistener = \"l\"\npool = \"a\"\n",
        ));
        let pool = |method: &str, path: &str, canary: Option<&str>| {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(v) = canary {
                req = req.header("x-canary", v);
            }
            let req = req.body(()).expect("request");
            router
                .route("l", &req, None)
                .expect("route")
                .pool
                .to_owned()
        };
        assert_eq!(pool("POST", "/x", Some("1")), "b");
        assert_eq!(pool("GET", "/x", Some("1")), "a");
        assert_eq!(pool("POST", "/x/", Some("1")), "a");
        assert_eq!(pool("POST", "/x", Some("2")), "a");
        assert_eq!(pool("POST", "/x", None), "a");
        assert!(router.route("other", &Request::new(()), None).is_none());
    }
}
