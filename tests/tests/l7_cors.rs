//! The route `cors` policy end to end through the in-process L7 tier: preflights answered by
//! lb (allowed: 204 with exactly the CORS headers; a disallowed origin, method or header:
//! 403 without them), actual requests' responses (the backend's, lb's own 502 and 429)
//! carrying Access-Control-Allow-Origin / -Expose-Headers / -Allow-Credentials and `Vary:
//! Origin` merged with the backend's own Vary, requests without Origin untouched, and the
//! settings checked at load with their lines. Real sockets on 127.0.0.1.
use std::{net::SocketAddr, path::Path};

use lb::l7::{self, L7Config};
use lb_tests::echo_backend::{echo_backend, exchange, get};

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let config = L7Config::parse(text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

const LISTENER: &str = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";

fn preflight(path: &str, origin: &str, method: &str, headers: Option<&str>) -> String {
    let asked = headers.map_or(String::new(), |h| {
        format!("Access-Control-Request-Headers: {h}\r\n")
    });
    format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: {method}\r\n{asked}\r\n"
    )
}

/// The response's CORS-related head lines (lower-cased), sorted.
fn cors_lines(headers: &[String]) -> Vec<&str> {
    let mut lines: Vec<&str> = headers
        .iter()
        .map(String::as_str)
        .filter(|h| h.starts_with("access-control-") || h.starts_with("vary:"))
        .collect();
    lines.sort_unstable();
    lines
}

