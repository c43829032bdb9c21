//! The backend-file format: every shipped example passes `lb check-config`; `full.toml`
//! (which uses every key the parser accepts) parses to exactly the values it writes, so a key
//! silently ignored fails here; and bad files each give their exact `FILE:LINE: reason` and a
//! non-zero exit.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use lb::{
    config::{
        Config,
        discovery::{DiscoveryConfig, DiscoverySource},
    },
    health::CheckKind,
    l4::{Forward, Protocol},
    l7::{
        Algorithm, HashKey, HeaderRule, HostMatch, ListenerMode, Rewrite, SplitTarget,
        egress::policy::{Action, EgressMode, PathMatch},
        proxy_header::ProxyVersion,
        upstream::{AdaptiveSettings, BreakerSettings, OutlierSettings, UpstreamProtocol},
    },
};
use lb_tests::lb_bin;
use rustls::pki_types::pem::PemObject as _;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn every_shipped_example_passes_check_config() {
    let dir = examples_dir();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // Run from the examples directory: full.toml's certificate paths are relative.
        let out = Command::new(lb_bin())
            .current_dir(&dir)
            .args(["check-config", &name])
            .output()
            .expect("run lb check-config");
        assert!(out.status.success(), "{name}: {out:?}");
        checked.push((name, String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            (
                "full.toml".to_owned(),
                "full.toml: ok: 2 vips, 5 listeners, 13 routes, 7 pools, 11 backends\n".to_owned()
            ),
            (
                "minimal.toml".to_owned(),
                "minimal.toml: ok: 0 vips, 0 listeners, 0 routes, 1 pools, 2 backends\n".to_owned()
            ),
        ]
    );
}

/// full.toml with its relative certificate and consumers-file paths made absolute (same
/// lines), parsed.
fn full_example() -> Config {
    let dir = examples_dir();
    let path = dir.join("full.toml");
    let text = std::fs::read_to_string(&path).expect("read full.toml");
    let certs = format!("\"{}/certs/", dir.display());
    let keys = format!("\"{}/keys/", dir.display());
    let errors = format!("\"{}/errors/", dir.display());
    let text = text
        .replace("\"certs/", &certs)
        .replace("\"keys/", &keys)
        .replace("\"errors/", &errors);
    Config::parse(&text, &path).expect("full.toml parses")
}

