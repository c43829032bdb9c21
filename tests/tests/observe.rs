//! Observability of the L7 request path through `lb run`: Prometheus counts per route, status
//! and backend, the latency histogram, connect errors for a dead backend; the status page's
//! live per-backend counters and rates; the JSON access log.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_tests::{
    http_server::{self, Behaviour, TestServer},
    lb_bin,
    lb_run::{RefusedPort, admin_address, wait_for},
};

struct Lb {
    child: Child,
    dir: PathBuf,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `lb run` on `file` (written to a fresh directory) with an access log there; returns
/// it, the admin address and the address of listener "main" (configured on port 0) once it is
/// serving.
fn start(file: &str) -> (Lb, SocketAddr, SocketAddr) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lb-observe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("lb.toml"), file).expect("write");
    let mut child = Command::new(lb_bin())
        .args(["run", "--backends"])
        .arg(dir.join("lb.toml"))
        .args(["--admin", "127.0.0.1:0", "--access-log"])
        .arg(dir.join("access.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lb run");
    let stdout = child.stdout.take().expect("stdout");
    let lb = Lb { child, dir };
    let mut lines = BufReader::new(stdout).lines();
    let mut main = None;
    let admin = loop {
        let line = lines.next().expect("lb run exited").expect("read");
        if let Some(url) = line.strip_prefix("admin ") {
            break admin_address(url);
        }
        if let Some(addr) = line.strip_prefix("listening name=main address=") {
            main = Some(addr.parse().expect("listener address"));
        }
    };
    // Keep draining stdout so lb never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (lb, admin, main.expect("listener main"))
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: obs.test\r\nConnection: close\r\n{extra}\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

/// The value of the exposition line that starts with `series` (labels included).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn backend<'a>(
    status: &'a serde_json::Value,
    pool: &str,
    addr: SocketAddr,
) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["backends"].as_array())
        .and_then(|b| b.iter().find(|b| b["address"] == addr.to_string()))
        .expect("backend listed")
}

