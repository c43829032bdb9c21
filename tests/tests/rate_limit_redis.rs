//! `store = "redis"` rate limits across several `lb run` processes sharing one real
//! `redis-server` (started by the test on a unix socket in a private directory: no port to
//! pick, nothing to race with; killed and removed on drop, also when a test fails).
//!
//! Rates are 1/h: no key earns budget back while a test runs, so every count is exact on any
//! machine; nothing waits on a sleep (a restarted Redis is noticed by polling request
//! outcomes, with a give-up bound only for a hang).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    lb_bin,
    lb_run::{LbRun, http, wait_for},
};

const REDIS: &str = "/usr/bin/redis-server";

/// redis-server present, or: fail under CI, skip (with a message) elsewhere.
fn redis_available(test: &str) -> bool {
    if Path::new(REDIS).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {REDIS} (cargo xtask setup installs redis-server) and CI=true");
    }
    eprintln!("skipping {test}: {REDIS} not found (cargo xtask setup installs redis-server)");
    false
}

/// A redis-server on `dir/redis.sock` (no TCP: `--port 0`), no persistence.
struct Redis {
    child: Option<Child>,
    dir: PathBuf,
}

impl Redis {
    fn start(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-redis-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Self { child: None, dir };
        redis.restart();
        redis
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts (again) on the same socket; returns once it answers PING.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(REDIS)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let socket = self.socket();
        wait_for("redis-server answering", Duration::from_secs(10), || {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                return false;
            };
            let mut reply = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A backend file: one listener, one route answering 200 itself, limited by `x-key`.
fn lb_file(redis: &Redis, burst: u32, nodes: u32) -> String {
    format!(
        "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"api\"\nlistener = \"main\"\n\
         respond = {{ status = 200, body = \"ok\\n\" }}\n\
         [[route.rate_limit]]\nname = \"shared\"\nkey = \"header:x-key\"\nrate = \"1/h\"\n\
         burst = {burst}\nstore = \"redis\"\nredis = \"redis+unix://{}\"\n\
         redis_timeout = \"5s\"\nnodes = {nodes}\n",
        redis.socket().display()
    )
}

/// What a test looks at in an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    ratelimit: Option<String>,
}

/// One request with `x-key: KEY` on a new connection.
fn get(addr: SocketAddr, key: &str) -> Answer {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: t\r\nx-key: {key}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let head = out.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut answer = Answer {
        status,
        retry_after: None,
        ratelimit: None,
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "retry-after" => answer.retry_after = Some(value.trim().to_owned()),
                "ratelimit" => answer.ratelimit = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    answer
}

/// Statuses of `n` requests for `key`, sent to the nodes in turn.
fn round_robin(nodes: &[LbRun], key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| get(nodes[i % nodes.len()].listener("main"), key).status)
        .collect()
}

/// The value of the series `name{route="api",limit="shared",key="header"}` of one node.
fn metric(lb: &LbRun, name: &str) -> u64 {
    let (code, body) = http("GET", lb.admin, "/metrics");
    assert_eq!(code, 200);
    let series = format!("{name}{{route=\"api\",limit=\"shared\",key=\"header\"}}");
    body.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn total(nodes: &[LbRun], name: &str) -> u64 {
    nodes.iter().map(|lb| metric(lb, name)).sum()
}

fn start_nodes(tag: &str, file: &str, n: usize) -> Vec<LbRun> {
    (0..n).map(|_| LbRun::start(tag, file, &[])).collect()
}

#[test]
fn three_nodes_share_one_budget_per_key() {
    if !redis_available("three_nodes_share_one_budget_per_key") {
        return;
    }
    let redis = Redis::start("share");
    let nodes = start_nodes("rl-share", &lb_file(&redis, 5, 3), 3);
    let mut seen = Vec::new();
    for i in 0..15 {
        seen.push(get(nodes[i % 3].listener("main"), "alice"));
    }
    let allowed = |r: u32, t: u32| Answer {
        status: 200,
        retry_after: None,
        ratelimit: Some(format!("\"shared\";r={r};t={t}")),
    };
    let limited = Answer {
        status: 429,
        retry_after: Some("3600".into()),
        ratelimit: Some("\"shared\";r=0;t=18000".into()),
    };
    // One budget, whichever node is asked: 5 pass (the remaining count falls across the
    // nodes), the other 10 are 429 with the wait the shared TAT gives.
    let mut want: Vec<Answer> = (0..5u32).map(|i| allowed(4 - i, 3600 * (i + 1))).collect();
    want.extend(std::iter::repeat_n(limited, 10));
    assert_eq!(seen, want);
    // Another key has its own budget.
    assert_eq!(
        round_robin(&nodes, "bob", 7),
        [200, 200, 200, 200, 200, 429, 429]
    );
    // Redis said no twice for each key: the first 429 on each of the two nodes whose last
    // answer still left budget. The node that allowed the fifth request knew the key was
    // spent, and so did each node after its own 429: alice's other eight 429s came from the
    // local pre-check, without a round trip.
    assert_eq!(total(&nodes, "lb_rate_limited_total"), 12);
    assert_eq!(total(&nodes, "lb_rate_limit_prechecked_total"), 8);
    assert_eq!(total(&nodes, "lb_rate_limit_fallback_total"), 0);
    assert_eq!(total(&nodes, "lb_rate_limit_redis_errors_total"), 0);
}

#[test]
fn without_redis_each_node_allows_its_share_and_shared_mode_resumes() {
    if !redis_available("without_redis_each_node_allows_its_share_and_shared_mode_resumes") {
        return;
    }
    let mut redis = Redis::start("fallback");
    let nodes = start_nodes("rl-fallback", &lb_file(&redis, 6, 3), 3);
    assert_eq!(
        round_robin(&nodes, "before", 9),
        [200, 200, 200, 200, 200, 200, 429, 429, 429]
    );

    redis.kill();
    // Every node still answers (never a 5xx): 6 / 3 = 2 per key and node, locally.
    for lb in &nodes {
        let got: Vec<u16> = (0..4)
            .map(|_| get(lb.listener("main"), "during").status)
            .collect();
        assert_eq!(got, [200, 200, 429, 429]);
        // The first decision met the dead connection; all four were decided locally.
        assert_eq!(metric(lb, "lb_rate_limit_redis_errors_total"), 1);
        assert_eq!(metric(lb, "lb_rate_limit_fallback_total"), 4);
    }

    redis.restart();
    // Each node reconnects in the background. A fresh key tells the modes apart: three
    // requests pass in shared mode (burst 6), the third is refused in fallback (burst 2).
    let mut probe = 0;
    for (i, lb) in nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            probe += 1;
            let key = format!("probe-{probe}");
            let got: Vec<u16> = (0..3)
                .map(|_| get(lb.listener("main"), &key).status)
                .collect();
            if got == [200, 200, 200] {
                break;
            }
            assert_eq!(got, [200, 200, 429], "node {i}: fallback mode");
            assert!(
                Instant::now() < deadline,
                "node {i} never went back to Redis"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The shared budget applies again.
    assert_eq!(
        round_robin(&nodes, "after", 9),
        [200, 200, 200, 200, 200, 200, 429, 429, 429]
    );
    for lb in &nodes {
        assert_eq!(metric(lb, "lb_rate_limit_redis_errors_total"), 1);
    }
}

#[test]
fn redis_settings_are_checked_with_the_line() {
    let dir = std::env::temp_dir().join(format!("lb-redis-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let head = "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
                [[route]]\nlistener = \"main\"\nrespond = { status = 200 }\n\
                [[route.rate_limit]]\nkey = \"client_ip\"\nrate = \"10/s\"\n";
    let mut wrong = Vec::new();
    for (name, tail, want) in [
        (
            "no-address",
            "store = \"redis\"\n",
            "10: rate_limit: store = \"redis\" needs redis = \"HOST:PORT\" (or a redis:// URL or socket path)",
        ),
        (
            "bad-address",
            "store = \"redis\"\nredis = \"http://cache:6379\"\n",
            "11: rate_limit: redis \"http://cache:6379\": use host:port, /path.sock, redis://host:port/db or redis+unix:///path (no TLS)",
        ),
        (
            "zero-nodes",
            "store = \"redis\"\nredis = \"127.0.0.1:6379\"\nnodes = 0\n",
            "12: rate_limit: nodes 0 must be 1 or more",
        ),
        (
            "local-with-redis",
            "redis = \"127.0.0.1:6379\"\n",
            "10: rate_limit: redis applies only with store = \"redis\"",
        ),
    ] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, format!("{head}{tail}")).expect("write");
        let out = Command::new(lb_bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("run lb check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("lb: {}:{want}\n", file.display());
        if out.status.code() != Some(1) || stderr != want {
            wrong.push(format!(
                "{name}: exit {:?}\n  got:  {stderr:?}\n  want: {want:?}",
                out.status.code()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
