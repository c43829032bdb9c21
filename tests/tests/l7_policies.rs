//! Route policies end to end through the in-process L7 tier: `request_headers` (what the
//! backend saw), `response_headers` (on backend answers and on lb's own 502/504/respond/
//! redirect answers), `redirect` (Location built from the request), `respond`, and a route
//! `timeout` overriding its pool's `request_timeout`. Real sockets on 127.0.0.1; the backend
//! is a small hyper server started here that echoes the request headers it got.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_reach_the_backend_and_every_response_of_the_route() {
    let echo = echo_backend().await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[pool]]\nname = \"dead\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n\
         {LISTENER}\
         [[route]]\nname = \"edited\"\nlistener = \"l\"\npath_prefix = \"/edit\"\npool = \"web\"\n\
           [route.request_headers]\nremove = [\"x-secret\"]\n\
           set = {{ \"x-env\" = \"prod\", \"x-forwarded-proto\" = \"https\", \"host\" = \"backend.internal\" }}\n\
           add = {{ \"x-tag\" = [\"a\", \"b\"] }}\n\
           [route.response_headers]\nremove = [\"server\"]\n\
           set = {{ \"strict-transport-security\" = \"max-age=63072000\" }}\nadd = {{ \"x-served-by\" = \"lb\" }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/down\"\npool = \"dead\"\n\
           [route.response_headers]\nset = {{ \"x-always\" = \"1\" }}\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;

    let (status, headers, body) = exchange(
        addr,
        &get(
            "/edit/x",
            "site.test",
            "X-Secret: s3cret\r\nX-Tag: client\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: Vec<&str> = body.lines().collect();
    assert!(!body.contains("x-secret"), "removed: {body}");
    assert!(seen.contains(&"x-env: prod"), "{body}");
    assert!(seen.contains(&"host: backend.internal"), "{body}");
    assert!(
        seen.contains(&"x-forwarded-proto: https"),
        "overrides lb's own: {body}"
    );
    assert!(seen.contains(&"x-forwarded-host: site.test"), "{body}");
    let tags: Vec<&str> = seen
        .iter()
        .copied()
        .filter(|l| l.starts_with("x-tag:"))
        .collect();
    assert_eq!(tags, ["x-tag: client", "x-tag: a", "x-tag: b"], "appended");
    assert!(
        !headers.iter().any(|h| h.starts_with("server:")),
        "{headers:?}"
    );
    assert!(headers.contains(&"strict-transport-security: max-age=63072000".to_owned()));
    assert!(headers.contains(&"x-served-by: lb".to_owned()));

    // Another route: no edits either way.
    let (status, headers, body) =
        exchange(addr, &get("/other", "site.test", "X-Secret: s3cret\r\n")).await;
    assert_eq!(status, 200);
    assert!(body.contains("x-secret: s3cret"), "{body}");
    assert!(headers.contains(&"server: echo".to_owned()), "{headers:?}");
    assert!(!headers.iter().any(|h| h.starts_with("x-served-by")));

    // lb's own 502 carries the route's response headers too.
    let (status, headers, _) = exchange(addr, &get("/down", "site.test", "")).await;
    assert_eq!(status, 502);
    assert!(headers.contains(&"x-always: 1".to_owned()), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_answers() {
    let echo = echo_backend().await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{echo}\"\n{LISTENER}\
         [[route]]\nlistener = \"l\"\npath = \"/healthz\"\n\
           respond = {{ status = 200, body = \"ok\\n\" }}\n\
           response_headers = {{ set = {{ \"cache-control\" = \"no-store\" }} }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/maintenance\"\n\
           respond = {{ status = 503, body = \"{{\\\"down\\\":true}}\", content_type = \"application/json\" }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/moved\"\n\
           redirect = {{ status = 308, host = \"new.example\", path = \"/here\" }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"secure.test\"\nredirect = {{ scheme = \"https\" }}\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;

    let (status, headers, body) = exchange(addr, &get("/healthz", "site.test", "")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(headers.contains(&"content-type: text/plain; charset=utf-8".to_owned()));
    assert!(
        headers.contains(&"content-length: 3".to_owned()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"cache-control: no-store".to_owned()),
        "{headers:?}"
    );

    let (status, headers, body) = exchange(addr, &get("/maintenance/x", "site.test", "")).await;
    assert_eq!((status, body.as_str()), (503, "{\"down\":true}"));
    assert!(headers.contains(&"content-type: application/json".to_owned()));

    let (status, headers, body) = exchange(addr, &get("/moved/a?b=1", "site.test:8080", "")).await;
    assert_eq!((status, body.as_str()), (308, ""));
    assert!(
        headers.contains(&"location: http://new.example:8080/here?b=1".to_owned()),
        "{headers:?}"
    );

    // The classic http -> https: host, path and query kept, the http port dropped.
    let (status, headers, _) = exchange(addr, &get("/a/b?c=d&e=f", "secure.test:8080", "")).await;
    assert_eq!(status, 301);
    assert!(
        headers.contains(&"location: https://secure.test/a/b?c=d&e=f".to_owned()),
        "{headers:?}"
    );

    // HEAD of a direct answer: same head, no body.
    let (status, headers, body) = exchange(
        addr,
        "HEAD /healthz HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(
        headers.contains(&"content-length: 3".to_owned()),
        "{headers:?}"
    );

    // Everything else still goes to the backend.
    let (status, _, body) = exchange(addr, &get("/x", "site.test", "")).await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_pools_request_timeout() {
    let echo = echo_backend().await;
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"web\"\nrequest_timeout = \"1h\"\nretries = 0\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{echo}\"\n{LISTENER}\
         [[route]]\nlistener = \"l\"\npath = \"/hang\"\ntimeout = \"200ms\"\npool = \"web\"\n\
           response_headers = {{ set = {{ \"x-route\" = \"hang\" }} }}\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    ))
    .await;
    let (status, headers, body) = exchange(addr, &get("/hang", "site.test", "")).await;
    assert_eq!((status, body.as_str()), (504, "upstream timed out\n"));
    assert!(headers.contains(&"x-route: hang".to_owned()), "{headers:?}");
    assert_eq!(exchange(addr, &get("/fine", "site.test", "")).await.0, 200);
}

#[test]
fn policy_keys_are_checked_at_load() {
    let pool = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    for (route, reason) in [
        (
            "respond = { status = 200 }\npool = \"web\"\n",
            "l7.toml:11: pool on a route that answers itself (respond/redirect): remove it",
        ),
        (
            "respond = { status = 200 }\nredirect = { scheme = \"https\" }\n",
            "l7.toml:8: route has both respond and redirect: use one",
        ),
        (
            "pool = \"web\"\nrequest_headers = { set = { \"content-length\" = \"1\" } }\n",
            "l7.toml:11: request_headers: \"content-length\" cannot be edited (hop-by-hop or message framing)",
        ),
        (
            "pool = \"web\"\ntimeout = \"0s\"\n",
            "l7.toml:11: timeout must be above 0",
        ),
        (
            "redirect = { status = 200 }\n",
            "l7.toml:10: redirect: status 200 is not a redirect status (301, 302, 303, 307, 308)",
        ),
        (
            "name = \"a b\"\npool = \"web\"\n",
            "l7.toml:10: route name \"a b\": use letters, digits, '-', '_' and '.'",
        ),
        (
            "name = \"x\"\npool = \"web\"\n[[route]]\nlistener = \"l\"\nname = \"x\"\npool = \"web\"\n",
            "l7.toml:14: duplicate route name \"x\"",
        ),
        (
            "pool = \"web\"\nrequest_headers = { sett = {} }\n",
            "l7.toml:11: unknown field `sett`, expected one of `set`, `add`, `remove`",
        ),
    ] {
        let text = format!("{pool}{LISTENER}[[route]]\nlistener = \"l\"\n{route}");
        let err = L7Config::parse(&text, Path::new("l7.toml")).expect_err(route);
        assert_eq!(err.to_string(), reason, "{route}");
    }
    let stream = format!(
        "{pool}[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[route]]\nlistener = \"t\"\npool = \"web\"\ntimeout = \"1s\"\n"
    );
    let err = L7Config::parse(&stream, Path::new("l7.toml")).expect_err("tcp route timeout");
    assert!(
        err.to_string().contains("timeout applies to http routes"),
        "{err}"
    );
}

/// `error_pages` on a listener and a route: lb's own 502 gets the listener's page (with its
/// Content-Type), a route's page wins over it, a backend's own error (a 500 the listener has a
/// page for) passes untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_replace_lb_answers_only() {
    let failing = lb_tests::http_server::start(lb_tests::http_server::Behaviour {
        fail_every: 1,
        ..Default::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("lb-error-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (listener_page, route_page) = (dir.join("502.html"), dir.join("route.json"));
    std::fs::write(&listener_page, "<h1>down for a moment</h1>").expect("page");
    std::fs::write(&route_page, "{\"error\":\"upstream\"}").expect("page");
    let (_proxy, addr) = start(&format!(
        "[[pool]]\nname = \"failing\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"{}\"\n\
         [[pool]]\nname = \"dead\"\nretries = 0\nmax_fails = 0\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n\
         {LISTENER}error_pages = {{ 502 = \"{page}\", 500 = \"{page}\" }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/api\"\npool = \"dead\"\n\
           error_pages = {{ 502 = \"{}\" }}\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/down\"\npool = \"dead\"\n\
         [[route]]\nlistener = \"l\"\npool = \"failing\"\n",
        failing.addr,
        route_page.display(),
        page = listener_page.display(),
    ))
    .await;
    let (status, headers, body) = exchange(addr, &get("/down", "site.test", "")).await;
    assert_eq!((status, body.as_str()), (502, "<h1>down for a moment</h1>"));
    assert!(
        headers.contains(&"content-type: text/html; charset=utf-8".to_owned()),
        "{headers:?}"
    );
    let (status, headers, body) = exchange(addr, &get("/api/x", "site.test", "")).await;
    assert_eq!((status, body.as_str()), (502, "{\"error\":\"upstream\"}"));
    assert!(
        headers.contains(&"content-type: application/json".to_owned()),
        "{headers:?}"
    );
    let (status, _, body) = exchange(addr, &get("/", "site.test", "")).await;
    assert_eq!(status, 500);
    assert!(
        !body.contains("down for a moment"),
        "the backend's own answer: {body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
