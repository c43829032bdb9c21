//! `cargo xtask demo`: the whole load balancer (`lb run`) on real traffic.
//!
//! ```text
//!  client ns: lb bench       lb ns: `lb run`                            backend ns x3:
//!  c0 10.200.0.1 ------------ l0 10.200.0.2  (XDP tier attached here)   xtask demo-backend
//!                             VIP 10.200.100.100 on lo, L7 listener :80
//!                             b1 10.201.1.1 ---------------------------- e0 10.201.1.2:8080
//!                             b2 10.201.2.1 ---------------------------- e0 10.201.2.2:8080
//!                             b3 10.201.3.1 ---------------------------- e0 10.201.3.2:8080
//!                             admin 127.0.0.1:9900 <-- port forward -- host 127.0.0.1:9900
//! ```
//! The VIP is `forward = "local"`: XDP counts each packet and tags each new flow, then hands
//! it to the lb namespace's stack, where the L7 listener proxies the requests to the pool
//! (round robin, HTTP health checks). The story, each step checked against `/api/status`:
//! 1. `lb bench` for a few seconds (closed loop); every backend gets requests. Then route
//!    policies seen by curl from the client: a redirect and a direct answer made by lb, and a
//!    response header lb adds to what the backends send.
//! 2. With open-loop traffic flowing: drain backend 1 (admin API): it gets no new requests;
//!    undrain it. Kill backend 2: health checks mark it down and traffic avoids it, with no
//!    failed request seen by the client; start it again: it comes back up and gets traffic.
//! 3. The XDP tier's counters, then lb is stopped with SIGINT and must exit cleanly.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use super::{
    PREFIX, backend, hold_until_ctrl_c, port_forward,
    process::{Echo, Process, Successor},
    track,
};
use crate::{
    netns::{Netns, VethEnd, veth_pair},
    run,
};

const VIP: &str = "10.200.100.100";
const BACKENDS: u8 = 3;
const BACKEND_PORT: u16 = 8080;
const POOL: &str = "web";
/// lb's admin address inside the lb namespace, and the host port it is forwarded to (or any
/// free one if that is taken).
const ADMIN_IN_NS: &str = "127.0.0.1:9900";
const ADMIN_HOST_PORT: u16 = 9900;
/// Health checks: a stopped backend is down after `fall` failed checks, back after `rise`.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The closed-loop benchmark of step 1.
const BENCH_SECONDS: u32 = 5;
/// Step 2's open-loop traffic: long enough to outlast the story (about 12 s here).
const STORY_RATE: u32 = 200;
const STORY_SECONDS: u32 = 24;
/// Each observation window of the story.
const WINDOW: Duration = Duration::from_secs(2);
/// After a drain, before a window starts: requests already on their way to the backend end.
const SETTLE: Duration = Duration::from_millis(500);

