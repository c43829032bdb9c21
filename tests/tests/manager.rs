//! `lb run` as an operator runs it: flags + backend file, active health checks taking a
//! stopped backend out (and back), drain through the admin API, a bad reload kept out, the
//! Prometheus metrics, and the status page rendered by headless Chromium.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    http_server::{self, Behaviour, TestServer},
    lb_run::{LbRun, http, wait_for},
    temp_dir::TempDir,
};

fn backends_file(backends: &[SocketAddr]) -> String {
    let mut text = String::from(
        "# test pool\n[[pool]]\nname = \"web\"\nmax_fails = 0\nretries = 1\n\
         [pool.health_check]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 2\nfall = 2\n",
    );
    for b in backends {
        text += &format!("[[pool.backend]]\naddress = \"{b}\"\n");
    }
    text
}

/// Starts `lb run` with one --listen; returns it with (listen, admin) addresses.
fn start(backends: &[SocketAddr]) -> (LbRun, SocketAddr, SocketAddr) {
    let lb = LbRun::start(
        "manager",
        &backends_file(backends),
        &["--listen", "127.0.0.1:0"],
    );
    let (listen, admin) = (lb.listener("listen-1"), lb.admin);
    (lb, listen, admin)
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http("GET", admin, "/api/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("status JSON")
}

fn health_of(admin: SocketAddr, backend: SocketAddr) -> String {
    status(admin)["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == backend.to_string())
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .expect("backend listed")
}

#[test]
fn health_checks_drain_reload_and_metrics() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let b: TestServer = runtime.block_on(http_server::start(Behaviour::default()));
    let (a_addr, b_addr) = (a.addr, b.addr);
    let (lb, listen, admin) = start(&[a_addr, b_addr]);
    wait_for("both up", Duration::from_secs(5), || {
        health_of(admin, a_addr) == "up" && health_of(admin, b_addr) == "up"
    });

    // Stop b: marked down within interval x fall (+ slack), and no request fails meanwhile
    // (idempotent GETs are retried on a; b's refused connects are retried too).
    drop(b);
    let stopped = Instant::now();
    wait_for("b down", Duration::from_secs(10), || {
        health_of(admin, b_addr) == "down"
    });
    let took = stopped.elapsed();
    for _ in 0..20 {
        assert_eq!(http("GET", listen, "/").0, 200);
    }
    let metrics = http("GET", admin, "/metrics").1;
    assert!(
        metrics.contains(&format!(
            "lb_backend_up{{pool=\"web\",backend=\"{b_addr}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "lb_backend_up{{pool=\"web\",backend=\"{a_addr}\"}} 1"
    )));
    println!("backend marked down {took:?} after it stopped (interval 100ms, fall 2)");

    // b comes back on the same port: up after `rise` passing checks.
    let back = runtime.block_on(http_server::start_on(b_addr, Behaviour::default()));
    wait_for("b up again", Duration::from_secs(10), || {
        health_of(admin, b_addr) == "up"
    });

    // Drain a: every new request goes to b.
    let (code, _) = http(
        "POST",
        admin,
        &format!("/api/drain?pool=web&backend={a_addr}"),
    );
    assert_eq!(code, 200);
    assert_eq!(health_of(admin, a_addr), "draining");
    // Proxied requests only: b's health checks (every 100 ms) land on it too.
    let proxied = |seen: &http_server::Seen| {
        use std::sync::atomic::Ordering::Relaxed;
        seen.requests.load(Relaxed) - seen.health_checks.load(Relaxed)
    };
    let before = proxied(&back.seen);
    for _ in 0..10 {
        assert_eq!(http("GET", listen, "/").0, 200);
    }
    assert_eq!(proxied(&back.seen) - before, 10);
    assert_eq!(
        http("POST", admin, "/api/drain?pool=web&backend=10.9.9.9:1").0,
        404
    );

    // A bad file is refused at reload: the running configuration stays, and it says why.
    std::fs::write(&lb.file, "[[pool]]\nname = 7\n").expect("write");
    wait_for("reload rejected", Duration::from_secs(10), || {
        status(admin)["config"]["reloads_failed"] == 1
    });
    let s = status(admin);
    let why = s["config"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("lb.toml:2: invalid type: integer `7`, expected a string"),
        "{why}"
    );
    assert_eq!(http("GET", listen, "/").0, 200, "still serving");
    assert!(
        http("GET", admin, "/metrics")
            .1
            .contains("lb_config_reloads_total{result=\"rejected\"} 1")
    );
    drop(a);
}

fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the status-page test needs chromium and CI=true: refusing to skip (cargo xtask setup installs it)"
        );
        eprintln!("skipping: chromium not installed");
    }
    found
}

