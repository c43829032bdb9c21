//! Forward-proxy listeners (`mode = "forward_proxy"`) through `lb run`, with curl as the
//! client (`-x`, `--proxytunnel`, `--proxy-user`) and origins on 127.0.0.1. Loopback is what
//! the SSRF guard refuses by default, so the listeners that reach the origins carry rules
//! naming 127.0.0.0/8 explicitly; one listener without rules shows the refusal. Shown: a
//! CONNECT tunnel and an absolute-form GET reach an allowed origin (Via added, hop-by-hop and
//! Proxy-* headers not forwarded); each malformed CONNECT target gets NGINX's status; a
//! refused origin is 502; denials by host, port and CIDR are 403, logged and counted with
//! their rule; report mode lets a denial through and says so; 407 without or with wrong
//! credentials, through with the right ones, the user in the access log; a reload that
//! changes the rules takes effect on the same address.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, SaltString},
};
use lb_tests::{
    echo_backend::echo_backend,
    lb_run::{LbRun, RefusedPort, metric, wait_for},
};

/// An argon2id PHC string for `password` (small parameters: the test is about the format).
fn argon2_hash(password: &str) -> String {
    let salt = SaltString::encode_b64(b"forward-proxy-salt").expect("salt");
    let params = argon2::Params::new(256, 1, 1, None).expect("params");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// curl through `proxy` (extra curl arguments first): (CONNECT status, final status, body).
fn curl(proxy: SocketAddr, args: &[&str], url: &str) -> (u16, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x", &format!("http://{proxy}")])
        .args(["-w", "\n%{http_connect} %{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut codes = codes.split(' ').map(|c| c.parse().unwrap_or(0));
    (
        codes.next().unwrap_or(0),
        codes.next().unwrap_or(0),
        body.to_owned(),
    )
}

/// One raw request head on a new connection: the status line's code (0: none).
fn raw(proxy: SocketAddr, head: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(proxy).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    tcp.write_all(head.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the head (the connection may stay open after a CONNECT answer).
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// As `raw`, reading until the other side closes.
fn raw_all(proxy: SocketAddr, bytes: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(proxy).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    tcp.write_all(bytes.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

struct Rig {
    lb: LbRun,
    origin: SocketAddr,
    refused: RefusedPort,
    log: std::path::PathBuf,
    _runtime: tokio::runtime::Runtime,
}

/// `lb run` with four forward-proxy listeners: `fwd` (enforce; a host, a port and a CIDR
/// denied, loopback allowed to the origin's and the refused port), `report` (the same host
/// denial in report mode), `strict` (loopback and metadata names allowed by name only, which
/// the SSRF guard does not take) and `auth` (credentials, alice only).
fn rig(tag: &str) -> Rig {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = runtime.block_on(echo_backend());
    let refused = RefusedPort::new();
    let dir = std::env::temp_dir().join(format!("lb-fwd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let users = dir.join("proxy-users");
    std::fs::write(
        &users,
        format!(
            "# proxy users\nalice:{}\nbob:{}\n",
            argon2_hash("secret"),
            argon2_hash("hunter2")
        ),
    )
    .expect("users file");
    let (o, r) = (origin.port(), refused.addr.port());
    let file = format!(
        r#"
[[listener]]
name = "fwd"
address = "127.0.0.1:0"
mode = "forward_proxy"
  [[listener.egress_rule]]
  name = "no-localhost-name"
  action = "deny"
  hosts = ["localhost"]
  [[listener.egress_rule]]
  name = "no-ssh"
  action = "deny"
  ports = [22]
  [[listener.egress_rule]]
  name = "no-127-0-0-2"
  action = "deny"
  cidrs = ["127.0.0.2/32"]
  [[listener.egress_rule]]
  name = "test-origins"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}, {r}]

[[listener]]
name = "report"
address = "127.0.0.1:0"
mode = "forward_proxy"
egress_mode = "report"
  [[listener.egress_rule]]
  name = "no-localhost-name"
  action = "deny"
  hosts = ["localhost"]
  [[listener.egress_rule]]
  name = "test-origins"
  action = "allow"
  cidrs = ["127.0.0.0/8", "::1/128"]
  ports = [{o}]

[[listener]]
name = "strict"
address = "127.0.0.1:0"
mode = "forward_proxy"
  [[listener.egress_rule]]
  name = "by-name-only"
  action = "allow"
  hosts = ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]", "169.254.169.254"]
  ports = [{o}, 80]

[[listener]]
name = "auth"
address = "127.0.0.1:0"
mode = "forward_proxy"
proxy_auth_file = "{users}"
  [[listener.egress_rule]]
  name = "alice-local"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{o}]
  users = ["alice"]
"#,
        users = users.display()
    );
    let log = dir.join("access.log");
    let lb = LbRun::start(tag, &file, &["--access-log", &log.to_string_lossy()]);
    Rig {
        lb,
        origin,
        refused,
        log,
        _runtime: runtime,
    }
}

/// The access log's lines once one contains every one of `parts`.
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
fn tunnels_and_absolute_form_requests_reach_allowed_origins() {
    let rig = rig("ok");
    let proxy = rig.lb.listener("fwd");
    let url = format!("http://{}/through", rig.origin);
    // CONNECT, then HTTP inside the tunnel: the origin sees curl's own request.
    let (connect, status, body) = curl(proxy, &["--proxytunnel"], &url);
    assert_eq!((connect, status), (200, 200), "{body}");
    assert!(!body.contains("via:"), "a tunnel is not touched: {body}");
    // Absolute form: lb forwards it with Via, without Proxy-* and hop-by-hop headers.
    let (_, status, body) = curl(
        proxy,
        &[
            "-H",
            "Proxy-Authorization: Basic c2VjcmV0",
            "-H",
            "Connection: x-hop",
            "-H",
            "X-Hop: drop me",
            "-H",
            "X-Kept: yes",
        ],
        &url,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("via: 1.1 lb"), "{body}");
    assert!(body.contains(&format!("host: {}", rig.origin)), "{body}");
    assert!(body.contains("x-kept: yes"), "{body}");
    for gone in ["proxy-authorization", "proxy-connection", "x-hop"] {
        assert!(!body.contains(gone), "{gone} forwarded: {body}");
    }
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"fwd\",decision=\"allow\",rule=\"test-origins\"}"
        ),
        2.0
    );
    let line = logged(&rig.log, &["\"kind\":\"egress\"", "\"method\":\"CONNECT\""]);
    assert!(line.contains("\"decision\":\"allow\""), "{line}");
    assert!(line.contains("\"rule\":\"test-origins\""), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    // Written when the tunnel closed, with what went through it each way.
    let line: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert!(line["bytes_up"].as_u64() > Some(0), "{line}");
    assert!(line["bytes_down"].as_u64() > Some(0), "{line}");
    assert_eq!(
        line["address"],
        format!("{}", rig.origin),
        "the address dialed"
    );
    // An absolute-form request's line is written when its response is over, with the body
    // bytes each way.
    let (_, status, body) = curl(proxy, &["--data-binary", "0123456789"], &url);
    assert_eq!(status, 200, "{body}");
    let line = logged(&rig.log, &["\"kind\":\"egress\"", "\"method\":\"POST\""]);
    let line: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(line["bytes_up"].as_u64(), Some(10), "{line}");
    assert_eq!(
        line["bytes_down"].as_u64(),
        Some(body.len() as u64),
        "{line}"
    );
    // Bytes sent right behind the CONNECT head (before the 200 arrived) reach the origin.
    let (status, text) = raw_all(
        proxy,
        &format!(
            "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\nGET /early HTTP/1.1\r\nHost: early\r\nConnection: close\r\n\r\n",
            rig.origin
        ),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Connection established"), "{text}");
    assert!(text.contains("host: early"), "the origin answered: {text}");
    // A refused origin: 502 for CONNECT and for a plain request.
    let refused = format!("http://{}/", rig.refused.addr);
    assert_eq!(curl(proxy, &["--proxytunnel"], &refused).0, 502);
    assert_eq!(curl(proxy, &[], &refused).1, 502);
}

#[test]
fn malformed_targets_get_nginx_statuses() {
    let rig = rig("bad");
    let proxy = rig.lb.listener("fwd");
    let o = rig.origin.port();
    let connect = |target: &str, version: &str| {
        raw(
            proxy,
            &format!("CONNECT {target} HTTP/{version}\r\nHost: {target}\r\n\r\n"),
        )
    };
    for target in [
        format!("127.0.0.1:{o}/"),
        format!("127.0.0.1:{o}?"),
        format!("127.0.0.1:{o}#"),
        format!("user@127.0.0.1:{o}"),
        format!("http://127.0.0.1:{o}"),
        "127.0.0.1".to_owned(),
        format!(":{o}"),
        "127.0.0.1:65536".to_owned(),
        "127.0.0.1:ssh".to_owned(),
    ] {
        let (status, text) = connect(&target, "1.1");
        assert_eq!(status, 400, "CONNECT {target}: {text}");
    }
    let (status, text) = connect(&format!("127.0.0.1:{o}"), "1.0");
    assert_eq!(status, 405, "{text}");
    // Origin form is not a proxy request; https:// goes by CONNECT.
    let (status, _) = raw(proxy, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _) = raw(proxy, "GET https://a/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status, 400);
    // The well-formed one is answered 200.
    assert_eq!(connect(&format!("127.0.0.1:{o}"), "1.1").0, 200);
}

#[test]
fn denials_by_host_port_and_cidr_are_logged_and_counted() {
    let rig = rig("deny");
    let proxy = rig.lb.listener("fwd");
    let o = rig.origin.port();
    let cases = [
        (format!("http://localhost:{o}/"), "no-localhost-name"),
        ("http://127.0.0.1:22/".to_owned(), "no-ssh"),
        (format!("http://127.0.0.2:{o}/"), "no-127-0-0-2"),
    ];
    for (url, rule) in &cases {
        assert_eq!(curl(proxy, &["--proxytunnel"], url).0, 403, "{url}");
        assert_eq!(curl(proxy, &[], url).1, 403, "{url}");
        assert_eq!(
            metric(
                &rig.lb,
                &format!(
                    "lb_egress_decisions_total{{listener=\"fwd\",decision=\"deny\",rule=\"{rule}\"}}"
                )
            ),
            2.0,
            "{rule}"
        );
        let line = logged(
            &rig.log,
            &["\"decision\":\"deny\"", &format!("\"rule\":\"{rule}\"")],
        );
        assert!(line.contains("\"status\":403"), "{line}");
    }
    // Report mode: the same host denial is let through, and said so.
    let report = rig.lb.listener("report");
    let url = format!("http://localhost:{o}/reported");
    assert_eq!(curl(report, &["--proxytunnel"], &url).0, 200);
    assert_eq!(curl(report, &[], &url).1, 200);
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"report\",decision=\"report\",rule=\"no-localhost-name\"}"
        ),
        2.0
    );
    logged(
        &rig.log,
        &["\"listener\":\"report\"", "\"decision\":\"report\""],
    );
}

#[test]
fn the_ssrf_guard_refuses_loopback_and_metadata_unless_a_cidr_allows_them() {
    let rig = rig("ssrf");
    let strict = rig.lb.listener("strict");
    let o = rig.origin.port();
    for url in [
        format!("http://127.0.0.1:{o}/"),
        format!("http://localhost:{o}/"),
        format!("http://[::ffff:127.0.0.1]:{o}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        assert_eq!(curl(strict, &["--proxytunnel"], &url).0, 403, "{url}");
        assert_eq!(curl(strict, &[], &url).1, 403, "{url}");
    }
    // What no rule allows is denied (default deny), decided before any connection is made.
    assert_eq!(
        raw(strict, "CONNECT 8.8.8.8:443 HTTP/1.1\r\nHost: x\r\n\r\n").0,
        403
    );
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"strict\",decision=\"deny\",rule=\"default\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"strict\",decision=\"deny\",rule=\"ssrf:loopback\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"strict\",decision=\"deny\",rule=\"ssrf:link_local\"}"
        ),
        2.0
    );
}

#[test]
fn proxy_authentication() {
    let rig = rig("auth");
    let proxy = rig.lb.listener("auth");
    let url = format!("http://{}/auth", rig.origin);
    // No credentials: 407 with the challenge.
    let (status, text) = raw(
        proxy,
        &format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", rig.origin),
    );
    assert_eq!(status, 407, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"lb\""),
        "{text}"
    );
    assert_eq!(curl(proxy, &["--proxytunnel"], &url).0, 407);
    assert_eq!(curl(proxy, &[], &url).1, 407);
    // Wrong password, unknown user.
    for user in ["alice:wrong", "carol:secret"] {
        assert_eq!(
            curl(proxy, &["--proxytunnel", "--proxy-user", user], &url).0,
            407
        );
        assert_eq!(curl(proxy, &["--proxy-user", user], &url).1, 407);
    }
    // Right credentials: through, and the credentials stay with lb.
    let (connect, status, _) = curl(
        proxy,
        &["--proxytunnel", "--proxy-user", "alice:secret"],
        &url,
    );
    assert_eq!((connect, status), (200, 200));
    let (_, status, body) = curl(proxy, &["--proxy-user", "alice:secret"], &url);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("proxy-authorization"), "{body}");
    // bob authenticates, but the rule is alice's: loopback stays refused for him.
    assert_eq!(curl(proxy, &["--proxy-user", "bob:hunter2"], &url).1, 403);
    let line = logged(&rig.log, &["\"user\":\"alice\"", "\"method\":\"GET\""]);
    assert!(line.contains("\"rule\":\"alice-local\""), "{line}");
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"auth\",decision=\"unauthenticated\",rule=\"missing\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &rig.lb,
            "lb_egress_decisions_total{listener=\"auth\",decision=\"unauthenticated\",rule=\"invalid\"}"
        ),
        4.0
    );
}

