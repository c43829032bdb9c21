//! Operator surface of `lb run`, from outside as an operator uses it: `/healthz` and
//! `/readyz` (503 from the stop signal on, while in-flight requests drain), the admin token on
//! the mutating endpoints (401 without it; `lb ctl --admin-token-file` after the subcommand),
//! and SIGUSR1 reopening the access log after logrotate moved it (lb keeps running).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use lb_tests::{
    echo_backend::echo_backend,
    lb_bin,
    lb_run::{LbRun, http, metric, wait_for},
};

const LIMIT: Duration = Duration::from_secs(30);

fn file(backend: SocketAddr) -> String {
    format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = \"l\"\npool = \"web\"\n"
    )
}

fn in_flight(lb: &LbRun) -> u64 {
    lb.status()["pools"][0]["backends"][0]["in_flight"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn readyz_turns_503_while_lb_drains() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let lb = LbRun::start("readyz", &file(backend), &["--grace", "60s"]);
    assert_eq!(http("GET", lb.admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(
        http("GET", lb.admin, "/readyz"),
        (200, "ready\n".to_owned())
    );
    // A request the backend never answers keeps the drain going.
    let addr = lb.listener("l");
    let mut hung = TcpStream::connect(addr).expect("connect");
    write!(hung, "GET /hang HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    wait_for("the request in flight", LIMIT, || in_flight(&lb) == 1);
    lb.signal("TERM");
    wait_for("/readyz 503", LIMIT, || {
        http("GET", lb.admin, "/readyz").0 == 503
    });
    // Still alive and draining: changes are refused, reads still answered.
    assert_eq!(http("GET", lb.admin, "/healthz").0, 200);
    assert_eq!(http("POST", lb.admin, "/api/purge?url=x").0, 503);
    drop(hung);
}

#[test]
fn the_admin_token_guards_changes_and_lb_ctl_sends_it() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "guess\n").expect("wrong");
    let token_arg = token.to_string_lossy().into_owned();
    let lb = LbRun::start("token", &file(backend), &["--admin-token-file", &token_arg]);
    let drain = format!("/api/drain?pool=web&backend={backend}");
    // Without the token: 401 with a Bearer challenge; reads stay open.
    let raw = raw_post(lb.admin, &drain, None);
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );
    assert!(raw_post(lb.admin, &drain, Some("guess")).starts_with("HTTP/1.1 401"));
    assert_eq!(http("GET", lb.admin, "/api/status").0, 200);
    assert_eq!(http("GET", lb.admin, "/metrics").0, 200);
    // lb ctl: the flags after the subcommand; the wrong token is refused, the right one works.
    let ctl = |file: &std::path::Path| {
        Command::new(lb_bin())
            .args(["ctl", "drain", "web", &backend.to_string()])
            .args(["--admin", &lb.admin.to_string()])
            .arg("--admin-token-file")
            .arg(file)
            .output()
            .expect("lb ctl")
    };
    let refused = ctl(&wrong);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Bearer"),
        "{refused:?}"
    );
    assert_eq!(
        lb.status()["pools"][0]["backends"][0]["health"],
        "unchecked"
    );
    let done = ctl(&token);
    assert!(done.status.success(), "{done:?}");
    assert_eq!(lb.status()["pools"][0]["backends"][0]["health"], "draining");
    // An empty token file is refused at start.
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").expect("empty");
    let out = Command::new(lb_bin())
        .args([
            "run",
            "--backends",
            "/nonexistent.toml",
            "--admin-token-file",
        ])
        .arg(&empty)
        .output()
        .expect("lb run");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let log_arg = log.to_string_lossy().into_owned();
    let lb = LbRun::start("reopen", &file(backend), &["--access-log", &log_arg]);
    let addr = lb.listener("l");
    let lines =
        |path: &std::path::Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    assert_eq!(http("GET", addr, "/before").0, 200);
    wait_for("the first line", LIMIT, || lines(&log) == 1);
    // logrotate's default: move the file away, then signal.
    std::fs::rename(&log, &rotated).expect("rotate");
    lb.signal("USR1");
    wait_for("the new file", LIMIT, || log.exists());
    assert_eq!(http("GET", addr, "/after").0, 200);
    wait_for("the line in the new file", LIMIT, || lines(&log) == 1);
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("/after")
    );
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert_eq!(old.lines().count(), 1);
    assert!(old.contains("/before"));
    // Still running (SIGUSR1's default action would have killed it).
    assert_eq!(http("GET", lb.admin, "/healthz").0, 200);
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A POST to the admin API with an optional bearer token: the raw answer.
fn raw_post(admin: SocketAddr, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(admin, "POST", path, &auth)
}