#[test]
fn metrics_status_rates_and_access_log_follow_the_requests() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let good: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let failing: TestServer = runtime.block_on(http_server::start(Behaviour {
        fail_every: 1,
        ..Behaviour::default()
    }));
    // Nothing listens here: every connection attempt is refused.
    let dead_port = RefusedPort::new();
    let dead = dead_port.addr;
    let file = format!(
        "[[pool]]\nname = \"web\"\nmax_fails = 0\nretries = 1\nretry_budget_min = 100\n\
         [[pool.backend]]\naddress = \"{dead}\"\n[[pool.backend]]\naddress = \"{good}\"\n\
         [[pool]]\nname = \"api\"\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{failing}\"\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"main\"\npath_prefix = \"/api\"\npool = \"api\"\n\
         [[route]]\nlistener = \"main\"\npool = \"web\"\n",
        good = good.addr,
        failing = failing.addr,
    );
    let (lb, admin, listen) = start(&file);

    // Route 1 (web): the dead backend's refusals are retried on the good one, so all 200.
    // Route 0 (api): the backend answers 500 (not retried). Plus one request matching nothing
    // is impossible here (route 1 is a catch-all), so 404s are left to unit tests.
    const WEB: usize = 12;
    const API: usize = 5;
    for i in 0..WEB {
        let extra = if i == 0 {
            "X-Request-Id: trace-me-1\r\n"
        } else {
            ""
        };
        let (code, body) = http(listen, &format!("/page/{i}"), extra);
        assert_eq!(code, 200, "web request {i}: {body}");
    }
    for i in 0..API {
        assert_eq!(http(listen, &format!("/api/{i}"), "").0, 500);
    }

    let metrics = http(admin, "/metrics", "").1;
    let web_ok = format!(
        "lb_http_requests_total{{listener=\"main\",route=\"1\",pool=\"web\",backend=\"{}\",status=\"200\"}}",
        good.addr
    );
    let api_500 = format!(
        "lb_http_requests_total{{listener=\"main\",route=\"0\",pool=\"api\",backend=\"{}\",status=\"500\"}}",
        failing.addr
    );
    assert_eq!(sample(&metrics, &web_ok), Some(WEB as f64), "{metrics}");
    assert_eq!(sample(&metrics, &api_500), Some(API as f64), "{metrics}");
    assert_eq!(
        metrics.matches("lb_http_requests_total{").count(),
        2,
        "only those two series: {metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "lb_http_request_duration_seconds_count{pool=\"web\"}"
        ),
        Some(WEB as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "lb_http_request_duration_seconds_count{pool=\"api\"}"
        ),
        Some(API as f64)
    );
    // Round robin over (dead, good): about every other request tried the dead one first.
    let refused = sample(
        &metrics,
        &format!("lb_upstream_connect_errors_total{{pool=\"web\",backend=\"{dead}\"}}"),
    )
    .expect("connect errors of the dead backend");
    assert!(refused >= 1.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "lb_upstream_connect_errors_total{{pool=\"web\",backend=\"{}\"}}",
                good.addr
            )
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "lb_retries_total{pool=\"web\"}"),
        Some(refused),
        "each refusal retried once"
    );

    // Status: totals now, then rates under steady traffic for a few status ticks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                http(listen, "/load", "");
                http(listen, "/api/load", "");
                n += 2;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    let read_status = || -> serde_json::Value {
        serde_json::from_str(&http(admin, "/api/status", "").1).expect("status JSON")
    };
    wait_for("rates under traffic", Duration::from_secs(5), || {
        let s = read_status();
        backend(&s, "web", good.addr)["requests_per_second"]
            .as_f64()
            .is_some_and(|r| r > 1.0)
            && backend(&s, "api", failing.addr)["error_rate"]
                .as_f64()
                .is_some_and(|r| r > 0.99)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let extra = traffic.join().expect("traffic thread");
    let s = read_status();
    let good_status = backend(&s, "web", good.addr);
    let good_requests = good_status["requests"].as_u64().expect("requests");
    assert!(good_requests >= WEB as u64, "{s}");
    assert_eq!(good_status["errors"], 0);
    assert_eq!(good_status["error_rate"], 0.0);
    let dead_status = backend(&s, "web", dead);
    assert!(
        dead_status["errors"].as_u64().is_some_and(|e| e >= 1),
        "{s}"
    );
    assert_eq!(dead_status["requests"], dead_status["errors"]);
    let api_status = backend(&s, "api", failing.addr);
    assert_eq!(
        api_status["requests"], api_status["errors"],
        "every answer a 500"
    );
    wait_for("nothing in flight", Duration::from_secs(3), || {
        let s = read_status();
        backend(&s, "api", failing.addr)["in_flight"] == 0
            && backend(&s, "web", good.addr)["in_flight"] == 0
    });

    // Access log: one JSON line per request, written when the response ended.
    let total = WEB + API + extra as usize;
    let log_path = lb.dir.join("access.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("access log lines", Duration::from_secs(5), || {
        read_log().lines().count() >= total
    });
    let text = read_log();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), total, "one line per request");
    let first = &lines[0];
    assert_eq!(first["request_id"], "trace-me-1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "obs.test");
    assert_eq!(first["path"], "/page/0");
    assert_eq!(first["listener"], "main");
    assert_eq!(first["route"], 1);
    assert_eq!(first["pool"], "web");
    assert_eq!(first["backend"], good.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 0);
    assert_eq!(
        first["bytes_out"],
        "hello from the test server\n".len() as u64
    );
    assert!(
        first["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert!(first["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(first["upstream_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(first["flow_id"].is_null(), "no XDP tier here");
    let api = lines
        .iter()
        .find(|l| l["path"] == "/api/0")
        .expect("api line");
    assert_eq!(api["status"], 500);
    assert_eq!(api["pool"], "api");
    assert_eq!(api["route"], 0);
    assert!(api["request_id"].as_str().is_some_and(|id| id.len() == 24));
    let retried = lines.iter().filter(|l| l["retries"] == 1).count();
    assert!(retried >= 1, "refused attempts were retried");
    drop(lb);
}

/// Slow start: a backend that comes back (active checks) gets a share of round robin that
/// starts at 10% of its weight and ramps, well below its steady half.
#[test]
fn a_recovered_backend_ramps_up_under_slow_start() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let b: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let (a_addr, b_addr) = (a.addr, b.addr);
    let file = format!(
        "[[pool]]\nname = \"web\"\nmax_fails = 0\nretries = 1\n\
         [pool.health_check]\ntype = \"http\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\n\
         rise = 2\nfall = 2\nslow_start = \"30s\"\n\
         [[pool.backend]]\naddress = \"{a_addr}\"\nweight = 10\n\
         [[pool.backend]]\naddress = \"{b_addr}\"\nweight = 10\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"main\"\npool = \"web\"\n"
    );
    let (lb, admin, listen) = start(&file);
    let health = |addr: SocketAddr| -> (String, u64) {
        let s: serde_json::Value =
            serde_json::from_str(&http(admin, "/api/status", "").1).expect("status JSON");
        let b = backend(&s, "web", addr);
        (
            b["health"].as_str().unwrap_or_default().to_owned(),
            b["weight"].as_u64().unwrap_or_default(),
        )
    };
    wait_for("both up", Duration::from_secs(5), || {
        health(a_addr).0 == "up" && health(b_addr).0 == "up"
    });
    // Counted from the access log: a stopped test server's open keep-alive connections go on
    // answering, so the servers' own counts cannot tell the instances apart.
    let log_path = lb.dir.join("access.log");
    let log_lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .collect::<Vec<_>>()
    };
    let share_of_b = |n: usize| {
        let before = log_lines().len();
        for _ in 0..n {
            assert_eq!(http(listen, "/", "").0, 200);
        }
        wait_for("access log lines", Duration::from_secs(5), || {
            log_lines().len() >= before + n
        });
        log_lines()[before..]
            .iter()
            .filter(|l| l["backend"] == b_addr.to_string())
            .count()
    };
    // Steady state: strict alternation.
    assert_eq!(share_of_b(20), 10);

    drop(b);
    wait_for("b down", Duration::from_secs(3), || {
        health(b_addr).0 == "down"
    });
    let _back = runtime.block_on(http_server::start_on(b_addr, Behaviour::default()));
    wait_for("b up again", Duration::from_secs(3), || {
        health(b_addr).0 == "up"
    });
    let (_, weight) = health(b_addr);
    assert!(weight <= 2, "status shows the ramped weight, got {weight}");
    // Within the first few seconds of a 30 s ramp the factor is 10-20%: b's share of 100
    // requests is at most 2/12 (about 17), against 50 at full weight.
    let got = share_of_b(100);
    println!("b got {got} of 100 requests at the start of its slow start");
    assert!((3..=20).contains(&got), "b got {got} of 100");
}

#[test]
fn named_routes_label_metrics_and_the_access_log() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let good: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let file = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{good}\"\n\
         [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"ping\"\nlistener = \"main\"\npath = \"/ping\"\n\
         respond = {{ status = 200, body = \"pong\" }}\n\
         [[route]]\nname = \"site\"\nlistener = \"main\"\npool = \"web\"\n",
        good = good.addr,
    );
    let (lb, admin, listen) = start(&file);
    assert_eq!(http(listen, "/ping", ""), (200, "pong".to_owned()));
    assert_eq!(http(listen, "/page", "").0, 200);

    let metrics = http(admin, "/metrics", "").1;
    let ping = "lb_http_requests_total{listener=\"main\",route=\"ping\",pool=\"\",backend=\"\",status=\"200\"}";
    let site = format!(
        "lb_http_requests_total{{listener=\"main\",route=\"site\",pool=\"web\",backend=\"{}\",status=\"200\"}}",
        good.addr
    );
    assert_eq!(sample(&metrics, ping), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, &site), Some(1.0), "{metrics}");

    let log_path = lb.dir.join("access.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("access log lines", Duration::from_secs(5), || {
        read_log().lines().count() >= 2
    });
    let lines: Vec<serde_json::Value> = read_log()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ping = lines
        .iter()
        .find(|l| l["path"] == "/ping")
        .expect("ping line");
    assert_eq!(
        (ping["route"].clone(), ping["status"].clone()),
        ("ping".into(), 200.into())
    );
    assert!(
        ping["pool"].is_null() && ping["backend"].is_null(),
        "{ping}"
    );
    let page = lines
        .iter()
        .find(|l| l["path"] == "/page")
        .expect("page line");
    assert_eq!(
        (page["route"].clone(), page["pool"].clone()),
        ("site".into(), "web".into())
    );
    drop(lb);
}