#[test]
fn a_reload_applies_new_rules() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = runtime.block_on(echo_backend());
    let file = |address: &str, allow: bool| {
        let rule = if allow {
            format!(
                "  [[listener.egress_rule]]\n  name = \"origin\"\n  action = \"allow\"\n  cidrs = [\"127.0.0.0/8\"]\n  ports = [{}]\n",
                origin.port()
            )
        } else {
            String::new()
        };
        format!(
            "[[listener]]\nname = \"fwd\"\naddress = \"{address}\"\nmode = \"forward_proxy\"\n{rule}"
        )
    };
    let lb = LbRun::start("fwd-reload", &file("127.0.0.1:0", true), &[]);
    let proxy = lb.listener("fwd");
    let url = format!("http://{origin}/");
    assert_eq!(curl(proxy, &["--proxytunnel"], &url).0, 200);
    // Same address, the allow rule gone: the listener restarts with the new rules.
    let tmp = lb.file.with_extension("tmp");
    std::fs::write(&tmp, file(&proxy.to_string(), false)).expect("write");
    std::fs::rename(&tmp, &lb.file).expect("rename");
    wait_for("the reload", Duration::from_secs(20), || {
        lb.status()["config"]["reloads_ok"].as_u64() == Some(1)
    });
    assert_eq!(lb.listener_now("fwd"), Some(proxy));
    assert_eq!(curl(proxy, &["--proxytunnel"], &url).0, 403);
    assert_eq!(
        metric(
            &lb,
            "lb_egress_decisions_total{listener=\"fwd\",decision=\"deny\",rule=\"default\"}"
        ),
        1.0,
        "no rule left: denied unresolved, by default"
    );
}

