//! What a forward-proxy listener does with absolute-form requests to origins, through `lb run`
//! with curl as the client (`-x`) and origins on 127.0.0.1 that count the requests (per path)
//! and the connections they get. Shown: with `[listener.cache]`, a repeated cacheable GET is
//! answered by lb without reaching the origin (HIT in `X-Cache-Status`, the access log and
//! `lb_egress_cache_requests_total`), a `no-store` one is fetched every time, two origins
//! with the same path are never mixed; the egress decision comes before the cache (a user
//! the rules deny, and the SSRF guard once a reload took the loopback allow away, get 403
//! for a stored URL), a reload that keeps the cache settings keeps what was stored, and
//! `lb ctl purge` removes a URL from it.
//! Without a cache, two requests on one client connection reach the origin on one
//! connection (keep-alive to origins).
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, SaltString},
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_tests::lb_run::{LbRun, metric, wait_for};
use tokio::net::TcpListener;

/// An origin that counts what it gets.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    connections: Arc<AtomicU32>,
}

impl Origin {
    fn seen(&self, path: &str) -> u32 {
        self.seen
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Starts an origin on 127.0.0.1 whose bodies start with `tag`: `/nostore` says
/// `no-store`, every other path `max-age=300`; bodies count the path's requests.
async fn origin(tag: &'static str) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let connections = Arc::new(AtomicU32::new(0));
    let (s, c) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut seen = s.lock().expect("lock");
                            let n = seen.entry(path.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        let cc = if path == "/nostore" {
                            "no-store"
                        } else {
                            "max-age=300"
                        };
                        Response::builder()
                            .header("cache-control", cc)
                            .body(Full::new(Bytes::from(format!("{tag} {path} {n}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Origin {
        addr,
        seen,
        connections,
    }
}

/// An argon2id PHC string for `password` (small parameters: the test is about the format).
fn argon2_hash(password: &str) -> String {
    let salt = SaltString::encode_b64(b"forward-proxy-salt").expect("salt");
    let params = argon2::Params::new(256, 1, 1, None).expect("params");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// One curl request through `proxy` as `user` (password "pw"): (status, lowercased
/// response head, body).
fn curl(proxy: SocketAddr, user: &str, url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "20",
            "-x",
            &format!("http://{proxy}"),
        ])
        .args(["--proxy-user", &format!("{user}:pw")])
        .arg(url)
        .output()
        .expect("curl (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The first access log line that contains every one of `parts`, once there is one.
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

/// The backend file: `cached` (a cache; bob denied; the origins' ports allowed, their
/// loopback addresses only when `loopback`) and `plain` (no cache), both asking for Basic credentials.
fn file(users: &Path, ports: &[u16], loopback: bool, address: &str) -> String {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // Without `cidrs` the rule allows the ports but not a loopback address: the SSRF guard
    // refuses it.
    let cidrs = if loopback {
        "  cidrs = [\"127.0.0.0/8\"]\n"
    } else {
        ""
    };
    let allow = format!(
        "  [[listener.egress_rule]]\n  name = \"test-origins\"\n  action = \"allow\"\n{cidrs}  ports = [{ports}]\n"
    );
    format!(
        r#"
[[listener]]
name = "cached"
address = "{address}"
mode = "forward_proxy"
proxy_auth_file = "{users}"
  [listener.cache]
  max_bytes = 1048576
  [[listener.egress_rule]]
  name = "not-bob"
  action = "deny"
  users = ["bob"]
{allow}
[[listener]]
name = "plain"
address = "127.0.0.1:0"
mode = "forward_proxy"
proxy_auth_file = "{users}"
  [[listener.egress_rule]]
  name = "test-origins"
  action = "allow"
  cidrs = ["127.0.0.0/8"]
  ports = [{ports}]
"#,
        users = users.display()
    )
}

fn users_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-fwd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let users = dir.join("proxy-users");
    std::fs::write(
        &users,
        format!("alice:{}\nbob:{}\n", argon2_hash("pw"), argon2_hash("pw")),
    )
    .expect("users file");
    users
}

#[test]
fn cacheable_gets_are_served_from_the_cache_after_the_egress_decision() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (one, two) = runtime.block_on(async { (origin("one").await, origin("two").await) });
    let users = users_file("cache");
    let ports = [one.addr.port(), two.addr.port()];
    let log = users.with_file_name("access.log");
    let lb = LbRun::start(
        "fwd-cache",
        &file(&users, &ports, true, "127.0.0.1:0"),
        &["--access-log", &log.to_string_lossy()],
    );
    let proxy = lb.listener("cached");
    let fresh = format!("http://{}/fresh?x=1", one.addr);

    // The first GET fills the store, the second is answered from it.
    let (status, head, body) = curl(proxy, "alice", &fresh);
    assert_eq!((status, body.as_str()), (200, "one /fresh 1"), "{head}");
    assert!(head.contains("x-cache-status: miss"), "{head}");
    let (status, head, body) = curl(proxy, "alice", &fresh);
    assert_eq!((status, body.as_str()), (200, "one /fresh 1"), "{head}");
    assert!(head.contains("x-cache-status: hit"), "{head}");
    assert!(head.contains("age: "), "{head}");
    assert_eq!(one.seen("/fresh"), 1, "the second came from lb's store");
    let line = logged(&log, &["\"kind\":\"egress\"", "\"cache\":\"HIT\""]);
    assert!(line.contains("\"user\":\"alice\""), "{line}");
    assert!(line.contains("\"path\":\"/fresh?x=1\""), "{line}");
    logged(&log, &["\"kind\":\"egress\"", "\"cache\":\"MISS\""]);
    assert_eq!(
        metric(
            &lb,
            "lb_egress_cache_requests_total{listener=\"cached\",status=\"HIT\"}"
        ),
        1.0
    );
    assert!(
        metric(&lb, "lb_egress_cache_entries{listener=\"cached\"}") >= 1.0,
        "the size gauges follow the store"
    );

    // Another query, another origin with the same path: separate entries.
    let (_, _, body) = curl(proxy, "alice", &format!("http://{}/fresh?x=2", one.addr));
    assert_eq!(body, "one /fresh 2");
    let (_, head, body) = curl(proxy, "alice", &format!("http://{}/fresh?x=1", two.addr));
    assert_eq!(
        body, "two /fresh 1",
        "never another origin's answer: {head}"
    );
    assert!(head.contains("x-cache-status: miss"), "{head}");

    // no-store: fetched each time.
    let nostore = format!("http://{}/nostore", one.addr);
    for n in 1..=2 {
        let (status, head, body) = curl(proxy, "alice", &nostore);
        assert_eq!((status, body), (200, format!("one /nostore {n}")), "{head}");
        assert!(head.contains("x-cache-status: miss"), "{head}");
    }
    assert_eq!(one.seen("/nostore"), 2);

    // The rules decide first: bob is denied what alice stored.
    let (status, head, _) = curl(proxy, "bob", &fresh);
    assert_eq!(status, 403, "{head}");
    assert!(!head.contains("x-cache-status"), "{head}");

    // A reload that takes the loopback allow away (the cache settings unchanged): the SSRF
    // guard refuses the stored URL.
    let reload = |loopback: bool, n: u64| {
        let tmp = lb.file.with_extension("tmp");
        std::fs::write(&tmp, file(&users, &ports, loopback, &proxy.to_string())).expect("write");
        std::fs::rename(&tmp, &lb.file).expect("rename");
        wait_for("the reload", Duration::from_secs(20), || {
            lb.status()["config"]["reloads_ok"].as_u64() == Some(n)
        });
    };
    reload(false, 1);
    let (status, head, _) = curl(proxy, "alice", &fresh);
    assert_eq!(status, 403, "{head}");
    logged(&log, &["\"kind\":\"egress\"", "\"rule\":\"ssrf:loopback\""]);
    // Allowed again: the listener restarted with the same cache settings, and its store.
    reload(true, 2);
    let (status, head, body) = curl(proxy, "alice", &fresh);
    assert_eq!((status, body.as_str()), (200, "one /fresh 1"), "{head}");
    assert!(head.contains("x-cache-status: hit"), "{head}");
    assert_eq!(one.seen("/fresh"), 2, "the ?x=2 fetch only");

    // `lb ctl purge` reaches listeners' caches: the key's URL is the target's.
    let out = Command::new(lb_tests::lb_bin())
        .args(["ctl", "--admin", &lb.admin.to_string(), "purge", &fresh])
        .output()
        .expect("lb ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("purged 1"), "{out:?}");
    let (status, head, body) = curl(proxy, "alice", &fresh);
    assert_eq!((status, body.as_str()), (200, "one /fresh 3"), "{head}");
    assert!(head.contains("x-cache-status: miss"), "{head}");
}

#[test]
fn requests_on_one_client_connection_share_one_origin_connection() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let one = runtime.block_on(origin("one"));
    let users = users_file("keepalive");
    let lb = LbRun::start(
        "fwd-keepalive",
        &file(&users, &[one.addr.port()], true, "127.0.0.1:0"),
        &[],
    );
    let proxy = lb.listener("plain");
    // Two URLs in one curl: one connection to lb (curl reports a connect for the first
    // transfer only), two requests on it.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x", &format!("http://{proxy}")])
        .args(["--proxy-user", "alice:pw", "-w", "\n%{num_connects}\n"])
        .arg(format!("http://{}/a", one.addr))
        .arg(format!("http://{}/b", one.addr))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text, "one /a 1\n1\none /b 1\n0\n", "{out:?}");
    assert_eq!((one.seen("/a"), one.seen("/b")), (1, 1));
    assert_eq!(
        one.connections.load(Ordering::SeqCst),
        1,
        "the second request went on the first one's origin connection"
    );
    // A new client connection reuses the kept origin connection too.
    let (status, _, body) = curl(proxy, "alice", &format!("http://{}/c", one.addr));
    assert_eq!((status, body.as_str()), (200, "one /c 1"));
    assert_eq!(one.connections.load(Ordering::SeqCst), 1);
}
