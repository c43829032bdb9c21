//! Forward-proxy identities from JWTs (`proxy_jwt_provider`), through `lb run` with curl as the
//! client and tokens signed here with the fixture keys of tests/fixtures/jwt (the provider
//! reads their public halves from a JWKS file). Shown: a valid `Proxy-Authorization: Bearer`
//! token's claim is the user egress rules match and the access log names (on absolute-form
//! requests and CONNECT tunnels), alongside Basic users on the same listener; the token never
//! reaches the origin; a token that is expired, badly signed or lacks the claim, or no
//! credentials at all, get 407 with a challenge per scheme the listener takes (Bearer with
//! `error="invalid_token"` for a refused token), counted; a valid token of a user the rules
//! do not name is 403.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, SaltString},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lb_tests::{
    echo_backend::echo_backend,
    lb_run::{LbRun, metric, wait_for},
};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test/";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JWKS with the public half of fixture key `name`, key id `kid`.
fn jwks(name: &str, kid: &str) -> String {
    let all: Value = serde_json::from_slice(&fixture("public.json")).expect("public.json");
    let mut key = all[name].clone();
    key["kid"] = json!(kid);
    json!({ "keys": [key] }).to_string()
}

/// An RS256 token signed with fixture key `name`, key id `r1`.
fn mint(name: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&fixture(&format!("{name}.pem"))).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("r1".to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("encode")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> Value {
    json!({
        "iss": ISSUER,
        "aud": "proxy",
        "sub": sub,
        "exp": exp,
        "client": { "name": format!("{sub}-client") },
    })
}

fn argon2_hash(password: &str) -> String {
    let salt = SaltString::encode_b64(b"forward-proxy-salt").expect("salt");
    let params = argon2::Params::new(256, 1, 1, None).expect("params");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// curl through `proxy` with `args` (credentials): (CONNECT status, final status, lowercased
/// response heads, body).
fn curl(proxy: SocketAddr, args: &[&str], url: &str) -> (u16, u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x", &format!("http://{proxy}")])
        .args(["-D", "-", "-w", "\n%{http_connect} %{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (heads, body) = rest.rsplit_once("\r\n\r\n").unwrap_or((rest, ""));
    let mut codes = codes.split(' ').map(|c| c.parse().unwrap_or(0));
    (
        codes.next().unwrap_or(0),
        codes.next().unwrap_or(0),
        heads.to_ascii_lowercase(),
        body.to_owned(),
    )
}

fn bearer(token: &str) -> String {
    format!("Proxy-Authorization: Bearer {token}")
}

fn logged(log: &Path, parts: &[&str]) -> String {
    let mut found = String::new();
    wait_for("the access log line", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            Some(line) => {
                found = line.to_owned();
                true
            }
            None => false,
        }
    });
    found
}

#[test]
fn bearer_tokens_name_the_proxy_user() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-fwd-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("jwks.json");
    std::fs::write(&keys, jwks("rsa1", "r1")).expect("jwks");
    let users = dir.join("proxy-users");
    std::fs::write(&users, format!("alice:{}\n", argon2_hash("pw"))).expect("users");
    let log = dir.join("access.log");
    let o = origin.port();
    let file = format!(
        r#"
[[jwt_provider]]
name = "idp"
issuer = "{ISSUER}"
audiences = ["proxy"]
jwks_file = "{keys}"

[[listener]]
name = "both"
address = "127.0.0.1:0"
mode = "forward_proxy"
proxy_auth_file = "{users}"
proxy_jwt_provider = "idp"
sni_ports = []
  [[listener.egress_rule]]
  name = "known-clients"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}]
  users = ["svc-a", "alice"]

[[listener]]
name = "bearer"
address = "127.0.0.1:0"
mode = "forward_proxy"
proxy_jwt_provider = "idp"
proxy_jwt_claim = "client.name"
  [[listener.egress_rule]]
  name = "svc-b-client"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}]
  users = ["svc-b-client"]