#[test]
fn https_through_connect_with_curl_and_python() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = runtime.block_on(lb_tests::http_server::start(
        lb_tests::http_server::Behaviour {
            tls: true,
            ..Default::default()
        },
    ));
    let plain = runtime.block_on(echo_backend());
    let file = format!(
        "[[listener]]\nname = \"fwd\"\naddress = \"127.0.0.1:0\"\nmode = \"forward_proxy\"\n\
         connect_http10 = true\n\
         [[listener.egress_rule]]\nname = \"origins\"\naction = \"allow\"\n\
         cidrs = [\"127.0.0.0/8\"]\nports = [{}, {}]\n",
        origin.addr.port(),
        plain.port()
    );
    let lb = LbRun::start("fwd-https", &file, &[]);
    let proxy = lb.listener("fwd");
    let ca = lb.dir.join("origin.pem");
    std::fs::write(&ca, &origin.cert_pem).expect("write the CA");
    let ca = ca.to_string_lossy().into_owned();
    // The certificate is for "localhost": the client verifies it end to end through the
    // tunnel (lb resolves the name, checks 127.0.0.1 against the rule, splices).
    let url = format!("https://localhost:{}/", origin.addr.port());
    let (connect, status, body) = curl(proxy, &["--cacert", &ca], &url);
    assert_eq!((connect, status), (200, 200), "{body}");
    // Python's urllib through the proxy: https by CONNECT (over HTTP/1.0 before Python 3.12:
    // hence connect_http10), http in absolute form.
    let script = format!(
        r#"
import ssl, urllib.request
proxy = "http://{proxy}"
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({{"https": proxy, "http": proxy}}),
    urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile="{ca}")),
)
print(opener.open("{url}", timeout=20).status)
body = opener.open("http://{plain}/py", timeout=20).read().decode()
print("via: 1.1 lb" in body)
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200\nTrue\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metric(
            &lb,
            "lb_egress_decisions_total{listener=\"fwd\",decision=\"allow\",rule=\"origins\"}"
        ),
        3.0
    );
}