/// One request with extra header lines (each ending in CRLF): the raw answer.
fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(LIMIT)).expect("timeout");
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out
}

/// (head, body) of a raw answer.
fn split(raw: &str) -> (&str, &str) {
    raw.split_once("\r\n\r\n").unwrap_or((raw, ""))
}

#[test]
fn metrics_speak_openmetrics_and_text_004_that_promtool_accepts() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    // Routes that make the optional families appear: a cache, a rate limit.
    let file = format!(
        "{}[route.cache]\ndefault_ttl = \"1h\"\n\
         [[route]]\nname = \"limited\"\nlistener = \"l\"\npath = \"/limited\"\npool = \"web\"\n\
         [[route.rate_limit]]\nkey = \"client_ip\"\nrate = \"1/h\"\n",
        file(backend)
    );
    let lb = LbRun::start("promtool", &file, &[]);
    let addr = lb.listener("l");
    for path in ["/a", "/a", "/limited", "/limited"] {
        http("GET", addr, path);
    }
    // The default: OpenMetrics.
    let answer = raw(lb.admin, "GET", "/metrics", "");
    let (head, body) = split(&answer);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // Asked for text/plain: the 0.0.4 format, which promtool checks (lint included).
    let answer = raw(lb.admin, "GET", "/metrics", "Accept: text/plain\r\n");
    let (head, body) = split(&answer);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE lb_http_requests_total counter"),
        "{body}"
    );
    assert!(body.contains("lb_http_cache_requests_total{"), "{body}");
    assert!(body.contains("lb_rate_limited_total{"), "{body}");
    assert!(body.contains("\nlb_access_log_dropped_total 0\n"), "{body}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The Grafana dashboard in docs/ queries only families lb exports (in this scrape, but
    // for those that appear once their feature is used: the XDP tier needs --iface,
    // authentication results an authenticating route, refusals a per-client cap, the pool
    // guards their configuration, tcp/udp listeners).
    let used_later = [
        "lb_xdp_",
        "lb_auth_results_",
        "lb_http_jwt_auth_",
        "lb_client_connections_refused_",
        "lb_requests_shed_",
        "lb_adaptive_concurrency_limit",
        "lb_outlier_ejections_",
        "lb_stream_",
    ];
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/lb-dashboard.json"
    ))
    .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("lb_"))
            {
                queried += 1;
                let family = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    used_later.iter().any(|p| family.starts_with(p))
                        || body.contains(&format!("# TYPE {family} ")),
                    "the dashboard queries {name}, which /metrics does not have"
                );
            }
        }
    }
    assert!(queried > 10);
    // Every family has its HELP and TYPE.
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() > 10, "{body}");
    for family in families {
        assert!(body.contains(&format!("# HELP {family} ")), "{family}");
    }
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::BufRead as _;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-log-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lb.toml");
    std::fs::write(&config, file(backend)).expect("config");
    let mut child = Command::new(lb_bin())
        .args([
            "run",
            "--log-format",
            "json",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lb run");
    let stderr = child.stderr.take().expect("stderr");
    let mut line = String::new();
    let read = std::io::BufReader::new(stderr).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    read.expect("a log line");
    let object: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(object["level"], "INFO", "{line}");
    assert_eq!(object["fields"]["message"], "lb running", "{line}");
    assert!(object["timestamp"].is_string(), "{line}");
}

#[test]
fn access_log_fields_are_chosen_by_the_operator() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-log-fields-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let log_arg = log.to_string_lossy().into_owned();
    let lb = LbRun::start(
        "log-fields",
        &file(backend),
        &[
            "--access-log",
            &log_arg,
            "--access-log-fields",
            "status,path,user_agent,referer,protocol,upstream_status",
        ],
    );
    let answer = raw(
        lb.listener("l"),
        "GET",
        "/page",
        "User-Agent: curl/8.5\r\nReferer: http://from.test/\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_for("the line", LIMIT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 1)
    });
    let line = std::fs::read_to_string(&log).expect("log");
    let object: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(object.as_object().expect("object").len(), 6, "{line}");
    // In the log's own order.
    assert!(
        line.starts_with("{\"status\":200,\"path\":\"/page\",\"user_agent\""),
        "{line}"
    );
    assert_eq!(object["user_agent"], "curl/8.5");
    assert_eq!(object["referer"], "http://from.test/");
    assert_eq!(object["protocol"], "HTTP/1.1");
    assert_eq!(object["upstream_status"], 200);
    drop(lb);
    // An unknown field is refused at start, naming the known ones.
    let out = Command::new(lb_bin())
        .args(["run", "--admin", "127.0.0.1:0", "--access-log", &log_arg])
        .args(["--access-log-fields", "status,colour", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .expect("lb run");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lb_run_tells_systemd_when_it_is_ready() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let dir = std::env::temp_dir().join(format!("lb-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lb.toml");
    std::fs::write(&config, file(backend)).expect("config");
    // The socket systemd would give a Type=notify service.
    let socket_path = dir.join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut child = Command::new(lb_bin())
        .args(["run", "--admin", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lb run");
    let mut buf = [0u8; 256];
    let got = socket.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let n = got.expect("a notification");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
}

#[test]
fn tcp_and_udp_listeners_feed_metrics_and_backend_totals() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(echo_backend());
    let refused = lb_tests::lb_run::RefusedPort::new();
    // A udp backend that echoes each datagram.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_addr = udp.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let file = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n\
         [[pool]]\nname = \"gone\"\nretries = 0\n[[pool.backend]]\naddress = \"{}\"\n\
         [[pool]]\nname = \"dns\"\n[[pool.backend]]\naddress = \"{udp_addr}\"\n\
         [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[listener]]\nname = \"down\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[listener]]\nname = \"u\"\naddress = \"127.0.0.1:0\"\nmode = \"udp\"\n\
         [[route]]\nlistener = \"t\"\npool = \"web\"\n\
         [[route]]\nlistener = \"down\"\npool = \"gone\"\n\
         [[route]]\nlistener = \"u\"\npool = \"dns\"\n",
        refused.addr
    );
    let lb = LbRun::start("stream-metrics", &file, &[]);
    // An HTTP exchange relayed byte for byte, then closed by the backend.
    let (status, _) = http("GET", lb.listener("t"), "/through-tcp");
    assert_eq!(status, 200);
    // A connection with no backend to reach.
    let mut down = TcpStream::connect(lb.listener("down")).expect("connect");
    let mut rest = Vec::new();
    let _ = down.read_to_end(&mut rest);
    // A udp session.
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp client");
    client.set_read_timeout(Some(LIMIT)).expect("timeout");
    client.send_to(b"ping", lb.listener("u")).expect("send");
    let mut buf = [0u8; 16];
    let (n, _) = client.recv_from(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"ping");
    let value = |line: &str| metric(&lb, line);
    wait_for("the relayed connection counted", LIMIT, || {
        value("lb_stream_connections_total{listener=\"t\",outcome=\"relayed\"}") == 1.0
    });
    assert!(value("lb_stream_bytes_total{listener=\"t\",outcome=\"in\"}") > 0.0);
    assert!(value("lb_stream_bytes_total{listener=\"t\",outcome=\"out\"}") > 0.0);
    wait_for("the unreachable backend counted", LIMIT, || {
        value("lb_stream_connections_total{listener=\"down\",outcome=\"no_backend\"}") == 1.0
    });
    assert_eq!(
        value("lb_stream_sessions_total{listener=\"u\",outcome=\"started\"}"),
        1.0
    );
    // The backends' own totals (status page, lb ctl status) count them too.
    let totals = |pool: usize| {
        let b = &lb.status()["pools"][pool]["backends"][0];
        (b["requests"].as_u64(), b["errors"].as_u64())
    };
    wait_for("the backend totals", LIMIT, || {
        totals(0) == (Some(1), Some(0)) && totals(1) == (Some(1), Some(1)) && totals(2).0 == Some(1)
    });
}