/// Renders `url` in headless Chromium at `width` pixels: (DOM after scripts ran, screenshot).
fn render(chromium: &Path, url: &str, dir: &Path, name: &str, width: u32) -> (String, PathBuf) {
    let window = format!("--window-size={width},1100");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=4000",
        window.as_str(),
    ];
    let shot = dir.join(format!("{name}.png"));
    let out = Command::new(chromium)
        .args(common)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = Command::new(chromium)
        .args(common)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    (String::from_utf8_lossy(&dom.stdout).into_owned(), shot)
}

/// A number the page reports on `<body>` for layout checks: `data-page-width` (wider than the
/// window: the page itself scrolls sideways) and `data-overflowing` (tables wider than their
/// box, which scroll inside it).
fn body_number(dom: &str, attribute: &str) -> u64 {
    dom.split(&format!("{attribute}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{attribute} not reported: {dom}"))
}

/// Pixels of the "down" badge colour (#cf222e) in the screenshot.
fn red_pixels(png_path: &Path) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("open png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| {
            p.len() >= 3
                && p[0].abs_diff(0xcf) < 8
                && p[1].abs_diff(0x22) < 8
                && p[2].abs_diff(0x2e) < 8
        })
        .count()
}

/// The status JSON's entry for backend `addr` of the first pool.
fn backend_status(s: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    s["pools"][0]["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == addr.to_string()))
        .cloned()
        .expect("backend listed")
}

fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

#[test]
fn status_page_shows_traffic_and_a_backend_going_down_and_back() {
    let Some(chromium) = chromium() else { return };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a = runtime.block_on(http_server::start(Behaviour::default()));
    let b = runtime.block_on(http_server::start(Behaviour::default()));
    let (a_addr, b_addr) = (a.addr, b.addr);
    // Weights of 10 and a slow start, so a backend coming back shows a reduced weight.
    let mut file = backends_file(&[]).replace("fall = 2\n", "fall = 2\nslow_start = \"10m\"\n");
    for addr in [a_addr, b_addr] {
        file += &format!("[[pool.backend]]\naddress = \"{addr}\"\nweight = 10\n");
    }
    let lb = LbRun::start("manager-page", &file, &["--listen", "127.0.0.1:0"]);
    let (listen, admin) = (lb.listener("listen-1"), lb.admin);
    wait_for("both up", Duration::from_secs(5), || {
        health_of(admin, a_addr) == "up" && health_of(admin, b_addr) == "up"
    });

    // Traffic: the listener, the route and the backends count it.
    for _ in 0..40 {
        assert_eq!(http("GET", listen, "/").0, 200);
    }
    wait_for("traffic in the status", Duration::from_secs(10), || {
        let s = status(admin);
        let listener = &s["listeners"][0]["traffic"];
        let route = &s["routes"][0]["traffic"];
        let answered: u64 = [a_addr, b_addr]
            .iter()
            .map(|addr| count(&backend_status(&s, *addr)["traffic"]["answers"]["2xx"]))
            .sum();
        count(&listener["answers"]["2xx"]) == 40
            && count(&route["answers"]["2xx"]) == 40
            && answered == 40
            && listener["latency_p99_ms"].is_number()
            && route["latency_p50_ms"].is_number()
            && listener["trend"]
                .as_array()
                .is_some_and(|t| t.iter().any(|v| v.as_f64() > Some(0.0)))
    });
    let s = status(admin);
    let listener = &s["listeners"][0]["traffic"];
    assert!(count(&listener["bytes_in"]) > 40 * 16, "{listener}");
    assert!(count(&listener["bytes_out"]) > 40 * 16, "{listener}");
    assert!(count(&listener["peak"]) >= 1, "{listener}");
    let backend = backend_status(&s, a_addr);
    assert!(count(&backend["traffic"]["bytes_in"]) > 0, "{backend}");
    assert!(count(&backend["traffic"]["bytes_out"]) > 0, "{backend}");
    assert_eq!(backend["check"]["last_result"], "passed", "{backend}");
    assert!(count(&backend["check"]["checks"]) >= 2, "{backend}");
    assert_eq!(
        (
            count(&backend["weight"]),
            count(&backend["configured_weight"])
        ),
        (10, 10)
    );

    let url = format!("http://{admin}/");
    let (dom, shot) = render(&chromium, &url, &lb.dir, "status-1400", 1400);
    for expected in [
        format!("data-backend=\"web/{b_addr}\" data-health=\"up\""),
        "data-listener=\"listen-1\"".to_owned(),
        "data-route=".to_owned(),
        "data-check=\"passed\"".to_owned(),
        "<polyline".to_owned(),
        "class=\"total\"".to_owned(),
    ] {
        assert!(dom.contains(&expected), "{expected} missing: {dom}");
    }
    assert_eq!(red_pixels(&shot), 0, "nothing is down yet");
    assert!(body_number(&dom, "data-page-width") <= 1400);
    assert_eq!(
        body_number(&dom, "data-overflowing"),
        0,
        "every table fits 1400 px"
    );
    let (narrow, _) = render(&chromium, &url, &lb.dir, "status-narrow", 560);
    assert!(
        body_number(&narrow, "data-page-width") <= 560,
        "a narrow window scrolls tables, not the page: {}",
        body_number(&narrow, "data-page-width")
    );

    // b goes down: red badge, the failed check and why.
    drop(b);
    wait_for("b down", Duration::from_secs(10), || {
        health_of(admin, b_addr) == "down"
    });
    let down = backend_status(&status(admin), b_addr);
    assert_eq!(down["check"]["last_result"], "failed", "{down}");
    assert!(
        down["check"]["last_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{down}"
    );
    assert_eq!(count(&down["weight"]), 0, "{down}");
    let (dom, shot) = render(&chromium, &url, &lb.dir, "status-down", 1400);
    assert!(
        dom.contains(&format!(
            "data-backend=\"web/{b_addr}\" data-health=\"down\""
        )),
        "{dom}"
    );
    assert!(dom.contains("data-check=\"failed\""), "{dom}");
    let red = red_pixels(&shot);
    assert!(red > 200, "the down badge is drawn in red ({red} pixels)");

    // b comes back on the same port: up again, its downtime kept, slow start under way.
    let back = runtime.block_on(http_server::start_on(b_addr, Behaviour::default()));
    wait_for("b up again", Duration::from_secs(10), || {
        health_of(admin, b_addr) == "up"
    });
    let up = backend_status(&status(admin), b_addr);
    assert_eq!(up["check"]["last_result"], "passed", "{up}");
    assert!(up["check"]["downtime_seconds"].as_f64() > Some(0.0), "{up}");
    assert!(count(&up["weight"]) < 10, "slow start: {up}");
    let (dom, shot) = render(&chromium, &url, &lb.dir, "status-back", 1400);
    assert!(
        dom.contains(&format!("data-backend=\"web/{b_addr}\" data-health=\"up\"")),
        "{dom}"
    );
    let downtimes: Vec<f64> = dom
        .split("data-downtime=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    assert!(
        downtimes.iter().any(|d| *d > 0.0),
        "b's downtime shown: {downtimes:?}"
    );
    assert_eq!(red_pixels(&shot), 0, "b is back: no red badge");
    println!("screenshots in {}", lb.dir.display());
    drop((a, back));
}

/// HTTP status of a GET over TLS (curl, certificate not verified: it is self-signed).
fn https_status(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{addr}/"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_cert_applies_to_the_listen_it_follows() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(http_server::start(Behaviour::default()));
    let dir = TempDir::new("tls-flags");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.write("cert.pem", &cert.cert.pem());
    let key_path = dir.write("key.pem", &cert.key_pair.serialize_pem());
    let (cert_arg, key_arg) = (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    );

    // Plain on the first --listen, HTTPS on the second: the certificate follows it.
    let lb = LbRun::start(
        "tls-flags",
        &backends_file(&[backend.addr]),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
        ],
    );
    let (plain, secure) = (lb.listener("listen-1"), lb.listener("listen-2"));
    assert_eq!(http("GET", plain, "/").0, 200, "listen-1 speaks plain HTTP");
    assert_eq!(https_status(secure), "200", "listen-2 speaks HTTPS");
    assert_eq!(
        http("GET", secure, "/").0,
        400,
        "plain HTTP on the TLS listener gets NGINX's 400"
    );
    let kinds: Vec<String> = status(lb.admin)["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["http", "https"]);
    drop(lb);

    // A certificate before any --listen belongs to none: refused, saying where it goes.
    let file = dir.write("lb.toml", &backends_file(&[backend.addr]));
    let out = Command::new(lb_tests::lb_bin())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--tls-cert", &cert_arg, "--tls-key", &key_arg])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .expect("run lb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("comes before any --listen: put it after the --listen it is for"),
        "{stderr}"
    );
    drop(backend);
}

#[test]
fn status_counts_tcp_listener_connections_and_bytes() {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(http_server::start(Behaviour::default()));
    let file = format!(
        "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"{}\"\n\
         [[listener]]\nname = \"relay\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[route]]\nlistener = \"relay\"\npool = \"p\"\n",
        backend.addr
    );
    let lb = LbRun::start("manager-tcp", &file, &[]);
    let relay = lb.listener("relay");
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut received = Vec::new();
    for _ in 0..3 {
        let mut tcp = std::net::TcpStream::connect(relay).expect("connect");
        tcp.write_all(request).expect("write");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        received.push(answer.len() as u64);
    }
    let (bytes_in, bytes_out) = (3 * request.len() as u64, received.iter().sum::<u64>());
    wait_for("relay bytes in the status", Duration::from_secs(10), || {
        let s = status(lb.admin);
        let t = s["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == "relay"))
            .map(|l| l["traffic"].clone())
            .unwrap_or_default();
        count(&t["bytes_in"]) == bytes_in
            && count(&t["bytes_out"]) == bytes_out
            && count(&t["peak"]) >= 1
            && count(&t["current"]) == 0
    });
    drop(backend);
}