"#,
        keys = keys.display(),
        users = users.display(),
    );
    let lb = LbRun::start("fwd-jwt", &file, &["--access-log", &log.to_string_lossy()]);
    let both = lb.listener("both");
    let url = format!("http://{origin}/who");
    let good = mint("rsa1", &claims("svc-a", now() + 3600));

    // A valid token: through, as svc-a, the token not forwarded.
    let (_, status, heads, body) = curl(both, &["--proxy-header", &bearer(&good)], &url);
    assert_eq!(status, 200, "{heads}{body}");
    assert!(!body.contains("proxy-authorization"), "{body}");
    assert!(!body.contains(&good), "{body}");
    let line = logged(&log, &["\"kind\":\"egress\"", "\"user\":\"svc-a\""]);
    assert!(line.contains("\"rule\":\"known-clients\""), "{line}");
    // A CONNECT tunnel carries the same identity.
    let (connect, status, _, body) = curl(
        both,
        &["--proxytunnel", "--proxy-header", &bearer(&good)],
        &url,
    );
    assert_eq!((connect, status), (200, 200), "{body}");
    logged(
        &log,
        &[
            "\"method\":\"CONNECT\"",
            "\"user\":\"svc-a\"",
            "\"status\":200",
        ],
    );
    // Basic users still work on the same listener.
    let (_, status, heads, _) = curl(both, &["--proxy-user", "alice:pw"], &url);
    assert_eq!(status, 200, "{heads}");

    // A valid token of a user no rule names: the rules decide, 403.
    let other = mint("rsa1", &claims("svc-z", now() + 3600));
    let (_, status, heads, _) = curl(both, &["--proxy-header", &bearer(&other)], &url);
    assert_eq!(status, 403, "{heads}");

    // No credentials: 407 with both schemes offered.
    let (_, status, heads, _) = curl(both, &[], &url);
    assert_eq!(status, 407, "{heads}");
    assert!(
        heads.contains("proxy-authenticate: basic realm=\"lb\""),
        "{heads}"
    );
    assert!(
        heads.contains("proxy-authenticate: bearer realm=\"lb\"\r\n"),
        "{heads}"
    );
    // Expired, signed by another key, or not a token: 407, the Bearer challenge saying why.
    let expired = mint("rsa1", &claims("svc-a", now() - 3600));
    let forged = mint("rsa2", &claims("svc-a", now() + 3600));
    for token in [expired.as_str(), forged.as_str(), "not.a.token"] {
        let (connect, status, heads, _) = curl(both, &["--proxy-header", &bearer(token)], &url);
        assert_eq!((connect, status), (0, 407), "{token}: {heads}");
        assert!(
            heads.contains("proxy-authenticate: bearer realm=\"lb\", error=\"invalid_token\""),
            "{heads}"
        );
        assert!(heads.contains("proxy-authenticate: basic"), "{heads}");
    }
    assert_eq!(
        metric(
            &lb,
            "lb_egress_decisions_total{listener=\"both\",decision=\"unauthenticated\",rule=\"invalid_token\"}"
        ),
        3.0
    );

    // The configured claim names the user; only Bearer is offered; Basic is not taken.
    let bearer_only = lb.listener("bearer");
    let b = mint("rsa1", &claims("svc-b", now() + 3600));
    let (_, status, heads, _) = curl(bearer_only, &["--proxy-header", &bearer(&b)], &url);
    assert_eq!(status, 200, "{heads}");
    logged(
        &log,
        &["\"listener\":\"bearer\"", "\"user\":\"svc-b-client\""],
    );
    let (_, status, heads, _) = curl(bearer_only, &["--proxy-user", "alice:pw"], &url);
    assert_eq!(status, 407, "{heads}");
    assert!(!heads.contains("basic"), "{heads}");
    assert!(heads.contains("proxy-authenticate: bearer"), "{heads}");
    // A token without the claim names nobody.
    let mut nameless = claims("svc-b", now() + 3600);
    nameless.as_object_mut().expect("object").remove("client");
    let nameless = mint("rsa1", &nameless);
    let (_, status, heads, _) = curl(bearer_only, &["--proxy-header", &bearer(&nameless)], &url);
    assert_eq!(status, 407, "{heads}");
}
