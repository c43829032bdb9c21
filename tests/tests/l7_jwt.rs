//! The `jwt` route policy end to end, in-process: a JWKS server started here (its keys can be
//! rotated, its fetches are counted, it can fail), tokens minted here with each algorithm from
//! the keys in tests/fixtures/jwt (RSA, EC P-256, Ed25519; `public.json` holds their public
//! halves), an echo backend showing what went upstream.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lb::l7::{self, L7Config};
use lb_tests::{
    echo_backend::{echo_backend, exchange, get},
    lb_run::RefusedPort,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The public JWK of fixture key `name` with key id `kid`.
fn jwk(name: &str, kid: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture("public.json")).expect("public.json");
    let mut key = all[name].clone();
    key["kid"] = json!(kid);
    key
}

/// A token signed with fixture key `name` by `alg`, with key id `kid` (None: no kid).
fn mint(name: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(&format!("{name}.pem"));
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("encode")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const ISSUER: &str = "https://issuer.test/";

/// Claims that pass: the right issuer and audience, an hour to live.
fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": "api",
        "sub": "user-1",
        "exp": now() + 3600,
        "scope": "read write",
        "org": { "id": 42 },
        "roles": ["admin", "dev"],
    })
}

/// A JWKS server: `/jwks.json` (the current keys; fetches counted; 500 when failing) and
/// `/.well-known/openid-configuration` pointing at it.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

impl Jwks {
    fn set(&self, keys: Vec<Value>) {
        *self.keys.lock().expect("keys") = keys;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.serve_on(listener)
    }

    fn serve_on(&self, listener: TcpListener) -> SocketAddr {
        let addr = listener.local_addr().expect("addr");
        let jwks = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let jwks = jwks.clone();
                        async move { Ok::<_, Infallible>(jwks.answer(&req, addr)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        addr
    }

    fn answer(&self, req: &Request<Incoming>, addr: SocketAddr) -> Response<Full<Bytes>> {
        let body = match req.uri().path() {
            "/.well-known/openid-configuration" => {
                json!({ "issuer": format!("http://{addr}"), "jwks_uri": format!("http://{addr}/jwks.json") })
            }
            "/jwks.json" => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                if self.failing.load(Ordering::SeqCst) {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return r;
                }
                json!({ "keys": *self.keys.lock().expect("keys") })
            }
            _ => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        response.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("max-age=3600"),
        );
        response
    }
}

async fn start(text: &str) -> (l7::RunningL7, SocketAddr) {
    let config = L7Config::parse(text, Path::new("l7.toml")).expect("config");
    let running = l7::serve(config).await.expect("serve");
    let addr = running.listeners[0].1;
    (running, addr)
}

/// A pool, a listener, a `/open` route without policies and a catch-all route with `jwt`.
fn file(backend: SocketAddr, provider: &str, route_jwt: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         {provider}\
         [[route]]\nlistener = \"l\"\npath = \"/open\"\npool = \"web\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\njwt = {route_jwt}\n"
    )
}

fn provider(keys: &str, extra: &str) -> String {
    format!(
        "[[jwt_provider]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\naudiences = [\"api\"]\n{keys}\n{extra}"
    )
}

/// A JWKS server holding `keys`, an echo backend, and lb in front of it with a provider "idp"
/// fetching from that server (plus `provider_extra` keys) and `route_jwt` as the route's policy.
async fn lb_with_jwks(
    keys: Vec<Value>,
    provider_extra: &str,
    route_jwt: &str,
) -> (Jwks, l7::RunningL7, SocketAddr) {
    let jwks = Jwks::default();
    jwks.set(keys);
    let jwks_addr = jwks.serve().await;
    let echo = echo_backend().await;
    let (lb, addr) = start(&file(
        echo,
        &provider(
            &format!("jwks_url = \"http://{jwks_addr}/jwks.json\""),
            provider_extra,
        ),
        route_jwt,
    ))
    .await;
    (jwks, lb, addr)
}