pub fn demo(ws: &Path, lb: &Path, hold: bool) -> Result<()> {
    let started = Instant::now();
    let topo = Topology::build()?;
    println!(
        "demo: topology up: client ns -> lb ns (XDP on l0, VIP {VIP}:80) -> {BACKENDS} backend namespaces"
    );
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let mut backends = (1..=BACKENDS)
        .map(|id| start_backend(&topo, &xtask, id))
        .collect::<Result<Vec<_>>>()?;

    let config_dir = ws.join("target/demo");
    std::fs::create_dir_all(&config_dir).context("creating target/demo")?;
    let config = config_dir.join("lb-run.toml");
    let jwks = config_dir.join("demo-jwks.json");
    std::fs::write(&jwks, demo_jwks(ws)?).with_context(|| format!("writing {}", jwks.display()))?;
    let file_text = backend_file(&jwks);
    std::fs::write(&config, &file_text).with_context(|| format!("writing {}", config.display()))?;
    println!("demo: backend file {}:\n{file_text}", config.display());

    let mut lb_run = Process::spawn(
        topo.lb
            .command(lb)
            .arg("run")
            .arg("--backends")
            .arg(&config)
            .args(["--iface", "l0", "--xdp-mode", "auto"])
            .args(["--admin", ADMIN_IN_NS, "--grace", "2s"])
            .env("RUST_LOG", "warn,lb::manager=info"),
        "lb",
        Echo::Both,
    )?;
    let attached = lb_run.wait_for_line("attached ", Duration::from_secs(30))?;
    lb_run.wait_for_line("admin ", Duration::from_secs(10))?;
    let admin = Admin {
        addr: port_forward::start(
            ADMIN_HOST_PORT,
            topo.lb.path(),
            ADMIN_IN_NS.parse().context("admin address")?,
        )?,
    };
    // The URL printed for the operator is the one checked here.
    let (code, page) = admin.request("GET", "/")?;
    ensure!(
        code == 200 && page.contains("<html"),
        "the status page through the port forward answered {code}"
    );
    println!(
        "demo: lb run is up ({attached}); status page: http://{}/",
        admin.addr
    );
    let waited = Instant::now();
    admin.wait_for("every backend healthy", Duration::from_secs(10), |b| {
        b.iter().all(|b| b.health == "up")
    })?;
    println!(
        "demo: lb reports all {BACKENDS} backends up ({} ms)",
        waited.elapsed().as_millis()
    );

    // 1. A short closed-loop benchmark.
    println!(
        "\ndemo: step 1: lb bench from the client namespace, {BENCH_SECONDS} s closed loop, 16 connections -> http://{VIP}/"
    );
    let before = served(&topo);
    let mut bench = Process::spawn(
        topo.client
            .command(lb)
            .args(["bench", &format!("http://{VIP}/"), "--threads", "1"])
            .args(["-c", "16", "-d", &format!("{BENCH_SECONDS}s")]),
        "bench",
        Echo::Both,
    )?;
    let status = bench.wait()?;
    ensure!(status.success(), "lb bench exited with {status}");
    let (failed, report_line) = failures_in_report(&bench.stdout_lines())?;
    ensure!(
        failed == 0,
        "lb bench saw failed requests through lb: {report_line}"
    );
    let moved = print_window("requests during step 1", &before, &served(&topo), &admin)?;
    for (id, n) in &moved {
        ensure!(
            n.is_some_and(|n| n > 0),
            "be{id} got no request during the benchmark"
        );
    }

    route_policies(&topo)?;
    jwt_route(ws, &topo)?;
    rate_limit_route(&topo)?;
    cached_route(&topo)?;

    // 2. The story, with open-loop traffic flowing all along.
    println!(
        "\ndemo: step 2: steady traffic ({STORY_RATE} req/s for {STORY_SECONDS} s) while backends are drained, killed and restarted, and lb itself is upgraded in place"
    );
    let mut traffic = Process::spawn(
        topo.client
            .command(lb)
            .args([
                "bench",
                &format!("http://{VIP}/"),
                "--threads",
                "1",
                "--json",
            ])
            .args(["-c", "8", "--rate", &STORY_RATE.to_string()])
            .args(["-d", &format!("{STORY_SECONDS}s")]),
        "traffic",
        Echo::StderrOnly,
    )?;
    let traffic_started = Instant::now();
    thread::sleep(SETTLE);
    let moved = window(&topo, &admin, "all backends serving")?;
    for id in 1..=BACKENDS {
        ensure!(got_traffic(&moved, id), "be{id} got no traffic");
    }

    let be1 = address_of(1);
    println!("demo: draining be1 (POST /api/drain?pool={POOL}&backend={be1})");
    admin.post(&format!("/api/drain?pool={POOL}&backend={be1}"))?;
    admin.wait_for("be1 draining", Duration::from_secs(3), |b| {
        health(b, &be1) == "draining"
    })?;
    thread::sleep(SETTLE);
    let moved = window(&topo, &admin, "be1 drained")?;
    ensure!(
        moved.get(&1) == Some(&Some(0)),
        "be1 still got requests while drained"
    );
    for id in [2, 3] {
        ensure!(
            got_traffic(&moved, id),
            "be{id} got no traffic while be1 was drained"
        );
    }
    println!("demo: undraining be1");
    admin.post(&format!("/api/undrain?pool={POOL}&backend={be1}"))?;
    admin.wait_for("be1 up again", Duration::from_secs(3), |b| {
        health(b, &be1) == "up"
    })?;

    let be2 = address_of(2);
    println!("demo: killing be2's process (SIGKILL, as a crash)");
    backends[1].kill()?;
    let killed = Instant::now();
    admin.wait_for("be2 marked down", Duration::from_secs(5), |b| {
        health(b, &be2) == "down"
    })?;
    println!(
        "demo: health checks marked be2 down {} ms after it died (interval {} ms, fall 2); the status page shows it",
        killed.elapsed().as_millis(),
        CHECK_INTERVAL.as_millis()
    );
    let moved = window(&topo, &admin, "be2 down")?;
    for id in [1, 3] {
        ensure!(
            got_traffic(&moved, id),
            "be{id} got no traffic while be2 was down (be1: was its drain lifted?)"
        );
    }

    println!("demo: starting be2 again");
    backends[1] = start_backend(&topo, &xtask, 2)?;
    let restarted = Instant::now();
    admin.wait_for("be2 up again", Duration::from_secs(5), |b| {
        health(b, &be2) == "up"
    })?;
    println!(
        "demo: be2 is up again after {} ms (rise 2)",
        restarted.elapsed().as_millis()
    );
    let moved = window(&topo, &admin, "be2 back")?;
    ensure!(
        got_traffic(&moved, 2),
        "be2 is up again but gets no requests"
    );

    // The binary replaced in place while the traffic flows: the new process takes the same
    // listening sockets and the XDP tier's pins; the old one drains and exits.
    println!(
        "demo: upgrading lb in place (lb upgrade: the new process serves the same sockets and takes over the XDP pins; the old one drains and exits)"
    );
    let old_pid = lb_run.pid();
    let out = topo
        .lb
        .command(lb)
        .args(["upgrade", "--json", "--admin", ADMIN_IN_NS])
        .output()
        .context("running lb upgrade")?;
    ensure!(
        out.status.success(),
        "lb upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let answer: Value = serde_json::from_slice(&out.stdout).context("lb upgrade --json")?;
    let new_pid = answer["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| anyhow!("lb upgrade printed no pid: {answer}"))?;
    let mut successor = Successor::new(new_pid, "lb (upgraded)")?;
    let pinned = lb_run.wait_for_line("pinned ", Duration::from_secs(10))?;
    ensure!(
        pinned.contains("reused_link=true") && pinned.contains("reused_maps=true"),
        "the new lb did not take over the XDP tier's pins: {pinned}"
    );
    let status = lb_run.wait()?;
    ensure!(
        status.success(),
        "the old lb exited with {status} after the upgrade"
    );
    ensure!(
        admin.status()?["pid"].as_u64() == Some(u64::from(new_pid)),
        "the admin address does not answer from the new lb (pid {new_pid})"
    );
    println!("demo: lb pid {old_pid} handed over to pid {new_pid} ({pinned}) and exited 0");
    let moved = window(&topo, &admin, "after the upgrade")?;
    for id in 1..=BACKENDS {
        ensure!(
            got_traffic(&moved, id),
            "be{id} got no traffic after the upgrade"
        );
    }

    ensure!(
        traffic_started.elapsed() < Duration::from_secs(STORY_SECONDS.into()),
        "the story took longer than the traffic ran ({STORY_SECONDS} s): its windows are not trustworthy"
    );

    let status = traffic.wait()?;
    ensure!(status.success(), "lb bench (step 2) exited with {status}");
    let report: Value = serde_json::from_str(&traffic.stdout_lines().join("\n"))
        .context("parsing lb bench --json output")?;
    let count = |key: &str| {
        report[key]
            .as_u64()
            .ok_or_else(|| anyhow!("lb bench --json output has no {key:?} count"))
    };
    let (requests, ok) = (count("requests")?, count("ok")?);
    println!(
        "demo: step 2 traffic as the client saw it: {requests} requests, {ok} ok, {} non-2xx, {} transport errors ({} resent on a new connection after lb closed an idle one), p50 {} us, p99 {} us",
        count("non_2xx")?,
        count("errors")?,
        count("retried")?,
        report["latency_us"]["p50"],
        report["latency_us"]["p99"],
    );
    ensure!(requests > 0, "lb bench sent no request during step 2");
    ensure!(
        ok == requests,
        "the client saw {} failed requests while backends were drained and killed and lb was upgraded (retries, health checks and the socket hand-over should hide all three)",
        requests - ok.min(requests)
    );

    // 3. The XDP tier's view.
    println!("\ndemo: step 3: the XDP tier's counters (from /api/status; zeros left out)");
    let status = admin.status()?;
    print_xdp(&status)?;

    println!("demo: status page: http://{}/", admin.addr);
    if hold {
        let _light = Process::spawn(
            topo.client
                .command(lb)
                .args([
                    "bench",
                    &format!("http://{VIP}/"),
                    "--threads",
                    "1",
                    "--json",
                ])
                .args(["-c", "4", "--rate", "20", "-d", "24h"]),
            "traffic",
            Echo::StderrOnly,
        )?;
        println!(
            "demo: holding (demo ran {} s): light traffic keeps flowing (20 req/s); open http://{}/ (remote: ssh -L {port}:127.0.0.1:{port} this-host); Ctrl-C ends the demo",
            started.elapsed().as_secs(),
            admin.addr,
            port = admin.addr.port(),
        );
        hold_until_ctrl_c();
    }
    println!("demo: stopping lb (SIGINT)");
    successor.interrupt(Duration::from_secs(15))?;
    println!(
        "demo: done in {} s; removing namespaces",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Step 1's second half: curl in the client namespace sees what the route policies do.
fn route_policies(topo: &Topology) -> Result<()> {
    println!("\ndemo: route policies, seen by curl from the client namespace");
    let curl = |path: &str| -> Result<(u16, String)> {
        let out = topo
            .client
            .command("curl")
            .args(["-si", "--max-time", "5", &format!("http://{VIP}{path}")])
            .output()
            .context("running curl in the client namespace")?;
        ensure!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("curl {path}: no status line"))?;
        Ok((code, text))
    };
    let header = |text: &str, name: &str| -> Option<String> {
        text.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_owned())
    };
    let (code, text) = curl("/old-docs/intro?lang=en")?;
    let location = header(&text, "location").unwrap_or_default();
    println!("demo:   GET /old-docs/intro?lang=en -> {code}, Location: {location}");
    ensure!(
        code == 308 && location == format!("http://{VIP}/docs?lang=en"),
        "the redirect route answered {code} with Location {location:?}"
    );
    let (code, text) = curl("/ping")?;
    let body = text
        .split("\n\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!("demo:   GET /ping -> {code} {body:?} (answered by lb)");
    ensure!(
        code == 200 && body == "pong",
        "the respond route answered {code} {body:?}"
    );
    let (code, text) = curl("/")?;
    let served_by = header(&text, "x-served-by").unwrap_or_default();
    println!("demo:   GET / -> {code}, X-Served-By: {served_by} (added to the backend's answer)");
    ensure!(
        code == 200 && served_by == "lb",
        "the proxied route answered {code} with X-Served-By {served_by:?}"
    );
    Ok(())
}

fn address_of(id: u8) -> String {
    format!("10.201.{id}.2:{BACKEND_PORT}")
}

fn name_of(address: &str) -> String {
    (1..=BACKENDS)
        .find(|&id| address_of(id) == address)
        .map_or_else(|| address.to_owned(), |id| format!("be{id}"))
}

/// The demo's JWT issuer and the key it signs with (a test fixture: an Ed25519 key whose
/// public half is in tests/fixtures/jwt/public.json).
const DEMO_ISSUER: &str = "https://demo-idp.example/";
const DEMO_KEY: &str = "tests/fixtures/jwt/ed1.pem";

/// The JWKS lb reads for the demo's provider: the fixture key's public half, kid "demo".
fn demo_jwks(ws: &Path) -> Result<String> {
    let public = std::fs::read(ws.join("tests/fixtures/jwt/public.json"))
        .context("reading tests/fixtures/jwt/public.json")?;
    let all: Value = serde_json::from_slice(&public).context("parsing public.json")?;
    let mut key = all["ed1"].clone();
    key["kid"] = Value::from("demo");
    Ok(serde_json::json!({ "keys": [key] }).to_string())
}

/// A token the demo's provider accepts, for an hour, with subject `sub`.
fn demo_token(ws: &Path, sub: &str) -> Result<String> {
    let pem = std::fs::read(ws.join(DEMO_KEY)).context("reading the demo signing key")?;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).context("demo signing key")?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("demo".to_owned());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_secs()
        + 3600;
    let claims =
        serde_json::json!({ "iss": DEMO_ISSUER, "aud": "demo-api", "sub": sub, "exp": exp });
    jsonwebtoken::encode(&header, &claims, &key).context("signing the demo token")
}

/// A JWT-protected route, seen by curl from the client: 401 without a token, 401 with a
/// tampered one, 200 with a valid one.
fn jwt_route(ws: &Path, topo: &Topology) -> Result<()> {
    println!("\ndemo: a JWT-protected route (/api/), seen by curl from the client namespace");
    let token = demo_token(ws, "alice")?;
    let status = |extra: &[&str]| -> Result<u16> {
        let out = topo
            .client
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(format!("http://{VIP}/api/orders"))
            .output()
            .context("running curl in the client namespace")?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("curl printed no status")
    };
    let bearer = format!("Authorization: Bearer {token}");
    let mut tampered = token.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let tampered = format!("Authorization: Bearer {tampered}");
    for (what, extra, expected) in [
        ("no token", vec![], 401),
        ("a tampered token", vec!["-H", tampered.as_str()], 401),
        ("a valid EdDSA token", vec!["-H", bearer.as_str()], 200),
    ] {
        let got = status(&extra)?;
        println!("demo:   GET /api/orders with {what} -> {got}");
        ensure!(
            got == expected,
            "GET /api/orders with {what}: {got}, expected {expected}"
        );
    }
    Ok(())
}

/// A rate limit tripping, seen by curl from the client: `/limited` allows 3 requests per
/// client an hour; the 4th is answered 429 with Retry-After and the RateLimit fields.
fn rate_limit_route(topo: &Topology) -> Result<()> {
    println!("\ndemo: a rate limit (/limited: 3 per client per hour) tripping, seen by curl");
    for n in 1..=4 {
        let out = topo
            .client
            .command("curl")
            .args(["-si", "--max-time", "5", &format!("http://{VIP}/limited")])
            .output()
            .context("running curl in the client namespace")?;
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let code: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("curl /limited: no status line"))?;
        let field = |name: &str| {
            text.lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                })
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let retry = field("retry-after");
        println!(
            "demo:   request {n} -> {code}  RateLimit: {}{}",
            field("ratelimit"),
            if retry.is_empty() {
                String::new()
            } else {
                format!("  Retry-After: {retry}")
            }
        );
        let expected = if n <= 3 { 200 } else { 429 };
        ensure!(
            code == expected,
            "request {n} to /limited: {code}, expected {expected}"
        );
        ensure!(
            n <= 3 || !retry.is_empty(),
            "the 429 carries no Retry-After"
        );
    }
    Ok(())
}