#[test]
fn tunnels_to_tls_ports_carry_only_the_connect_host_or_an_allowed_name() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = runtime.block_on(lb_tests::http_server::start(
        lb_tests::http_server::Behaviour {
            tls: true,
            ..Default::default()
        },
    ));
    let port = origin.addr.port();
    // openssl s_client speaks CONNECT over HTTP/1.0.
    let file = format!(
        "[[listener]]\nname = \"fwd\"\naddress = \"127.0.0.1:0\"\nmode = \"forward_proxy\"\n\
         connect_http10 = true\nsni_ports = [{port}]\n\
         [[listener.egress_rule]]\nname = \"origins\"\naction = \"allow\"\n\
         cidrs = [\"127.0.0.0/8\"]\nports = [{port}]\n\
         [[listener.egress_rule]]\nname = \"named\"\naction = \"allow\"\n\
         hosts = [\"allowed.test\"]\nports = [{port}]\n"
    );
    let log = std::env::temp_dir().join(format!("lb-fwd-sni-{}.log", std::process::id()));
    let lb = LbRun::start("fwd-sni", &file, &["--access-log", &log.to_string_lossy()]);
    let proxy = lb.listener("fwd");
    // A real TLS client through the proxy: CONNECT localhost:PORT, then a ClientHello naming
    // `server_name` (None: none). True when the handshake completed.
    let handshake = |server_name: Option<&str>| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-proxy", &proxy.to_string()])
            .args(["-connect", &format!("localhost:{port}")]);
        match server_name {
            Some(name) => cmd.args(["-servername", name]),
            None => cmd.arg("-noservername"),
        };
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("CONNECTED"), "{text}");
        text.contains(", Cipher is TLS_")
    };
    assert!(handshake(Some("localhost")), "the CONNECT host itself");
    assert!(handshake(Some("allowed.test")), "a name a rule allows");
    // Domain fronting: CONNECT to one name, a ClientHello for another: closed.
    assert!(!handshake(Some("evil.test")));
    assert!(!handshake(None), "no server name at all");
    let line = logged(&log, &["\"sni\":\"evil.test\""]);
    assert!(line.contains("\"rule\":\"sni_mismatch\""), "{line}");
    assert!(line.contains("\"decision\":\"deny\""), "{line}");
    logged(&log, &["\"rule\":\"sni_missing\""]);
    assert_eq!(
        metric(
            &lb,
            "lb_egress_decisions_total{listener=\"fwd\",decision=\"deny\",rule=\"sni_mismatch\"}"
        ),
        1.0
    );
    drop(lb);
    let _ = std::fs::remove_file(&log);
}