async fn with_token(addr: SocketAddr, token: &str) -> (u16, Vec<String>, String) {
    exchange(
        addr,
        &get(
            "/x",
            "site.test",
            &format!("Authorization: Bearer {token}\r\n"),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_of_each_algorithm_pass_with_their_claims_upstream() {
    let (jwks, _lb, addr) = lb_with_jwks(vec![jwk("rsa1", "r1"), jwk("ec1", "e1"), jwk("ed1", "d1")], "", "{ provider = \"idp\", claims_to_headers = { \"x-user\" = \"sub\", \"x-org\" = \"org.id\", \"x-roles\" = \"roles\" } }").await;
    for (key, alg, kid) in [
        ("rsa1", Algorithm::RS256, "r1"),
        ("rsa1", Algorithm::PS256, "r1"),
        ("ec1", Algorithm::ES256, "e1"),
        ("ed1", Algorithm::EdDSA, "d1"),
    ] {
        let token = mint(key, alg, Some(kid), &good_claims());
        let (status, _, body) = exchange(
            addr,
            &get(
                "/x",
                "site.test",
                &format!("Authorization: Bearer {token}\r\nX-User: forged\r\n"),
            ),
        )
        .await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        let seen: Vec<&str> = body.lines().collect();
        assert!(seen.contains(&"x-user: user-1"), "{alg:?}: {body}");
        assert!(!seen.contains(&"x-user: forged"), "{alg:?}: {body}");
        assert!(seen.contains(&"x-org: 42"), "{body}");
        assert!(seen.contains(&"x-roles: admin,dev"), "{body}");
        assert!(!body.contains("authorization"), "token removed: {body}");
    }
    // Without a kid, the key is found by the algorithm's family.
    let token = mint("ec1", Algorithm::ES256, None, &good_claims());
    assert_eq!(with_token(addr, &token).await.0, 200);
    // The route without policies needs no token.
    assert_eq!(exchange(addr, &get("/open", "site.test", "")).await.0, 200);
    assert_eq!(jwks.fetches(), 1, "one fetch served every token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_rfc_6750_challenges() {
    let (_jwks, _lb, addr) = lb_with_jwks(
        vec![jwk("rsa1", "r1")],
        "clock_skew = \"60s\"\nrefetch_cooldown = \"1h\"\n",
        "{ provider = \"idp\", scopes = [\"read\"], required_claims = [\"org.id\"] }",
    )
    .await;
    let good = mint("rsa1", Algorithm::RS256, Some("r1"), &good_claims());
    assert_eq!(with_token(addr, &good).await.0, 200);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut claims = good_claims();
        f(&mut claims);
        mint("rsa1", Algorithm::RS256, Some("r1"), &claims)
    };
    let invalid = "bearer error=\"invalid_token\"".to_owned();
    let mut tampered = good.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (header, payload, _) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
            (),
        )
    };
    let _ = header;
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    // RS/HS confusion: HS256 keyed with the RSA public key's text.
    let public_pem = fixture("rsa1.pub.pem");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(&public_pem).expect("secret"),
    )
    .expect("hs256");
    let other_key = mint("rsa2", Algorithm::RS256, Some("r1"), &good_claims());
    let cases: Vec<(&str, String, u16, String)> = vec![
        ("tampered signature", tampered, 401, invalid.clone()),
        ("signed by another key", other_key, 401, invalid.clone()),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.test/")),
            401,
            invalid.clone(),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("other")),
            401,
            invalid.clone(),
        ),
        (
            "expired beyond skew",
            with(&|c| c["exp"] = json!(now() - 120)),
            401,
            invalid.clone(),
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 600)),
            401,
            invalid.clone(),
        ),
        (
            "exp as a string",
            with(&|c| c["exp"] = json!((now() + 3600).to_string())),
            401,
            invalid.clone(),
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            401,
            invalid.clone(),
        ),
        ("alg none", alg_none, 401, invalid.clone()),
        ("HS256 with the public key", hs, 401, invalid.clone()),
        ("garbage", "not-a-token".to_owned(), 401, invalid.clone()),
        (
            "missing scope",
            with(&|c| c["scope"] = json!("write")),
            403,
            "bearer error=\"insufficient_scope\"".to_owned(),
        ),
        (
            "missing claim",
            with(&|c| c["org"] = json!({})),
            403,
            "bearer error=\"insufficient_scope\"".to_owned(),
        ),
    ];
    for (what, token, status, challenge) in cases {
        let (got, headers, _) = with_token(addr, &token).await;
        assert_eq!(got, status, "{what}");
        assert!(
            headers.contains(&format!("www-authenticate: {challenge}")),
            "{what}: {headers:?}"
        );
    }
    // Expired, but within the clock skew: accepted.
    let late = with(&|c| c["exp"] = json!(now() - 10));
    assert_eq!(with_token(addr, &late).await.0, 200);
    // Scopes as an `scp` list count too.
    let scp = with(&|c| {
        c.as_object_mut().map(|o| o.remove("scope"));
        c["scp"] = json!(["read"]);
    });
    assert_eq!(with_token(addr, &scp).await.0, 200);

    // No token at all: a challenge without an error code.
    let (status, headers, _) = exchange(addr, &get("/x", "site.test", "")).await;
    assert_eq!(status, 401);
    assert!(
        headers.contains(&"www-authenticate: bearer".to_owned()),
        "{headers:?}"
    );
    // Two different tokens in one request.
    let other = with(&|c| c["sub"] = json!("user-2"));
    let (status, _, _) = exchange(
        addr,
        &get(
            "/x",
            "site.test",
            &format!("Authorization: Bearer {good}\r\nAuthorization: Bearer {other}\r\n"),
        ),
    )
    .await;
    assert_eq!(status, 401, "two different tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_unknown_kid_storms_and_failed_fetches() {
    let (jwks, _lb, addr) = lb_with_jwks(
        vec![jwk("rsa1", "k1")],
        "refetch_cooldown = \"1h\"\n",
        "{ provider = \"idp\" }",
    )
    .await;
    let k1 = mint("rsa1", Algorithm::RS256, Some("k1"), &good_claims());
    assert_eq!(with_token(addr, &k1).await.0, 200);
    assert_eq!(jwks.fetches(), 1);

    // The IdP rotates in k2: the first token with the unknown kid refetches and passes.
    jwks.set(vec![jwk("rsa1", "k1"), jwk("rsa2", "k2")]);
    let k2 = mint("rsa2", Algorithm::RS256, Some("k2"), &good_claims());
    assert_eq!(with_token(addr, &k2).await.0, 200);
    assert_eq!(jwks.fetches(), 2, "one refetch for the new kid");

    // A storm of tokens with a kid nobody has: at most one more fetch within the cooldown
    // (this one is inside the cooldown of the refetch above: none).
    for i in 0..25 {
        let mut claims = good_claims();
        claims["n"] = json!(i);
        let bogus = mint("rsa2", Algorithm::RS256, Some("k9"), &claims);
        assert_eq!(with_token(addr, &bogus).await.0, 401);
    }
    assert_eq!(jwks.fetches(), 2, "the cooldown held the storm off the IdP");
    assert_eq!(with_token(addr, &k2).await.0, 200, "known keys still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    // A cooldown of 1 ms: every unknown kid refetches (the failing server is asked).
    let (jwks, _lb, addr) = lb_with_jwks(
        vec![jwk("ec1", "e1")],
        "refetch_cooldown = \"1ms\"\n",
        "{ provider = \"idp\" }",
    )
    .await;
    let e1 = mint("ec1", Algorithm::ES256, Some("e1"), &good_claims());
    assert_eq!(with_token(addr, &e1).await.0, 200);
    jwks.failing.store(true, Ordering::SeqCst);
    let before = jwks.fetches();
    let unknown = mint("ec1", Algorithm::ES256, Some("e9"), &good_claims());
    assert_eq!(with_token(addr, &unknown).await.0, 401);
    assert!(jwks.fetches() > before, "the unknown kid was fetched for");
    // A new token (not in the verified-token cache) of the old key still passes.
    let mut claims = good_claims();
    claims["sub"] = json!("user-9");
    let fresh = mint("ec1", Algorithm::ES256, Some("e1"), &claims);
    assert_eq!(with_token(addr, &fresh).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_does_not_stop_lb_and_its_keys_arrive_later() {
    let reserved = RefusedPort::new();
    let jwks_addr = reserved.addr;
    let echo = echo_backend().await;
    let (_lb, addr) = start(&file(
        echo,
        &provider(
            &format!("jwks_url = \"http://{jwks_addr}/jwks.json\""),
            "refetch_cooldown = \"1ms\"\n",
        ),
        "{ provider = \"idp\" }",
    ))
    .await;
    let token = mint("ed1", Algorithm::EdDSA, Some("d1"), &good_claims());
    assert_eq!(with_token(addr, &token).await.0, 401, "no keys yet");
    assert_eq!(
        exchange(addr, &get("/open", "site.test", "")).await.0,
        200,
        "others serve"
    );

    let jwks = Jwks::default();
    jwks.set(vec![jwk("ed1", "d1")]);
    let listener = reserved.listen();
    listener.set_nonblocking(true).expect("nonblocking");
    jwks.serve_on(TcpListener::from_std(listener).expect("tokio listener"));
    // The next request with no keys fetches (the 1 ms cooldown since the last try may not
    // have passed yet on a fast machine: ask until it has).
    let mut status = 0;
    for _ in 0..1000 {
        status = with_token(addr, &token).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(status, 200, "keys arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_discovery_and_other_token_sources() {
    let jwks = Jwks::default();
    jwks.set(vec![jwk("rsa1", "r1")]);
    let jwks_addr = jwks.serve().await;
    let echo = echo_backend().await;
    let issuer = format!("http://{jwks_addr}");
    let text = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[jwt_provider]]\nname = \"idp\"\nissuer = \"{issuer}\"\ndiscovery = true\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n\
         jwt = {{ provider = \"idp\", from = [\"header:x-token\", \"cookie:session\", \"query:access_token\"], forward = true, allow_preflight = true }}\n"
    );
    let (_lb, addr) = start(&text).await;
    let mut claims = good_claims();
    claims["iss"] = json!(issuer);
    let token = mint("rsa1", Algorithm::RS256, Some("r1"), &claims);
    let (status, _, body) = exchange(
        addr,
        &get("/x", "site.test", &format!("X-Token: {token}\r\n")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("x-token: "),
        "forward = true keeps it: {body}"
    );
    let cookie = format!("Cookie: a=1; session={token}\r\n");
    assert_eq!(
        exchange(addr, &get("/x", "site.test", &cookie)).await.0,
        200
    );
    let query = format!("/x?access_token={token}&b=2");
    assert_eq!(exchange(addr, &get(&query, "site.test", "")).await.0, 200);
    // The same token in two places is one token; two different ones are refused.
    let both = format!("X-Token: {token}\r\n{cookie}");
    assert_eq!(exchange(addr, &get("/x", "site.test", &both)).await.0, 200);
    let mut other_claims = claims.clone();
    other_claims["sub"] = json!("someone-else");
    let other = mint("rsa1", Algorithm::RS256, Some("r1"), &other_claims);
    let mixed = format!("X-Token: {other}\r\n{cookie}");
    assert_eq!(exchange(addr, &get("/x", "site.test", &mixed)).await.0, 401);
    // A CORS preflight passes without a token.
    let preflight = "OPTIONS /x HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\
                     Origin: https://app.test\r\nAccess-Control-Request-Method: POST\r\n\r\n";
    assert_eq!(exchange(addr, preflight).await.0, 200);
    assert_eq!(exchange(addr, &get("/x", "site.test", "")).await.0, 401);
}

#[test]
fn provider_and_route_keys_are_checked_at_load() {
    let base = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n\
                [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";
    for (text, reason) in [
        (
            "[[jwt_provider]]\nname = \"a\"\nissuer = \"https://i/\"\njwks_url = \"http://k/\"\nalgorithms = [\"HS256\"]\n",
            "l7.toml:12: algorithm \"HS256\": never allowed for a key-set provider",
        ),
        (
            "[[jwt_provider]]\nname = \"a\"\nissuer = \"https://i/\"\n",
            "l7.toml:8: jwt_provider \"a\" needs exactly one of jwks_url, discovery = true, jwks_file",
        ),
        (
            "[[jwt_provider]]\nname = \"a\"\nissuer = \"https://i/\"\njwks_url = \"ftp://k/\"\n",
            "l7.toml:11: jwks_url: \"ftp://k/\" is not an http(s) URL",
        ),
        (
            "[[route]]\nlistener = \"l\"\npool = \"web\"\njwt = { provider = \"nope\" }\n",
            "l7.toml:11: jwt: unknown jwt_provider \"nope\"",
        ),
    ] {
        let err = L7Config::parse(&format!("{base}{text}"), Path::new("l7.toml")).expect_err(text);
        assert!(err.to_string().starts_with(reason), "{err}");
    }
}

/// `lb run` with metrics: authentication results by route, provider and result, and the JWKS
/// fetches of a provider.
#[test]
fn lb_run_counts_auth_results_and_key_fetches() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let jwks = Jwks::default();
    jwks.set(vec![jwk("ed1", "d1")]);
    let jwks_addr = runtime.block_on(jwks.serve());
    let echo = runtime.block_on(echo_backend());
    let file = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{echo}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         {}\
         [[route]]\nname = \"api\"\nlistener = \"l\"\npool = \"web\"\njwt = {{ provider = \"idp\" }}\n",
        provider(&format!("jwks_url = \"http://{jwks_addr}/jwks.json\""), "")
    );
    let lb = lb_tests::lb_run::LbRun::start("jwt", &file, &[]);
    let addr = lb.listener("l");
    let token = mint("ed1", Algorithm::EdDSA, Some("d1"), &good_claims());
    let call = |extra: &str| {
        runtime
            .block_on(exchange(addr, &get("/x", "site.test", extra)))
            .0
    };
    assert_eq!(call(""), 401);
    assert_eq!(call(&format!("Authorization: Bearer {token}\r\n")), 200);
    assert_eq!(call(&format!("Authorization: Bearer {token}\r\n")), 200);
    assert_eq!(call("Authorization: Bearer x.y.z\r\n"), 401);
    let metrics = lb_tests::lb_run::http("GET", lb.admin, "/metrics").1;
    for (series, value) in [
        (
            "lb_http_jwt_auth_total{route=\"api\",provider=\"idp\",result=\"missing\"}",
            1,
        ),
        (
            "lb_http_jwt_auth_total{route=\"api\",provider=\"idp\",result=\"ok\"}",
            2,
        ),
        (
            "lb_http_jwt_auth_total{route=\"api\",provider=\"idp\",result=\"malformed\"}",
            1,
        ),
        ("lb_jwks_fetches_total{provider=\"idp\",result=\"ok\"}", 1),
    ] {
        let line = format!("{series} {value}");
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}