fn config(echo: SocketAddr) -> String {
    format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[pool]]\nname = \"dead\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n\
         {LISTENER}\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/api\"\npool = \"web\"\n\
           [route.cors]\nallow_origins = [\"https://app.example.com\", \"https://*.example.com\"]\n\
           allow_methods = [\"GET\", \"POST\", \"PUT\"]\nallow_headers = [\"content-type\", \"authorization\"]\n\
           expose_headers = [\"x-request-id\"]\nmax_age = \"10m\"\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/creds\"\npool = \"web\"\n\
           cors = {{ allow_origins = [\"https://app.example.com\"], allow_credentials = true }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/any\"\npool = \"web\"\n\
           cors = {{ allow_origins = [\"*\"] }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/down\"\npool = \"dead\"\n\
           cors = {{ allow_origins = [\"https://app.example.com\"] }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/limited\"\npool = \"web\"\n\
           cors = {{ allow_origins = [\"https://app.example.com\"] }}\n\
           [[route.rate_limit]]\nkey = \"route\"\nrate = \"1/h\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_by_lb() {
    let echo = echo_backend().await;
    let (_proxy, addr) = start(&config(echo)).await;
    let vary = "vary: origin, access-control-request-method, access-control-request-headers";

    // Exact origin, a method and headers allowed: 204 with exactly these headers.
    for origin in ["https://app.example.com", "https://a.b.example.com"] {
        let (status, headers, body) = exchange(
            addr,
            &preflight("/api/x", origin, "PUT", Some("Content-Type,Authorization")),
        )
        .await;
        assert_eq!((status, body.as_str()), (204, ""), "{origin}");
        let allow = format!("access-control-allow-origin: {origin}");
        assert_eq!(
            cors_lines(&headers),
            [
                "access-control-allow-headers: content-type, authorization",
                "access-control-allow-methods: get, post, put",
                allow.as_str(),
                "access-control-max-age: 600",
                vary,
            ],
            "{origin}"
        );
    }
    // No headers asked: no Allow-Headers.
    let (status, headers, _) = exchange(
        addr,
        &preflight("/api", "https://app.example.com", "GET", None),
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        !headers
            .iter()
            .any(|h| h.starts_with("access-control-allow-headers")),
        "{headers:?}"
    );

    // Refused: 403 and no CORS headers (the browser blocks), only Vary.
    for request in [
        preflight("/api", "https://evil.test", "GET", None),
        preflight("/api", "https://example.com", "GET", None),
        preflight("/api", "http://app.example.com", "GET", None),
        preflight("/api", "https://app.example.com", "DELETE", None),
        preflight("/api", "https://app.example.com", "GET", Some("x-custom")),
        preflight(
            "/api",
            "https://app.example.com",
            "GET",
            Some("content-type, x-custom"),
        ),
    ] {
        let (status, headers, _) = exchange(addr, &request).await;
        assert_eq!(status, 403, "{request}");
        assert_eq!(cors_lines(&headers), [vary], "{request}");
    }

    // Credentials: the origin echoed (never `*`) and Allow-Credentials; default methods.
    let (status, headers, _) = exchange(
        addr,
        &preflight("/creds", "https://app.example.com", "POST", None),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        cors_lines(&headers),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-methods: get, head, post",
            "access-control-allow-origin: https://app.example.com",
            vary,
        ]
    );
    // Any origin without credentials: `*`.
    let (status, headers, _) =
        exchange(addr, &preflight("/any", "https://who.ever", "GET", None)).await;
    assert_eq!(status, 204);
    assert!(headers.contains(&"access-control-allow-origin: *".to_owned()));

    // A route without cors: the preflight goes to the backend like any request.
    let (status, headers, body) = exchange(
        addr,
        &preflight("/other", "https://app.example.com", "GET", None),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("access-control-request-method: GET"),
        "{body}"
    );
    assert!(cors_lines(&headers).is_empty(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_responses_get_cors_headers() {
    let echo = echo_backend().await;
    let (_proxy, addr) = start(&config(echo)).await;

    // The backend's response, with its own Vary: merged into one line.
    let (status, headers, body) = exchange(
        addr,
        &get(
            "/api/x",
            "site.test",
            "Origin: https://app.example.com\r\nX-Reply-Vary: Accept-Encoding\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("origin: https://app.example.com"), "{body}");
    assert_eq!(
        cors_lines(&headers),
        [
            "access-control-allow-origin: https://app.example.com",
            "access-control-expose-headers: x-request-id",
            "vary: accept-encoding, origin",
        ]
    );
    // A backend that already varies on Origin: not added twice.
    let (_, headers, _) = exchange(
        addr,
        &get(
            "/api/x",
            "site.test",
            "Origin: https://app.example.com\r\nX-Reply-Vary: origin\r\n",
        ),
    )
    .await;
    assert_eq!(
        headers.iter().filter(|h| h.starts_with("vary:")).count(),
        1,
        "{headers:?}"
    );

    // No Origin, or one not allowed: no CORS headers, but `Vary: Origin` (the answer differs
    // by origin, so a shared cache must keep the variants apart).
    for extra in ["", "Origin: https://evil.test\r\n"] {
        let (status, headers, _) = exchange(addr, &get("/api/x", "site.test", extra)).await;
        assert_eq!(status, 200);
        assert_eq!(
            cors_lines(&headers),
            ["vary: origin"],
            "{extra}: {headers:?}"
        );
    }

    // Credentials: the origin echoed, never `*`.
    let (_, headers, _) = exchange(
        addr,
        &get("/creds", "site.test", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert_eq!(
        cors_lines(&headers),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-origin: https://app.example.com",
            "vary: origin",
        ]
    );

    // lb's own answers on the route get them too: 502, and a 429 (the limit counts actual
    // requests only: preflights are answered before it).
    let (status, headers, _) = exchange(
        addr,
        &get("/down", "site.test", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        headers.contains(&"access-control-allow-origin: https://app.example.com".to_owned()),
        "{headers:?}"
    );
    let limited = get(
        "/limited",
        "site.test",
        "Origin: https://app.example.com\r\n",
    );
    assert_eq!(exchange(addr, &limited).await.0, 200);
    let (status, headers, _) = exchange(addr, &limited).await;
    assert_eq!(status, 429);
    assert!(
        headers.contains(&"access-control-allow-origin: https://app.example.com".to_owned()),
        "{headers:?}"
    );
    let (status, _, _) = exchange(
        addr,
        &preflight("/limited", "https://app.example.com", "GET", None),
    )
    .await;
    assert_eq!(status, 204, "a preflight is answered before the rate limit");
}

#[test]
fn cors_settings_are_checked_at_load() {
    let pool = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    for (cors, reason) in [
        (
            "allow_origins = [\"*\"]\nallow_credentials = true\n",
            "l7.toml:12: cors: allow_origins = [\"*\"] with allow_credentials = true: browsers refuse a wildcard with credentials; list the values",
        ),
        (
            "allow_origins = [\"https://a.test\"]\nallow_credentials = true\nallow_headers = [\"*\"]\n",
            "l7.toml:14: cors: allow_headers = [\"*\"] with allow_credentials = true: browsers refuse a wildcard with credentials; list the values",
        ),
        (
            "allow_origins = []\n",
            "l7.toml:12: cors: allow_origins is empty",
        ),
        (
            "allow_origins = [\"https://a.test/app\"]\n",
            "l7.toml:12: cors: allow_origins: \"https://a.test/app\" has a path: an origin is scheme://host[:port] only",
        ),
        (
            "allow_origins = [\"https://a.test\"]\nallow_methods = [\"G T\"]\n",
            "l7.toml:13: cors: allow_methods: \"G T\" is not a method",
        ),
        (
            "allow_origins = [\"https://a.test\"]\nexpose_headers = [\"x y\"]\n",
            "l7.toml:13: cors: expose_headers: \"x y\" is not a header name",
        ),
        (
            "allow_origins = [\"https://a.test\"]\nmax_age = \"-5m\"\n",
            "l7.toml:13: cors: max_age \"-5m\": expected number at 0",
        ),
        (
            "allow_origins = [\"https://a.test\"]\nallow_origin = [\"x\"]\n",
            "l7.toml:13: unknown field `allow_origin`, expected one of `allow_origins`, `allow_methods`, `allow_headers`, `expose_headers`, `allow_credentials`, `max_age`",
        ),
    ] {
        let text = format!(
            "{pool}{LISTENER}[[route]]\nlistener = \"l\"\npool = \"web\"\n[route.cors]\n{cors}"
        );
        let err = L7Config::parse(&text, Path::new("l7.toml")).expect_err(cors);
        assert_eq!(err.to_string(), reason, "{cors}");
    }
    let ok = format!(
        "{pool}{LISTENER}[[route]]\nlistener = \"l\"\npool = \"web\"\n\
         cors = {{ allow_origins = [\"https://a.test\"], max_age = \"0s\" }}\n"
    );
    L7Config::parse(&ok, Path::new("l7.toml")).expect("max_age 0: no caching");
}