/// `lb bench -x`: each connection a CONNECT tunnel through the forward proxy (what
/// benches/scripts/forward_proxy.sh measures tunnels per second with); credentials with
/// `--proxy-user`; a refused CONNECT counts as a `tunnel` error.
#[test]
fn lb_bench_tunnels_through_the_forward_proxy() {
    let rig = rig("bench");
    let bench = |proxy: SocketAddr, extra: &[&str]| -> serde_json::Value {
        let out = Command::new(lb_tests::lb_bin())
            .args(["bench", "--json", "--no-keepalive", "-c", "4", "-n", "40"])
            .args(["-x", &format!("http://{proxy}")])
            .args(extra)
            .arg(format!("http://{}/bench", rig.origin))
            .output()
            .expect("lb bench");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let through = bench(rig.lb.listener("fwd"), &[]);
    assert_eq!(
        (through["ok"].as_u64(), through["errors"].as_u64()),
        (Some(40), Some(0)),
        "{through}"
    );
    let line = logged(
        &rig.log,
        &["\"method\":\"CONNECT\"", &rig.origin.to_string()],
    );
    assert!(line.contains("\"rule\":\"test-origins\""), "{line}");

    let authed = bench(rig.lb.listener("auth"), &["--proxy-user", "alice:secret"]);
    assert_eq!(authed["ok"].as_u64(), Some(40), "{authed}");
    let refused = bench(rig.lb.listener("auth"), &[]);
    assert_eq!(refused["ok"].as_u64(), Some(0), "{refused}");
    assert_eq!(
        refused["error_kinds"]["tunnel"].as_u64(),
        Some(40),
        "{refused}"
    );
}