#[test]
fn full_example_parses_to_the_values_it_writes() {
    let c = full_example();

    // [encap], [[vip]], [[vip.real]]
    assert_eq!(c.l4.encap.src_v4, [172, 16, 0, 0]);
    assert_eq!(
        c.l4.encap.src_v6,
        "fd00::1:0:0"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets()
    );
    // [l4]
    fn nets(list: &[impl ToString]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }
    assert_eq!(c.l4.guard.flood_guard_new_flows_per_cpu, Some(50000));
    assert_eq!(c.l4.guard.source_new_flows, Some((200, 400)));
    assert_eq!(
        nets(&c.l4.guard.lists.deny),
        ["192.0.2.0/24", "2001:db8:bad::/48"]
    );
    assert!(c.l4.guard.lists.allow.is_empty());
    assert_eq!(
        c.l4.guard.previous_ring_window,
        std::time::Duration::from_secs(600)
    );
    let [web_vip, dns_vip] = c.l4.vips.as_slice() else {
        panic!("two vips: {:?}", c.l4.vips)
    };
    assert_eq!(
        web_vip.addr,
        "10.100.0.1:80".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        (web_vip.protocol, web_vip.forward, web_vip.ring_size),
        (Protocol::Tcp, Forward::Local, 65537)
    );
    assert_eq!(web_vip.pool.as_deref(), Some("web"));
    let reals: Vec<_> = web_vip
        .reals
        .iter()
        .map(|r| (r.addr.to_string(), r.weight))
        .collect();
    assert_eq!(
        reals,
        [("10.0.0.1".into(), 3), ("10.0.0.2".into(), 1)],
        "primary backends only"
    );
    assert_eq!(
        (
            dns_vip.protocol,
            dns_vip.forward,
            dns_vip.ring_size,
            dns_vip.pool.as_deref()
        ),
        (Protocol::Udp, Forward::Encap, 251, None)
    );
    assert_eq!(nets(&dns_vip.lists.deny), ["198.51.100.7/32"]);
    assert_eq!(
        nets(&dns_vip.lists.allow),
        ["10.0.0.0/8", "198.51.100.0/24", "fd00::/8"]
    );
    assert_eq!(web_vip.lists, Default::default());
    let reals: Vec<_> = dns_vip
        .reals
        .iter()
        .map(|r| (r.addr.to_string(), r.weight, r.down))
        .collect();
    assert_eq!(
        reals,
        [
            ("10.201.1.2".into(), 2, false),
            ("fd00:201::3".into(), 1, true)
        ]
    );

    // [[pool]] web: every pool key with a value other than its default, health check, backends.
    let pool = |name: &str| c.l7.pool(name).unwrap_or_else(|| panic!("pool {name}"));
    let web = pool("web");
    assert_eq!(web.algorithm, Algorithm::RoundRobin);
    assert_eq!(
        (web.connect_timeout, web.request_timeout),
        (secs(2), secs(30))
    );
    assert_eq!(web.retries, 2);
    assert_eq!((web.retry_budget_percent, web.retry_budget_min), (25, 5));
    assert_eq!((web.max_fails, web.fail_timeout), (3, secs(10)));
    assert_eq!((web.idle_per_backend, web.idle_timeout), (128, secs(90)));
    assert_eq!(web.protocol, UpstreamProtocol::Http1);
    assert!(web.tls.is_none() && web.proxy_protocol.is_none());
    let check = web.health_check.as_ref().expect("health_check");
    assert_eq!(
        check.kind,
        CheckKind::Http {
            tls: false,
            path: "/healthz".into(),
            host: Some("web.internal".into()),
            expect_status: (200, 299),
            expect_body: Some("ok".into()),
        }
    );
    assert_eq!(
        (
            check.interval,
            check.timeout,
            check.rise,
            check.fall,
            check.slow_start
        ),
        (secs(2), secs(1), 2, 3, secs(30))
    );
    let backends: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.weight, b.backup))
        .collect();
    assert_eq!(
        backends,
        [
            ("10.0.0.1:8080".into(), 3, false),
            ("10.0.0.2:8080".into(), 1, false),
            ("10.0.0.9:8080".into(), 1, true)
        ]
    );
    assert_eq!(web.backend_max_connections, [Some(200), None, None]);
    assert_eq!(
        web.breaker,
        Some(BreakerSettings {
            max_connections: Some(512),
            max_pending_requests: Some(64),
            max_requests: Some(1024),
            max_retries: Some(8),
        })
    );
    assert_eq!(
        web.adaptive,
        Some(AdaptiveSettings {
            min_limit: 5,
            max_limit: 500,
            window: Duration::from_millis(200),
        })
    );
    assert_eq!(web.outlier, None);

    let api = pool("api");
    assert_eq!(api.algorithm, Algorithm::ConsistentHash);
    assert_eq!(
        api.hash_key,
        HashKey::Header("x-user-id".parse().expect("name"))
    );
    assert_eq!(api.proxy_protocol, Some(ProxyVersion::V2));
    assert_eq!(
        (pool("stable").algorithm, pool("stable").protocol),
        (Algorithm::LeastConn, UpstreamProtocol::H2c)
    );
    assert_eq!(
        pool("stable").outlier,
        Some(OutlierSettings {
            consecutive_5xx: 7,
            consecutive_gateway_errors: 3,
            base_ejection_time: secs(10),
            max_ejection_time: secs(120),
            max_ejected_percent: 50,
        })
    );
    assert_eq!(
        pool("stable").max_fails,
        0,
        "outlier_detection replaces passive ejection"
    );
    assert_eq!(
        (pool("stable").breaker, pool("stable").adaptive),
        (None, None)
    );
    assert_eq!(pool("canary").algorithm, Algorithm::P2c);
    assert_eq!(
        pool("api").discovery,
        Some(DiscoveryConfig {
            source: DiscoverySource::Dns {
                name: "api.example.internal".into(),
                port: 9000
            },
            resolver: None,
            refresh: secs(30),
            weight: 2,
        })
    );
    assert_eq!(
        pool("canary").discovery,
        Some(DiscoveryConfig {
            source: DiscoverySource::DnsSrv {
                name: "_http._tcp.canary.example.internal".into()
            },
            resolver: Some("10.0.0.2:53".parse().expect("addr")),
            refresh: secs(10),
            weight: 1,
        })
    );
    assert_eq!(
        pool("stable").discovery.as_ref().map(|d| &d.source),
        Some(&DiscoverySource::Etcd {
            endpoints: vec![
                hyper::Uri::from_static("http://10.0.0.5:2379"),
                hyper::Uri::from_static("http://10.0.0.6:2379")
            ],
            prefix: "/lb/stable/".into()
        })
    );
    assert_eq!(pool("web").discovery, None);
    let secure = pool("secure");
    let secure_tls = secure.tls.as_ref().expect("tls = true");
    assert_eq!(
        secure_tls
            .server_name
            .as_ref()
            .map(|n| n.to_str().into_owned()),
        Some("api.example.com".into())
    );
    let client_cert = secure_tls
        .settings
        .client_cert
        .as_ref()
        .expect("client cert");
    assert!(
        client_cert.0.ends_with("certs/example.pem"),
        "{client_cert:?}"
    );
    assert!(
        client_cert.1.ends_with("certs/example.key"),
        "{client_cert:?}"
    );
    let grpc = pool("grpc");
    assert_eq!(grpc.protocol, UpstreamProtocol::H2);
    assert!(
        grpc.tls.as_ref().is_some_and(|t| t.server_name.is_none()),
        "h2 implies tls"
    );
    assert_eq!(pool("dns").hash_key, HashKey::ClientIp);

    // [[listener]]
    let listener = |name: &str| {
        c.l7.listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("listener {name}"))
    };
    let public = listener("public");
    assert_eq!(
        public.addr,
        "0.0.0.0:8443".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(public.mode, ListenerMode::Http);
    assert_eq!(public.tls.len(), 1);
    assert!(public.tls[0].cert.ends_with("certs/example.pem"));
    assert!(public.tls[0].key.ends_with("certs/example.key"));
    assert_eq!(public.tls[0].server_names, ["example.com", "*.example.com"]);
    assert!(
        public.tls[0]
            .ocsp
            .as_ref()
            .is_some_and(|p| p.ends_with("certs/example.ocsp.der"))
    );
    let pages = public.error_pages.as_ref().expect("error_pages");
    for status in [502, 504] {
        let page = pages.get(status).expect("a page");
        assert!(page.path.ends_with("errors/502.html"));
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(page.body.starts_with(b"<!doctype html>"));
    }
    assert!(pages.get(503).is_none());
    assert_eq!(
        public.proxy_protocol_from,
        ["10.10.0.0/16".parse().expect("net")]
    );
    assert_eq!(public.proxy_protocol_timeout, secs(5));
    assert_eq!(
        (public.max_header_bytes, public.max_body_bytes),
        (65536, 10 << 20)
    );
    assert_eq!(
        (public.header_timeout, public.body_timeout),
        (secs(10), secs(30))
    );
    assert_eq!(
        public.trusted_proxies,
        [
            "10.20.0.0/16".parse().expect("net"),
            "192.0.2.7/32".parse().expect("net")
        ]
    );
    assert_eq!(public.max_connections, 10000);
    let client_auth = public.client_auth.as_ref().expect("client_ca");
    assert!(client_auth.ca_file.ends_with("certs/example-ca.pem"));
    assert!(!client_auth.required, "client_auth = \"optional\"");
    assert!(listener("internal").client_auth.is_none());
    assert_eq!(public.max_connections_per_client, Some(100));
    assert_eq!(listener("internal").mode, ListenerMode::Http);
    assert!(listener("internal").tls.is_empty());
    let edge = listener("edge");
    assert_eq!(edge.mode, ListenerMode::Tcp);
    assert_eq!(
        (edge.stream.idle_timeout, edge.stream.client_hello_timeout),
        (secs(600), secs(5))
    );
    assert_eq!(edge.proxy_protocol_from.len(), 1);
    assert_eq!(edge.max_connections_per_client, Some(20));
    assert_eq!(listener("internal").max_connections_per_client, None);
    let dns = listener("dns");
    assert_eq!(dns.mode, ListenerMode::Udp);
    assert_eq!(
        (dns.stream.idle_timeout, dns.stream.max_sessions),
        (secs(30), 10000)
    );
    assert!(dns.egress.is_none());
    let egress = listener("egress");
    assert_eq!(egress.mode, ListenerMode::ForwardProxy);
    assert_eq!(
        (egress.stream.idle_timeout, egress.max_connections),
        (secs(300), 2000)
    );
    let settings = egress.egress.as_ref().expect("forward_proxy settings");
    assert_eq!(settings.mode, EgressMode::Enforce);
    assert!(settings.connect_http10);
    assert_eq!(settings.sni_ports, [443, 8443]);
    assert!(!settings.allow_missing_sni);
    let auth = settings.auth.as_ref().expect("proxy_auth_file");
    assert!(auth.path.ends_with("keys/proxy-users"));
    let rules: Vec<_> = settings
        .rules
        .iter()
        .map(|r| {
            (
                r.label.as_str(),
                r.action,
                r.hosts.clone(),
                r.ports.clone(),
                r.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                r.users.clone(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            (
                "no-internal-names",
                Action::Deny,
                vec![HostMatch::Suffix(".internal.example.com".into())],
                vec![],
                vec![],
                vec![]
            ),
            (
                "package-mirrors",
                Action::Allow,
                vec![
                    HostMatch::Exact("deb.debian.org".into()),
                    HostMatch::Suffix(".crates.io".into())
                ],
                vec![80, 443],
                vec![],
                vec![]
            ),
            (
                "ci-to-build-net",
                Action::Allow,
                vec![],
                vec![8080],
                vec!["10.30.0.0/16".to_owned()],
                vec!["ci".to_owned()]
            ),
            (
                "api-read-only",
                Action::Allow,
                vec![HostMatch::Suffix(".api.example.com".into())],
                vec![],
                vec![],
                vec![]
            ),
        ]
    );
    assert_eq!(
        settings.rules[3].paths,
        [
            PathMatch::Prefix("/v1/".into()),
            PathMatch::Exact("/health".into())
        ]
    );
    assert!(settings.rules[..3].iter().all(|r| r.paths.is_empty()));
    let inspect = settings.inspect.as_ref().expect("inspect_hosts");
    assert_eq!(
        inspect.hosts,
        [HostMatch::Suffix(".api.example.com".into())]
    );
    assert!(inspect.inputs.ca_cert.ends_with("certs/inspect-ca.pem"));
    assert!(inspect.inputs.ca_key.ends_with("certs/inspect-ca.key"));
    assert_eq!(
        inspect.inputs.origin_roots.ca_file.as_deref(),
        Some(examples_dir().join("certs/example-ca.pem").as_path())
    );
    let jwt = settings.jwt.as_ref().expect("proxy_jwt_provider");
    assert_eq!(
        (jwt.provider.as_str(), jwt.claim.as_slice()),
        ("idp", &["email".to_owned()][..])
    );
    let cache = &settings.cache.as_ref().expect("[listener.cache]").settings;
    assert_eq!(
        (cache.max_bytes, cache.max_object_bytes, cache.default_ttl),
        (256 << 20, 64 << 20, Some(secs(600)))
    );

    // [[route]], in file order.
    let r = &c.l7.routes;
    assert_eq!(r.len(), 13);
    assert_eq!(r[0].listener, "public");
    assert_eq!(r[0].host, Some(HostMatch::Exact("example.com".into())));
    assert_eq!(r[0].path_exact.as_deref(), Some("/health"));
    assert_eq!(r[0].methods, [hyper::Method::GET, hyper::Method::HEAD]);
    assert!(matches!(&r[0].rewrite, Some(Rewrite::Prefix(p)) if p == "/healthz"));
    assert_eq!(r[0].pool, "web");
    let headers: Vec<String> = r[0]
        .headers
        .iter()
        .map(|h| match &h.rule {
            HeaderRule::Value(v) => format!("{} = {v:?}", h.name),
            HeaderRule::Present(p) => format!("{} present {p}", h.name),
            HeaderRule::Regex(re) => format!("{} ~ {re}", h.name),
        })
        .collect();
    assert_eq!(
        headers,
        [
            "x-canary = \"1\"",
            "x-debug present false",
            "user-agent ~ ^curl/"
        ]
    );
    assert_eq!(r[1].host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(
        r[1].path_regex.as_ref().map(|re| re.as_str()),
        Some("^/v(?P<version>[0-9]+)/users/([0-9]+)$")
    );
    assert!(matches!(&r[1].rewrite, Some(Rewrite::Regex(t)) if t == "/users/$2?api=${version}"));
    assert_eq!(r[1].pool, "api");
    // r[1]'s [[route.rate_limit]]s, in file order.
    use lb::l7::policy::rate_limit::{KeyKind, LimitSettings, shared::RedisSettings};
    let limits: Vec<&LimitSettings> = r[1]
        .chain
        .rate_limits()
        .expect("r[1] has rate limits")
        .limits()
        .iter()
        .map(|l| &l.settings)
        .collect();
    assert_eq!(
        limits,
        [
            &LimitSettings {
                name: "per-ip".into(),
                key: KeyKind::ClientIp,
                count: 10,
                per_secs: 1,
                burst: 20,
                dry_run: false,
                max_keys: 50_000,
                redis: None,
            },
            &LimitSettings {
                name: "1".into(),
                key: KeyKind::Header(hyper::header::HeaderName::from_static("x-api-key")),
                count: 600,
                per_secs: 60,
                burst: 1,
                dry_run: true,
                max_keys: 100_000,
                redis: None,
            },
            &LimitSettings {
                name: "cluster".into(),
                key: KeyKind::Consumer,
                count: 100,
                per_secs: 1,
                burst: 50,
                dry_run: false,
                max_keys: 100_000,
                redis: Some(RedisSettings {
                    url: "redis://127.0.0.1:6379/0".into(),
                    timeout: std::time::Duration::from_millis(20),
                    nodes: 3,
                }),
            },
        ]
    );
    assert!(!r[1].chain.answers_itself());
    // r[1]'s cors: first in the request phase (before the rate limits) and in the response
    // phase.
    use lb::l7::policy::{
        RequestPolicy, ResponsePolicy,
        cors::{AllowList, OriginPattern},
    };
    let Some(RequestPolicy::Cors(cors)) = r[1].chain.request.first() else {
        panic!("r[1] cors first: {:?}", r[1].chain.request);
    };
    assert!(matches!(
        r[1].chain.response.as_slice(),
        [ResponsePolicy::Cors(c)] if c == cors
    ));
    assert_eq!(
        cors.origins,
        AllowList::Only(vec![
            OriginPattern::Exact("https://app.example.com".into()),
            OriginPattern::Subdomain {
                scheme: "https".into(),
                suffix: ".example.com".into(),
                port: None
            },
        ])
    );
    assert_eq!(
        cors.methods,
        AllowList::Only(vec![
            hyper::Method::GET,
            hyper::Method::POST,
            hyper::Method::PUT
        ])
    );
    assert_eq!(
        cors.headers,
        AllowList::Only(vec![
            hyper::header::CONTENT_TYPE,
            hyper::header::AUTHORIZATION
        ])
    );
    assert_eq!(
        cors.expose.as_ref().map(|v| v.as_bytes()),
        Some(&b"x-request-id"[..])
    );
    assert!(cors.credentials);
    assert_eq!(cors.max_age, Some(std::time::Duration::from_secs(600)));
    assert!(r.iter().enumerate().all(|(i, r)| {
        i == 1
            || r.chain
                .request
                .iter()
                .all(|p| !matches!(p, RequestPolicy::Cors(_)))
    }));
    assert!(
        r.iter()
            .enumerate()
            .all(|(i, r)| i == 1 || r.chain.rate_limits().is_none())
    );
    assert_eq!(
        (r[2].path_prefix.as_str(), r[2].strip_prefix),
        ("/static", true)
    );
    assert!(matches!(&r[2].rewrite, Some(Rewrite::Prefix(p)) if p == "/"));
    // Buffering: r[2] reads responses ahead, r[3] buffers request bodies; no other route.
    assert_eq!(r[2].chain.buffer.response, Some(1 << 20));
    assert_eq!(
        r[3].chain.buffer.request,
        Some(lb::l7::policy::buffer::RequestBuffering {
            memory: 64 << 10,
            temp_dir: Some(PathBuf::from("/tmp")),
        })
    );
    assert!(r.iter().enumerate().all(|(i, r)| {
        (i == 2 || r.chain.buffer.response.is_none())
            && (i == 3 || r.chain.buffer.request.is_none())
    }));
    assert_eq!(
        r[3].split,
        [
            SplitTarget {
                pool: "stable".into(),
                weight: 95
            },
            SplitTarget {
                pool: "canary".into(),
                weight: 5
            }
        ]
    );
    assert_eq!((r[4].pool.as_str(), r[5].pool.as_str()), ("secure", "grpc"));
    // Policies: r[0] edits headers both ways and has its own timeout; r[6] answers itself,
    // r[7] redirects.
    assert_eq!(r[0].name.as_deref(), Some("health"));
    assert_eq!(
        (r[0].label(0), r[1].label(1)),
        ("health".to_owned(), "1".to_owned())
    );
    assert_eq!(r[0].chain.timeout, Some(secs(5)));
    {
        use lb::l7::policy::compress::{Encoding, Level};
        let c = r[0].chain.compress.as_ref().expect("route 0 compresses");
        assert_eq!(
            c.algorithms(),
            [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip]
        );
        assert_eq!((c.min_size(), c.level()), (1024, Level::Default));
        for t in [
            "text/html",
            "application/json",
            "application/javascript",
            "image/svg+xml",
        ] {
            assert!(c.lists_type(t), "{t}");
        }
        assert!(!c.lists_type("application/xml"));
        assert!(r[1..].iter().all(|r| r.chain.compress.is_none()));
    }
    {
        let c = &r[0].chain.cache.as_ref().expect("route 0 caches").settings;
        assert_eq!((c.max_bytes, c.max_object_bytes), (64 << 20, 1 << 20));
        assert_eq!(
            c.key_headers,
            [hyper::header::HeaderName::from_static("accept-language")]
        );
        assert_eq!(c.lock_timeout, secs(5));
        assert_eq!(c.default_ttl, Some(secs(60)));
        assert_eq!(
            (c.stale_while_revalidate, c.stale_if_error),
            (secs(10), secs(300))
        );
        assert!(r[1..].iter().all(|r| r.chain.cache.is_none()));
    }
    assert_eq!(
        (r[0].chain.upstream_request.len(), r[0].chain.response.len()),
        (1, 1)
    );
    let mut upstream = hyper::HeaderMap::new();
    upstream.insert(
        "x-debug-token",
        hyper::header::HeaderValue::from_static("t"),
    );
    for policy in &r[0].chain.upstream_request {
        let lb::l7::policy::UpstreamRequestPolicy::Headers(edits) = policy;
        edits.apply(&mut upstream);
    }
    let upstream: Vec<String> = upstream
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    assert_eq!(upstream, ["x-env: prod", "x-tag: a", "x-tag: b"]);
    let mut response = hyper::HeaderMap::new();
    response.insert("server", hyper::header::HeaderValue::from_static("x"));
    for policy in &r[0].chain.response {
        if let lb::l7::policy::ResponsePolicy::Headers(edits) = policy {
            edits.apply(&mut response);
        }
    }
    assert_eq!(
        response
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect::<Vec<_>>(),
        [("strict-transport-security", &b"max-age=63072000"[..])]
    );
    assert!(
        r[1..]
            .iter()
            .all(|r| r.chain.timeout.is_none() && r.name.is_none())
    );
    let answer = |route: &lb::l7::RouteConfig| match route.chain.request.as_slice() {
        [lb::l7::policy::RequestPolicy::Respond(respond)] => {
            let response = respond.answer();
            format!("respond {}", response.status().as_u16())
        }
        [lb::l7::policy::RequestPolicy::Redirect(redirect)] => {
            let target = lb::l7::policy::redirect::Target {
                scheme: "http",
                host: Some(std::borrow::Cow::Borrowed("old.example.com")),
                port: None,
                path: "/x",
                query: Some("q=1"),
            };
            let response = redirect.answer(&target, "127.0.0.1:80".parse().expect("addr"));
            let location = response.headers()[hyper::header::LOCATION]
                .to_str()
                .unwrap_or_default()
                .to_owned();
            format!("redirect {} {location}", response.status().as_u16())
        }
        _ => "proxied".to_owned(),
    };
    // r[4] requires a JWT of "idp".
    assert!(matches!(
        r[4].chain.request.as_slice(),
        [
            lb::l7::policy::RequestPolicy::ClientCert,
            lb::l7::policy::RequestPolicy::Jwt(_)
        ]
    ));
    assert!(!r[4].chain.answers_itself());
    let p = &c.l7.jwt_providers;
    assert_eq!(p.len(), 3);
    assert_eq!(
        (
            p[0].name.as_str(),
            p[0].issuer.as_str(),
            p[0].audiences.as_slice()
        ),
        (
            "idp",
            "https://id.example.com/",
            &["api".to_owned(), "web".to_owned()][..]
        )
    );
    assert_eq!(
        p[0].algorithms,
        [
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256
        ]
    );
    assert_eq!(
        p[0].keys,
        lb::config::jwt_provider::KeySource::Url(
            "https://id.example.com/.well-known/jwks.json".to_owned()
        )
    );
    assert!(
        p[0].ca_file
            .as_ref()
            .is_some_and(|f| f.ends_with("certs/example-ca.pem"))
    );
    assert_eq!(
        (p[0].clock_skew, p[0].cache_min, p[0].cache_max),
        (secs(30), secs(300), secs(12 * 3600))
    );
    assert_eq!(
        (p[0].refetch_cooldown, p[0].fetch_timeout),
        (secs(60), secs(3))
    );
    assert_eq!(
        (p[1].name.as_str(), &p[1].keys),
        ("sso", &lb::config::jwt_provider::KeySource::Discovery)
    );
    assert_eq!(
        p[1].algorithms.len(),
        9,
        "every asymmetric algorithm by default"
    );
    assert_eq!(
        (
            p[1].clock_skew,
            p[1].cache_min,
            p[1].cache_max,
            p[1].refetch_cooldown
        ),
        (secs(60), secs(60), secs(24 * 3600), secs(30))
    );
    assert!(matches!(
        &p[2].keys,
        lb::config::jwt_provider::KeySource::File { path, jwks }
            if path.ends_with("keys/idp-jwks.json") && jwks.contains("example-ec")
    ));
    let [lb::l7::policy::RequestPolicy::ApiKey(key)] = r[5].chain.request.as_slice() else {
        panic!("api_key: {:?}", r[5].chain.request);
    };
    assert_eq!(key.header().map(|h| h.as_str()), Some("x-api-key"));
    assert_eq!(key.query(), Some("apikey"));
    assert_eq!(key.allowed(), Some(vec!["acme"]));
    assert_eq!(key.consumer_header().as_str(), "x-consumer");
    assert!(!key.forwards_key());
    assert_eq!(answer(&r[6]), "respond 200");
    assert_eq!(answer(&r[7]), "redirect 308 https://example.com:8443/?q=1");
    assert_eq!(answer(&r[8]), "proxied");
    assert_eq!(
        (r[6].path_exact.as_deref(), r[7].pool.as_str()),
        (Some("/ping"), "")
    );
    assert_eq!((r[8].path_prefix.as_str(), r[8].host.as_ref()), ("/", None));
    assert_eq!(
        (r[9].listener.as_str(), r[9].pool.as_str()),
        ("internal", "web")
    );
    assert_eq!(r[10].sni, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!((r[11].sni.as_ref(), r[11].pool.as_str()), (None, "stable"));
    assert_eq!(
        (r[12].listener.as_str(), r[12].pool.as_str()),
        ("dns", "dns")
    );
}

/// The upstream TLS keys act: `secure` (ca_file = the example certificate, tls_server_name =
/// api.example.com) completes a verified handshake with a server holding that certificate,
/// `grpc` (tls_insecure) completes one without verification, and with another
/// tls_server_name the verification fails.
#[test]
fn upstream_tls_keys_take_effect() {
    let c = full_example();
    let dir = examples_dir().join("certs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let cert = std::fs::read(dir.join("example.pem")).expect("cert");
        let key = std::fs::read(dir.join("example.key")).expect("key");
        let chain = rustls_pem_certs(&cert);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        let handshake = |tls: lb::l7::upstream::UpstreamTls| async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = tls.server_name.clone().unwrap_or_else(|| addr.ip().into());
            tls.connector.connect(name, tcp).await.map(|_| ())
        };
        let secure =
            c.l7.pool("secure")
                .and_then(|p| p.tls.clone())
                .expect("secure tls");
        handshake(secure.clone())
            .await
            .expect("verified against ca_file");
        let grpc =
            c.l7.pool("grpc")
                .and_then(|p| p.tls.clone())
                .expect("grpc tls");
        handshake(grpc)
            .await
            .expect("tls_insecure: no verification");
        let mut wrong_name = secure;
        wrong_name.server_name = Some("other.test".try_into().expect("name"));
        let err = handshake(wrong_name)
            .await
            .expect_err("name not in the certificate");
        assert!(err.to_string().contains("certificate"), "{err}");
    });
}

fn rustls_pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("cert PEM")
}

const POOL: &str = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:8001\"\n";
const LISTENER: &str = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:8080\"\n";

#[test]
fn bad_files_give_file_line_and_reason() {
    let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let pool_with = |keys: &str| {
        format!("[[pool]]\nname = \"web\"\n{keys}[[pool.backend]]\naddress = \"127.0.0.1:8001\"\n")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax",
            format!("{POOL}[[listener]\nname = \"a\"\n"),
            "syntax.toml:5: invalid table header; expected `.`, `]]`",
        ),
        (
            "unquoted",
            "[[pool]]\nname = web\n".into(),
            "unquoted.toml:2: invalid string; expected `\"`, `'`",
        ),
        (
            "wrong_type",
            pool_with("retries = \"two\"\n"),
            "wrong_type.toml:3: invalid type: string \"two\", expected u32",
        ),
        (
            "unknown_key",
            format!("{POOL}[[listener]]\nname = \"a\"\nadress = \"127.0.0.1:80\"\n"),
            "unknown_key.toml:7: unknown field `adress`, expected one of `name`, `address`, `tls`, `proxy_protocol_from`, `proxy_protocol_timeout`, `max_header_bytes`, `max_body_bytes`, `header_timeout`, `trusted_proxies`, `body_timeout`, `max_connections`, `mode`, `idle_timeout`, `client_hello_timeout`, `max_sessions`, `client_ca`, `client_auth`, `max_connections_per_client`, `egress_mode`, `egress_rule`, `error_pages`, `proxy_auth_file`, `connect_http10`, `sni_ports`, `allow_missing_sni`, `inspect_hosts`, `inspect_ca_cert`, `inspect_ca_key`, `inspect_ca_file`, `cache`, `proxy_jwt_provider`, `proxy_jwt_claim`",
        ),
        (
            "unknown_section",
            "[[pools]]\nname = \"web\"\n".into(),
            "unknown_section.toml:1: unknown field `pools`, expected one of `encap`, `l4`, `vip`, `pool`, `listener`, `route`, `jwt_provider`, `api_keys`, `bgp`",
        ),
        (
            "missing_key",
            "[[pool]]\n[[pool.backend]]\naddress = \"127.0.0.1:8001\"\n".into(),
            "missing_key.toml:1: missing field `name`",
        ),
        (
            "backend_address",
            format!("{POOL}[[pool.backend]]\naddress = \"10.0.0.1\"\n"),
            "backend_address.toml:6: backend address \"10.0.0.1\" is not ADDRESS:PORT",
        ),
        (
            "listener_address",
            format!("{POOL}[[listener]]\nname = \"a\"\naddress = \"localhost:80\"\n"),
            "listener_address.toml:7: listener address \"localhost:80\" is not ADDRESS:PORT",
        ),
        (
            "vip_address",
            "[[vip]]\naddress = \"10.0.0.1\"\n".into(),
            "vip_address.toml:2: vip address \"10.0.0.1\" is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)",
        ),
        (
            "network",
            format!("{POOL}{LISTENER}proxy_protocol_from = [\"10.0.0.0/33\"]\n"),
            "network.toml:8: \"10.0.0.0/33\" is not a network (ADDRESS/PREFIX)",
        ),
        (
            "duplicate_pool",
            format!("{POOL}{POOL}"),
            "duplicate_pool.toml:6: duplicate pool \"web\"",
        ),
        (
            "duplicate_listener",
            format!("{POOL}{LISTENER}{LISTENER}"),
            "duplicate_listener.toml:9: duplicate listener \"a\"",
        ),
        (
            "duplicate_vip",
            format!("{POOL}[[vip]]\naddress = \"10.0.0.1:80\"\npool = \"web\"\n[[vip]]\naddress = \"10.0.0.1:80\"\npool = \"web\"\n"),
            "duplicate_vip.toml:8: duplicate vip 10.0.0.1:80 tcp",
        ),
        (
            "duplicate_real",
            "[[vip]]\naddress = \"10.0.0.1:80\"\n[[vip.real]]\naddress = \"10.0.0.5\"\n[[vip.real]]\naddress = \"10.0.0.5\"\n".into(),
            "duplicate_real.toml:5: duplicate real 10.0.0.5 in vip 10.0.0.1:80",
        ),
        (
            "negative_weight",
            format!("{POOL}[[pool.backend]]\naddress = \"127.0.0.1:8002\"\nweight = -1\n"),
            "negative_weight.toml:7: invalid value: integer `-1`, expected u32",
        ),
        (
            "split_weight_zero",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\nsplit = [{{ pool = \"web\", weight = 0 }}]\n"),
            "split_weight_zero.toml:10: split weights add up to 0",
        ),
        (
            "max_connections_zero",
            format!("{POOL}max_connections = 0\n"),
            "max_connections_zero.toml:5: max_connections must be at least 1 (weight = 0 takes a backend out)",
        ),
        (
            "ring_not_prime",
            format!("{POOL}[[vip]]\naddress = \"10.0.0.1:80\"\nring_size = 65536\npool = \"web\"\n"),
            "ring_not_prime.toml:7: ring_size 65536 must be a prime no larger than 65537",
        ),
        (
            "ring_too_big",
            "[[vip]]\naddress = \"10.0.0.1:80\"\nring_size = 65539\n".into(),
            "ring_too_big.toml:3: ring_size 65539 must be a prime no larger than 65537",
        ),
        (
            "interval_zero",
            pool_with("[pool.health_check]\ntype = \"tcp\"\ninterval = \"0s\"\n"),
            "interval_zero.toml:5: interval must be at least 10ms",
        ),
        (
            "timeout_above_interval",
            pool_with("[pool.health_check]\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n"),
            "timeout_above_interval.toml:6: timeout 2s must be above zero and at most the interval 1s",
        ),
        (
            "rise_zero",
            pool_with("[pool.health_check]\ntype = \"tcp\"\nrise = 0\n"),
            "rise_zero.toml:5: rise 0 is out of range 1-100",
        ),
        (
            "retry_budget",
            pool_with("retry_budget_percent = 101\n"),
            "retry_budget.toml:3: retry_budget_percent 101 is above 100",
        ),
        (
            "breaker_zero",
            pool_with("[pool.circuit_breaker]\nmax_requests = 0\n"),
            "breaker_zero.toml:4: max_requests must be at least 1 (leave it out for no limit)",
        ),
        (
            "breaker_key",
            pool_with("[pool.circuit_breaker]\nmax_request = 5\n"),
            "breaker_key.toml:4: unknown field `max_request`, expected one of `max_connections`, `max_pending_requests`, `max_requests`, `max_retries`",
        ),
        (
            "ejected_percent",
            pool_with("[pool.outlier_detection]\nmax_ejected_percent = 101\n"),
            "ejected_percent.toml:4: max_ejected_percent 101 is above 100",
        ),
        (
            "outlier_and_max_fails",
            pool_with("max_fails = 2\n[pool.outlier_detection]\n"),
            "outlier_and_max_fails.toml:3: max_fails and [pool.outlier_detection] both eject backends: use outlier_detection's consecutive_5xx / consecutive_gateway_errors",
        ),
        (
            "outlier_off",
            pool_with("[pool.outlier_detection]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 0\n"),
            "outlier_off.toml:3: outlier_detection with consecutive_5xx = 0 and consecutive_gateway_errors = 0 never ejects: remove the section instead",
        ),
        (
            "ejection_times",
            pool_with("[pool.outlier_detection]\nbase_ejection_time = \"1m\"\nmax_ejection_time = \"10s\"\n"),
            "ejection_times.toml:5: max_ejection_time \"10s\" is below base_ejection_time (60s)",
        ),
        (
            "adaptive_limits",
            pool_with("[pool.adaptive_concurrency]\nmin_limit = 10\nmax_limit = 5\n"),
            "adaptive_limits.toml:5: max_limit 5 is below min_limit (10)",
        ),
        (
            "adaptive_window",
            pool_with("[pool.adaptive_concurrency]\nwindow = \"0s\"\n"),
            "adaptive_window.toml:4: window must be above 0",
        ),
        (
            "max_header_bytes",
            format!("{POOL}{LISTENER}max_header_bytes = 1024\n"),
            "max_header_bytes.toml:8: max_header_bytes 1024 is below 8192",
        ),
        (
            "unknown_listener_mode",
            format!("{POOL}{LISTENER}mode = \"forward\"\n"),
            "unknown_listener_mode.toml:8: unknown variant `forward`, expected one of `http`, `tcp`, `udp`, `forward_proxy`",
        ),
        (
            "egress_bad_cidr",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[[listener.egress_rule]]\naction = \"allow\"\ncidrs = [\"10.0.0.0/33\"]\n"),
            "egress_bad_cidr.toml:11: egress_rule cidr \"10.0.0.0/33\" is not a network (ADDRESS/PREFIX)",
        ),
        (
            "egress_bad_action",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[[listener.egress_rule]]\naction = \"permit\"\n"),
            "egress_bad_action.toml:10: egress_rule action \"permit\": expected \"allow\" or \"deny\"",
        ),
        (
            "egress_bad_port",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[[listener.egress_rule]]\naction = \"allow\"\nports = [443, 65536]\n"),
            "egress_bad_port.toml:11: egress_rule port 65536 is not in 1..=65535",
        ),
        (
            "egress_bad_mode",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\negress_mode = \"audit\"\n"),
            "egress_bad_mode.toml:9: egress_mode \"audit\": expected \"enforce\" or \"report\"",
        ),
        (
            "egress_key_on_http_listener",
            format!("{POOL}{LISTENER}egress_mode = \"report\"\n"),
            "egress_key_on_http_listener.toml:8: egress_mode applies to forward_proxy listeners only",
        ),
        (
            "egress_bad_hash_line",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\nproxy_auth_file = \"bad-users\"\n"),
            "bad-users:3: user \"bob\": not a PHC hash string (password hash string missing field)",
        ),
        (
            "egress_bad_path",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[[listener.egress_rule]]\naction = \"allow\"\npaths = [\"/a\", \"v1/*\"]\n"),
            "egress_bad_path.toml:11: egress_rule path \"v1/*\": expected /exact or /prefix* (no query)",
        ),
        (
            "inspect_without_ca",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\ninspect_hosts = [\"*.example.com\"]\n"),
            "inspect_without_ca.toml:9: inspect_hosts needs inspect_ca_cert and inspect_ca_key (the CA that signs the certificates lb shows clients)",
        ),
        (
            "inspect_address",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\ninspect_hosts = [\"10.0.0.1\"]\n"),
            "inspect_address.toml:9: inspect_hosts \"10.0.0.1\": expected a name or *.suffix (addresses are not inspected)",
        ),
        (
            "inspect_ca_without_hosts",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\ninspect_ca_file = \"roots.pem\"\n"),
            "inspect_ca_without_hosts.toml:9: inspect_ca_file is for TLS inspection, which needs inspect_hosts",
        ),
        (
            "inspect_key_on_http_listener",
            format!("{POOL}{LISTENER}inspect_hosts = [\"a.example\"]\n"),
            "inspect_key_on_http_listener.toml:8: inspect_hosts applies to forward_proxy listeners only",
        ),
        (
            "inspect_ca_not_a_ca",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\ninspect_hosts = [\"a.example\"]\ninspect_ca_cert = \"leaf.pem\"\ninspect_ca_key = \"leaf.key\"\n"),
            "inspect_ca_not_a_ca.toml:10: TLS inspection CA: \"leaf.pem\": is not a CA certificate (basicConstraints CA:TRUE)",
        ),
        (
            "inspect_ca_wrong_key",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\ninspect_hosts = [\"a.example\"]\ninspect_ca_cert = \"ca.pem\"\ninspect_ca_key = \"leaf.key\"\n"),
            "inspect_ca_wrong_key.toml:11: TLS inspection CA: \"leaf.key\": is not the key of the certificate in \"ca.pem\"",
        ),
        (
            "cache_on_http_listener",
            format!("{POOL}{LISTENER}[listener.cache]\nmax_bytes = 10\n"),
            "cache_on_http_listener.toml:8: cache applies to forward_proxy listeners only",
        ),
        (
            "egress_cache_bad_size",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[listener.cache]\nmax_bytes = 0\n"),
            "egress_cache_bad_size.toml:10: cache: max_bytes must be above 0 (bytes)",
        ),
        (
            "proxy_jwt_unknown_provider",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\nproxy_jwt_provider = \"idp\"\n"),
            "proxy_jwt_unknown_provider.toml:9: proxy_jwt_provider \"idp\": no [[jwt_provider]] has that name",
        ),
        (
            "proxy_jwt_claim_alone",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\nproxy_jwt_claim = \"email\"\n"),
            "proxy_jwt_claim_alone.toml:9: proxy_jwt_claim needs proxy_jwt_provider",
        ),
        (
            "route_on_forward_proxy",
            format!("{POOL}{LISTENER}mode = \"forward_proxy\"\n[[route]]\nlistener = \"a\"\npool = \"web\"\n"),
            "route_on_forward_proxy.toml:10: \"a\" is a forward_proxy listener, which takes no routes (egress_rule instead)",
        ),
        (
            "http_key_on_tcp_listener",
            format!("{POOL}{LISTENER}mode = \"tcp\"\nmax_connections = 5\n"),
            "http_key_on_tcp_listener.toml:9: max_connections applies to http (and forward_proxy) listeners only",
        ),
        (
            "stream_key_on_http_listener",
            format!("{POOL}{LISTENER}max_sessions = 5\n"),
            "stream_key_on_http_listener.toml:8: max_sessions applies to tcp and udp listeners only",
        ),
        (
            "bad_duration",
            pool_with("connect_timeout = \"2 parsecs\"\n"),
            "bad_duration.toml:3: connect_timeout \"2 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
        ),
        (
            "bad_algorithm",
            pool_with("algorithm = \"random\"\n"),
            "bad_algorithm.toml:3: unknown variant `random`, expected one of `round_robin`, `least_conn`, `p2c`, `consistent_hash`",
        ),
        (
            "route_to_missing_pool",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"api\"\n"),
            "route_to_missing_pool.toml:10: route names unknown pool \"api\"",
        ),
        (
            "split_to_missing_pool",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\nsplit = [{{ pool = \"api\" }}]\n"),
            "split_to_missing_pool.toml:10: split names unknown pool \"api\"",
        ),
        (
            "route_to_missing_listener",
            format!("{POOL}[[route]]\nlistener = \"b\"\npool = \"web\"\n"),
            "route_to_missing_listener.toml:6: route names unknown listener \"b\"",
        ),
        (
            "vip_bad_deny_network",
            "[l4]\ndeny = [\"192.0.2.0/24\"]\n[[vip]]\naddress = \"10.0.0.1:80\"\ndeny = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]\n".into(),
            "vip_bad_deny_network.toml:6: deny: \"10.0.0.0/33\" is not a network (ADDRESS/PREFIX) or an address",
        ),
        (
            "l4_unknown_key",
            "[l4]\nsource_new_flows = 5\n".into(),
            "l4_unknown_key.toml:2: unknown field `source_new_flows`, expected one of `flood_guard_new_flows_per_cpu`, `source_new_flows_per_second`, `source_new_flows_burst`, `deny`, `allow`, `previous_ring_window`",
        ),
        (
            "vip_to_missing_pool",
            "[[vip]]\naddress = \"10.0.0.1:80\"\npool = \"web\"\n".into(),
            "vip_to_missing_pool.toml:3: vip 10.0.0.1:80 names unknown pool \"web\"",
        ),
        (
            "route_without_pool",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\n"),
            "route_without_pool.toml:8: route needs pool or split",
        ),
        (
            "unreadable_certificate",
            format!("{POOL}{LISTENER}[[listener.tls]]\ncert = \"/nonexistent/site.pem\"\nkey = \"/nonexistent/site.key\"\n"),
            "unreadable_certificate.toml:9: listener \"a\": cannot read /nonexistent/site.pem: No such file or directory (os error 2)",
        ),
        (
            "error_page_status",
            format!("{POOL}{LISTENER}error_pages = {{ 200 = \"/etc/hostname\" }}\n"),
            "error_page_status.toml:8: error_pages: \"200\" is not an error status (400 to 599)",
        ),
        (
            "error_page_file",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"web\"\nerror_pages = {{ 502 = \"/nonexistent/502.html\" }}\n"),
            "error_page_file.toml:11: error_pages: cannot read /nonexistent/502.html: No such file or directory (os error 2)",
        ),
        (
            "error_pages_on_tcp",
            format!("{POOL}{LISTENER}mode = \"tcp\"\nerror_pages = {{ 502 = \"/etc/hostname\" }}\n"),
            "error_pages_on_tcp.toml:9: error_pages: only http listeners answer with pages",
        ),
        (
            "buffer_size",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"web\"\nbuffer_response = \"1MB\"\n"),
            "buffer_size.toml:11: buffer_response \"1MB\": a size such as \"64KiB\" (units: B, KiB, MiB, GiB)",
        ),
        (
            "buffer_zero",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"web\"\nbuffer_request = true\nbuffer_request_memory = \"0KiB\"\n"),
            "buffer_zero.toml:12: buffer_request_memory must be above 0",
        ),
        (
            "buffer_orphan",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"web\"\nbuffer_request_memory = \"1MiB\"\n"),
            "buffer_orphan.toml:11: buffer_request_memory without buffer_request = true: add it or remove buffer_request_memory",
        ),
        (
            "buffer_temp_dir",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npool = \"web\"\nbuffer_request = true\nbuffer_request_temp_dir = \"/nonexistent/tmp\"\n"),
            "buffer_temp_dir.toml:12: buffer_request_temp_dir \"/nonexistent/tmp\": not an absolute path to a directory",
        ),
        (
            "buffer_on_respond",
            format!("{POOL}{LISTENER}[[route]]\nlistener = \"a\"\nrespond = {{ status = 204 }}\nbuffer_response = \"1MiB\"\n"),
            "buffer_on_respond.toml:11: buffer_response on a route that answers itself (respond/redirect): remove it",
        ),
        (
            "buffer_on_tcp",
            format!("{POOL}{LISTENER}mode = \"tcp\"\n[[route]]\nlistener = \"a\"\npool = \"web\"\nbuffer_request = true\n"),
            "buffer_on_tcp.toml:12: buffer_request applies to http routes; \"a\" is a tcp listener (route tcp by sni)",
        ),
    ];
    // TLS inspection: a CA and its key, a leaf certificate and its (other) key.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).expect("leaf");
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("leaf.pem", leaf.cert.pem()),
        ("leaf.key", leaf.key_pair.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let mut wrong = Vec::new();
    // proxy_auth_file's errors name its own line.
    std::fs::write(
        dir.join("bad-users"),
        "# users\nalice:$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nbob:plaintext\n",
    )
    .expect("write");
    for (name, text, expected) in &cases {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).expect("write");
        let out = Command::new(lb_bin())
            .current_dir(&dir)
            .args(["check-config", &format!("{name}.toml")])
            .output()
            .expect("run lb check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("lb: {expected}\n");
        if out.status.code() != Some(1) || stderr != want || !out.stdout.is_empty() {
            wrong.push(format!(
                "{name}: exit {:?}\n  got:  {stderr:?}\n  want: {want:?}",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let out = Command::new(lb_bin())
        .args(["check-config", "/nonexistent/lb.toml"])
        .output()
        .expect("run lb check-config");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "lb: /nonexistent/lb.toml: cannot read: No such file or directory (os error 2)\n"
    );
}

/// `lb check-config` refuses what `lb run` refuses (the same parse, the same certificate
/// loading), with `FILE:LINE: reason`: a key that does not match its certificate, a key file
/// holding only a certificate, two listeners on one address, glob characters in path_prefix.
/// A pool with no backends is only a warning (stderr, exit 0).
#[test]
fn check_config_refuses_what_lb_run_refuses() {
    let dir = std::env::temp_dir().join(format!("lb-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for name in ["one", "two"] {
        let cert =
            rcgen::generate_simple_self_signed(vec![format!("{name}.example")]).expect("cert");
        std::fs::write(dir.join(format!("{name}.pem")), cert.cert.pem()).expect("write");
        std::fs::write(
            dir.join(format!("{name}.key")),
            cert.key_pair.serialize_pem(),
        )
        .expect("write");
    }
    let tls = |cert: &str, key: &str| {
        format!("{POOL}{LISTENER}[[listener.tls]]\ncert = \"{cert}\"\nkey = \"{key}\"\n")
    };
    let cases = [
        (
            "key_mismatch",
            tls("one.pem", "two.key"),
            "key_mismatch.toml:10: listener \"a\": two.key: the private key does not match the certificate in one.pem",
        ),
        (
            "key_is_a_certificate",
            tls("one.pem", "one.pem"),
            "key_is_a_certificate.toml:10: listener \"a\": one.pem: no private key found",
        ),
        (
            "same_address",
            format!("{POOL}{LISTENER}[[listener]]\nname = \"b\"\naddress = \"127.0.0.1:8080\"\n"),
            "same_address.toml:10: listener \"b\": address 127.0.0.1:8080 is also listener \"a\" (one socket per address)",
        ),
        (
            "wildcard_overlap",
            format!("{POOL}{LISTENER}[[listener]]\nname = \"b\"\naddress = \"0.0.0.0:8080\"\n"),
            "wildcard_overlap.toml:10: listener \"b\": address 0.0.0.0:8080 overlaps 127.0.0.1:8080, the address of listener \"a\" (one socket per address)",
        ),
        (
            "glob_prefix",
            format!(
                "{POOL}{LISTENER}[[route]]\nlistener = \"a\"\npath_prefix = \"/api/*\"\npool = \"web\"\n"
            ),
            "glob_prefix.toml:10: path_prefix \"/api/*\" holds the glob character '*', but path_prefix is matched literally; use path_regex for patterns (e.g. path_regex = \"^/api/\")",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, text, expected) in &cases {
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write");
        let out = Command::new(lb_bin())
            .current_dir(&dir)
            .args(["check-config", &format!("{name}.toml")])
            .output()
            .expect("run lb check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || !stderr.starts_with(&format!("lb: {expected}"))
            || !out.stdout.is_empty()
        {
            wrong.push(format!(
                "{name}: exit {:?}\n  got:  {stderr:?}\n  want: {expected:?}",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The parser itself refuses (so `lb run` does too); a udp listener may share a tcp one's
    // address, and port 0 never clashes.
    let parse = |text: &str| lb::l7::L7Config::parse(text, Path::new("l7.toml"));
    assert!(parse(&cases[2].1).is_err());
    assert!(parse(&cases[4].1).is_err());
    let shared = format!(
        "{POOL}{LISTENER}[[listener]]\nname = \"u\"\naddress = \"127.0.0.1:8080\"\nmode = \"udp\"\n\
         [[listener]]\nname = \"x\"\naddress = \"127.0.0.1:0\"\n[[listener]]\nname = \"y\"\naddress = \"127.0.0.1:0\"\n"
    );
    assert!(parse(&shared).is_ok());

    let empty = format!("{POOL}[[pool]]\nname = \"empty\"\n");
    std::fs::write(dir.join("empty_pool.toml"), empty).expect("write");
    let out = Command::new(lb_bin())
        .current_dir(&dir)
        .args(["check-config", "empty_pool.toml"])
        .output()
        .expect("run lb check-config");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "empty_pool.toml:6: warning: pool \"empty\" has no backends (requests routed to it fail)\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "empty_pool.toml: ok: 0 vips, 0 listeners, 0 routes, 2 pools, 1 backends\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