/// The response cache, seen by curl: the first request for `/cached/page` is a MISS answered
/// by one backend; the next two are HITs with that same backend's answer (round robin would
/// have sent them elsewhere), and the backend is not asked again.
fn cached_route(topo: &Topology) -> Result<()> {
    println!("\ndemo: a cached route (/cached: kept an hour), seen by curl");
    let mut first_body = None;
    for n in 1..=3 {
        let out = topo
            .client
            .command("curl")
            .args([
                "-si",
                "--max-time",
                "5",
                &format!("http://{VIP}/cached/page"),
            ])
            .output()
            .context("running curl in the client namespace")?;
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("curl /cached/page: no status line"))?;
        let status = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("x-cache-status"))
            })
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let body = body.trim().to_owned();
        println!("demo:   request {n} -> {code}  X-Cache-Status: {status}  body: {body}");
        let expected = if n == 1 { "MISS" } else { "HIT" };
        ensure!(
            code == 200 && status == expected,
            "request {n} to /cached/page: {code} {status:?}, expected 200 {expected}"
        );
        match &first_body {
            None => first_body = Some(body),
            Some(first) => ensure!(
                *first == body,
                "a HIT answered {body:?}, the stored answer was {first:?}"
            ),
        }
    }
    Ok(())
}

fn backend_file(jwks: &Path) -> String {
    let mut text = format!(
        "# Written by `cargo xtask demo`. One pool of three HTTP backends with health checks,
# an HTTP listener on the VIP, and the VIP in the XDP tier handed to this host's stack.
[[pool]]
name = \"{POOL}\"
algorithm = \"round_robin\"
retries = 2                    # idempotent requests whose backend failed go to another one
  [pool.health_check]
  type = \"http\"
  path = \"{}\"
  interval = \"{}ms\"
  timeout = \"400ms\"
  rise = 2
  fall = 2
",
        backend::HEALTH_PATH,
        CHECK_INTERVAL.as_millis()
    );
    for id in 1..=BACKENDS {
        text += &format!("  [[pool.backend]]\n  address = \"{}\"\n", address_of(id));
    }
    text += &format!(
        "
[[listener]]
name = \"web\"
address = \"{VIP}:80\"

[[route]]                      # answered by lb itself: a redirect, the query kept
name = \"old-docs\"
listener = \"web\"
path_prefix = \"/old-docs\"
redirect = {{ status = 308, path = \"/docs\" }}

[[jwt_provider]]               # the demo's token issuer; its keys from a JWKS file
name = \"demo-idp\"
issuer = \"{DEMO_ISSUER}\"
audiences = [\"demo-api\"]
jwks_file = \"{jwks}\"

[[route]]                      # a valid token of demo-idp required
name = \"api\"
listener = \"web\"
path_prefix = \"/api\"
pool = \"{POOL}\"
jwt = {{ provider = \"demo-idp\", claims_to_headers = {{ \"x-user\" = \"sub\" }} }}

[[route]]                      # 3 requests per client per hour, then 429
name = \"limited\"
listener = \"web\"
path = \"/limited\"
respond = {{ status = 200, body = \"within the limit\\n\" }}
  [[route.rate_limit]]
  name = \"per-client\"
  key = \"client_ip\"
  rate = \"1/h\"
  burst = 3

[[route]]                      # answers kept an hour in lb's response cache
name = \"cached\"
listener = \"web\"
path_prefix = \"/cached\"
pool = \"{POOL}\"
  [route.cache]
  default_ttl = \"1h\"           # the demo backends send no Cache-Control

[[route]]                      # a fixed answer, no backend involved
name = \"ping\"
listener = \"web\"
path = \"/ping\"
respond = {{ status = 200, body = \"pong\\n\" }}

[[route]]
name = \"site\"
listener = \"web\"
pool = \"{POOL}\"
response_headers = {{ set = {{ \"x-served-by\" = \"lb\" }} }}

[[vip]]
address = \"{VIP}:80\"
forward = \"local\"              # XDP counts and tags the flow, the L7 listener serves it
pool = \"{POOL}\"                  # reals: the pool's backends, taken out when they are down
",
        jwks = jwks.display()
    );
    text
}

fn start_backend(topo: &Topology, xtask: &Path, id: u8) -> Result<Process> {
    let ns = topo
        .backends
        .get(usize::from(id) - 1)
        .ok_or_else(|| anyhow!("no backend namespace {id}"))?;
    let mut process = Process::spawn(
        ns.command(xtask).args([
            "demo-backend",
            "--listen",
            &address_of(id),
            "--name",
            &format!("be{id}"),
        ]),
        &format!("be{id}"),
        Echo::Both,
    )?;
    process.wait_for_line("listening ", Duration::from_secs(10))?;
    Ok(process)
}

/// One backend's health as `/api/status` shows it.
struct BackendHealth {
    address: String,
    health: String,
}

fn health<'a>(backends: &'a [BackendHealth], address: &str) -> &'a str {
    backends
        .iter()
        .find(|b| b.address == address)
        .map_or("missing", |b| b.health.as_str())
}

/// Requests each backend has served so far, by backend id, as the backend itself counts them
/// (`None`: not running). The backends are asked from inside their namespaces.
fn served(topo: &Topology) -> BTreeMap<u8, Option<u64>> {
    (1..=BACKENDS)
        .map(|id| {
            let count = topo.backends.get(usize::from(id) - 1).and_then(|ns| {
                let addr: SocketAddr = address_of(id).parse().ok()?;
                let conn = port_forward::connect_in(&ns.path(), addr).ok()?;
                let (code, body) = http_request(conn, "GET", backend::COUNT_PATH).ok()?;
                (code == 200).then(|| body.trim().parse().ok()).flatten()
            });
            (id, count)
        })
        .collect()
}

fn got_traffic(moved: &BTreeMap<u8, Option<u64>>, id: u8) -> bool {
    moved.get(&id).is_some_and(|n| n.is_some_and(|n| n > 0))
}

/// Requests per backend over one [`WINDOW`] of traffic, printed with lb's view of each.
fn window(topo: &Topology, admin: &Admin, title: &str) -> Result<BTreeMap<u8, Option<u64>>> {
    let before = served(topo);
    thread::sleep(WINDOW);
    print_window(
        &format!("{title}: requests in the last {} s", WINDOW.as_secs()),
        &before,
        &served(topo),
        admin,
    )
}

/// Prints, per backend, lb's health for it and the requests it served between two counts;
/// returns those (`None` for a backend not running at either end).
fn print_window(
    title: &str,
    before: &BTreeMap<u8, Option<u64>>,
    after: &BTreeMap<u8, Option<u64>>,
    admin: &Admin,
) -> Result<BTreeMap<u8, Option<u64>>> {
    let healths = admin.backends()?;
    println!("demo: {title}");
    let mut moved = BTreeMap::new();
    for id in 1..=BACKENDS {
        let n = match (
            before.get(&id).copied().flatten(),
            after.get(&id).copied().flatten(),
        ) {
            // A restarted backend counts from zero.
            (Some(then), Some(now)) => Some(now.checked_sub(then).unwrap_or(now)),
            (None, Some(now)) => Some(now),
            _ => None,
        };
        println!(
            "demo: |  be{id} {:<16} lb says {:<9} {}",
            address_of(id),
            health(&healths, &address_of(id)),
            n.map_or("not running".to_owned(), |n| format!("{n:>6} requests"))
        );
        moved.insert(id, n);
    }
    Ok(moved)
}

/// The number of failed requests in lb bench's text report (`ok (2xx) N  non-2xx N  transport
/// errors N`), and that line.
fn failures_in_report(lines: &[String]) -> Result<(u64, String)> {
    let line = lines
        .iter()
        .find(|l| l.contains("non-2xx") && l.contains("transport errors"))
        .ok_or_else(|| anyhow!("lb bench printed no \"non-2xx ... transport errors\" line"))?;
    let after = |key: &str| -> Result<u64> {
        line.split_once(key)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("cannot read {key:?} in lb bench's line {line:?}"))
    };
    Ok((after("non-2xx")? + after("transport errors")?, line.clone()))
}

fn print_xdp(status: &Value) -> Result<()> {
    let xdp = &status["xdp"];
    ensure!(xdp.is_object(), "/api/status has no xdp section");
    println!(
        "demo: | XDP on {} ({} mode)",
        xdp["iface"].as_str().unwrap_or("?"),
        xdp["mode"].as_str().unwrap_or("?")
    );
    for (section, title) in [
        ("classes", "packets"),
        ("events", "events"),
        ("drops", "dropped"),
    ] {
        let pairs: Vec<String> = xdp[section]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p[1].as_u64() != Some(0))
                    .map(|p| format!("{} {}", p[0].as_str().unwrap_or("?"), p[1]))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "demo: | {title}: {}",
            if pairs.is_empty() {
                "none".to_owned()
            } else {
                pairs.join(", ")
            }
        );
    }
    let vips = status["vips"]
        .as_array()
        .ok_or_else(|| anyhow!("/api/status has no vips"))?;
    let vip = vips
        .iter()
        .find(|v| v["address"] == format!("{VIP}:80"))
        .ok_or_else(|| anyhow!("VIP {VIP}:80 missing from /api/status"))?;
    let (packets, new_flows) = (
        vip["packets"].as_u64().unwrap_or(0),
        vip["new_flows"].as_u64().unwrap_or(0),
    );
    println!(
        "demo: | VIP {VIP}:80 ({}): {packets} packets, {} bytes, {new_flows} new flows",
        vip["forward"].as_str().unwrap_or("?"),
        vip["bytes"]
    );
    for real in vip["reals"].as_array().into_iter().flatten() {
        println!(
            "demo: |   real {:<12} {:<4} new flows {}",
            real["address"].as_str().unwrap_or("?"),
            if real["up"] == true { "up" } else { "down" },
            real["new_flows"]
        );
    }
    // Step 1 opened 16 connections, step 2 eight: each is a new flow through XDP.
    ensure!(
        new_flows >= 24 && packets > new_flows,
        "the XDP tier saw {new_flows} new flows and {packets} packets on the VIP: the benchmark connections did not all pass through it"
    );
    Ok(())
}

/// lb's admin API, through the port forward (so the URL printed for the operator is the one
/// the demo checks against).
struct Admin {
    addr: SocketAddr,
}

impl Admin {
    fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let conn = TcpStream::connect(self.addr)
            .with_context(|| format!("connecting to the admin port {}", self.addr))?;
        http_request(conn, method, path)
    }

    fn post(&self, path: &str) -> Result<()> {
        let (code, body) = self.request("POST", path)?;
        if code != 200 {
            bail!("POST {path}: {code} {}", body.trim());
        }
        Ok(())
    }

    fn status(&self) -> Result<Value> {
        let (code, body) = self.request("GET", "/api/status")?;
        ensure!(code == 200, "GET /api/status: {code}");
        serde_json::from_str(&body).context("parsing /api/status")
    }

    fn backends(&self) -> Result<Vec<BackendHealth>> {
        let status = self.status()?;
        let pool = status["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == POOL))
            .ok_or_else(|| anyhow!("pool {POOL} missing from /api/status"))?;
        pool["backends"]
            .as_array()
            .ok_or_else(|| anyhow!("pool {POOL} has no backends list"))?
            .iter()
            .map(|b| {
                Ok(BackendHealth {
                    address: b["address"]
                        .as_str()
                        .ok_or_else(|| anyhow!("backend without address"))?
                        .to_owned(),
                    health: b["health"].as_str().unwrap_or("?").to_owned(),
                })
            })
            .collect()
    }

    /// Polls the backends until `done` holds, for at most `limit`.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[BackendHealth]) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let backends = self.backends()?;
            if done(&backends) {
                return Ok(());
            }
            if start.elapsed() > limit {
                let states: Vec<String> = backends
                    .iter()
                    .map(|b| format!("{} {}", name_of(&b.address), b.health))
                    .collect();
                bail!("{what}: not within {limit:?} ({})", states.join(", "));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One HTTP/1.1 request with `Connection: close` on `conn`; the status code and body.
fn http_request(mut conn: TcpStream, method: &str, path: &str) -> Result<(u16, String)> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let host = conn.peer_addr()?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .with_context(|| format!("reading the answer to {method} {path} from {host}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path} ({host}): no complete response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path} ({host}): bad status line"))?;
    Ok((code, body.to_owned()))
}

struct Topology {
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
}

impl Topology {
    fn build() -> Result<Self> {
        let client = track(Netns::new(PREFIX, "client")?);
        let lb = track(Netns::new(PREFIX, "lb")?);
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &["10.200.0.1/24"],
            },
            VethEnd {
                ns: &lb,
                name: "l0",
                addrs: &["10.200.0.2/24"],
            },
        )?;
        client.ip(&["route", "add", "default", "via", "10.200.0.2"])?;
        lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        // veth hands CHECKSUM_PARTIAL skbs to native XDP, which loses the "finish the checksum
        // later" mark; the lb namespace's stack would then drop the client's TCP segments as
        // corrupt. Real NICs compute checksums before XDP sees anything.
        run(client
            .command("ethtool")
            .args(["-K", "c0", "tx", "off"])
            .stdout(Stdio::null()))?;
        let mut backends = Vec::new();
        for id in 1..=BACKENDS {
            let be = track(Netns::new(PREFIX, &format!("be{id}"))?);
            veth_pair(
                VethEnd {
                    ns: &lb,
                    name: &format!("b{id}"),
                    addrs: &[&format!("10.201.{id}.1/24")],
                },
                VethEnd {
                    ns: &be,
                    name: "e0",
                    addrs: &[&format!("10.201.{id}.2/24")],
                },
            )?;
            backends.push(be);
        }
        Ok(Self {
            client,
            lb,
            backends,
        })
    }
}
