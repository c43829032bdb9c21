//! Hitless binary upgrade of `lb run` (`lb upgrade`, issue 16), done from outside as an
//! operator does it, under load: clients opening a new connection per request, keep-alive
//! clients and HTTP/2 clients keep going across the upgrade and none is refused, reset or
//! answered with an error; a request in flight and a tcp relay opened before the upgrade
//! finish on the old process, which then exits; the new process serves the same listeners and
//! the same admin address. An upgrade whose new process cannot start leaves the old one
//! serving and says why.
//!
//! Keep-alive and HTTP/2 clients reconnect when the server closes an idle connection or
//! says GOAWAY before taking their next request (the request was never processed: RFC 9112
//! §9.3.1, RFC 9113 §8.7), as every HTTP client does; those are counted apart, not as failures.
use std::{
    convert::Infallible,
    error::Error as _,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb_tests::{
    lb_bin,
    lb_run::{LbRun, http, wait_for},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A backend: `/slow` answers once the test releases it; anything else answers at once.
struct Backend {
    addr: SocketAddr,
    /// `/slow` requests received.
    slow_started: Arc<AtomicU64>,
    release: watch::Sender<bool>,
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let slow_started = Arc::new(AtomicU64::new(0));
    let (release, released) = watch::channel(false);
    let started = slow_started.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (started, released) = (started.clone(), released.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (started, mut released) = (started.clone(), released.clone());
                    async move {
                        if req.uri().path() == "/slow" {
                            started.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Backend {
        addr,
        slow_started,
        release,
    }
}

fn file(backend: SocketAddr) -> String {
    file_with(&[backend])
}

fn file_with(backends: &[SocketAddr]) -> String {
    let backends: String = backends
        .iter()
        .map(|b| format!("[[pool.backend]]\naddress = \"{b}\"\n"))
        .collect();
    format!(
        "[[pool]]\nname = \"web\"\n{backends}\
         [[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"relay\"\naddress = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         [[route]]\nlistener = \"web\"\npool = \"web\"\n\
         [[route]]\nlistener = \"relay\"\npool = \"web\"\n"
    )
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests retried on a new connection because the server closed the idle one (or said
    /// GOAWAY) before taking them.
    reconnects: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().expect("tally").push(what);
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
}

/// The status code of a raw HTTP/1.1 answer.
fn status_of(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head.get(..12)?)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One request on a new connection (`Connection: close`): the status.
async fn close_request(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    status_of(&answer).ok_or_else(|| format!("no answer ({} bytes)", answer.len()))
}

async fn new_connection_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match close_request(addr, "/").await {
            Ok(200) => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(code) => tally.fail(format!("new connection: status {code}")),
            Err(e) => tally.fail(format!("new connection: {e}")),
        }
    }
}

enum KeepAlive {
    /// Status, and whether the server will close the connection.
    Answered(u16, bool),
    /// Not one byte of answer: the server closed the connection without taking the request.
    NotTaken,
    Failed(String),
}

/// One request on a keep-alive connection.
async fn keep_alive_request(conn: &mut BufReader<TcpStream>) -> KeepAlive {
    if conn
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .is_err()
    {
        return KeepAlive::NotTaken;
    }
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        match conn.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) if head.is_empty() => return KeepAlive::NotTaken,
            Ok(0) => return KeepAlive::Failed("closed inside the answer's head".into()),
            Err(e) => return KeepAlive::Failed(format!("read: {e}")),
            Ok(_) => {}
        }
        let end = line == b"\r\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let Some(status) = status_of(&head) else {
        return KeepAlive::Failed(format!("bad head {text:?}"));
    };
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if let Err(e) = conn.read_exact(&mut body).await {
        return KeepAlive::Failed(format!("body: {e}"));
    }
    KeepAlive::Answered(status, text.contains("connection: close"))
}

async fn keep_alive_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let reused = kept.is_some();
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => match TcpStream::connect(addr).await {
                Ok(tcp) => BufReader::new(tcp),
                Err(e) => {
                    tally.fail(format!("keep-alive: connect: {e}"));
                    continue;
                }
            },
        };
        match keep_alive_request(&mut conn).await {
            KeepAlive::Answered(200, close) => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
                if !close {
                    kept = Some(conn);
                }
            }
            KeepAlive::Answered(code, _) => tally.fail(format!("keep-alive: status {code}")),
            KeepAlive::NotTaken if reused => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            KeepAlive::NotTaken => tally.fail("keep-alive: a new connection was closed".into()),
            KeepAlive::Failed(e) => tally.fail(format!("keep-alive: {e}")),
        }
    }
}

/// Whether an HTTP/2 request failed because the server never processed it: above the last
/// stream id of its GOAWAY, or refused (RFC 9113 §8.7: safe to retry).
fn not_processed(e: &hyper::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    e.is_canceled()
}

async fn h2_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut kept = None;
    while !stop.load(Ordering::SeqCst) {
        let mut sender = match kept.take() {
            Some(sender) => sender,
            None => {
                let tcp = match TcpStream::connect(addr).await {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tally.fail(format!("h2: connect: {e}"));
                        continue;
                    }
                };
                match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                {
                    Ok((sender, connection)) => {
                        tokio::spawn(connection);
                        sender
                    }
                    Err(e) => {
                        tally.fail(format!("h2: handshake: {e}"));
                        continue;
                    }
                }
            }
        };
        // Gone away between requests: a new connection, nothing was sent.
        if sender.ready().await.is_err() {
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let request = Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        match sender.send_request(request).await {
            Ok(response) if response.status() == 200 => match response.collect().await {
                Ok(_) => {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                    kept = Some(sender);
                }
                Err(e) => tally.fail(format!("h2: body: {e}")),
            },
            Ok(response) => tally.fail(format!("h2: status {}", response.status())),
            Err(e) if not_processed(&e) => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => tally.fail(format!("h2: {e:?}")),
        }
    }
}

/// Kills the lb an upgrade started (not a child of this test: the old lb started it).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `lb upgrade --json` against `lb`: the new pid, or what it printed on failure.
fn upgrade(lb: &LbRun) -> Result<u32, String> {
    let out = Command::new(lb_bin())
        .args(["upgrade", "--json", "--admin", &lb.admin.to_string()])
        .output()
        .expect("run lb upgrade");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    Ok(u32::try_from(answer["pid"].as_u64().expect("pid")).expect("pid"))
}

fn status_pid(lb: &LbRun) -> u64 {
    lb.status()["pid"].as_u64().unwrap_or(0)
}

/// One GET through the tcp relay connection `conn` (kept alive): the status.
async fn through_relay(conn: &mut BufReader<TcpStream>) -> u16 {
    match keep_alive_request(conn).await {
        KeepAlive::Answered(status, _) => status,
        KeepAlive::NotTaken => 0,
        KeepAlive::Failed(e) => panic!("through the relay: {e}"),
    }
}

#[test]
fn an_upgrade_under_load_refuses_resets_and_fails_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(backend());
    let mut lb = LbRun::start("upgrade", &file(backend.addr), &["--grace", "60s"]);
    let (web, relay) = (lb.listener("web"), lb.listener("relay"));
    let old_pid = lb.pid();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (t, s) = (tally.clone(), stop.clone());
        clients.push(runtime.spawn(new_connection_client(web, t, s)));
        let (t, s) = (tally.clone(), stop.clone());
        clients.push(runtime.spawn(keep_alive_client(web, t, s)));
        let (t, s) = (tally.clone(), stop.clone());
        clients.push(runtime.spawn(h2_client(web, t, s)));
    }
    wait_for("traffic through lb", LIMIT, || tally.ok() >= 200);

    // A request in flight across the upgrade, and a tcp relay opened before it.
    let slow = runtime.spawn(close_request(web, "/slow"));
    wait_for("the slow request at the backend", LIMIT, || {
        backend.slow_started.load(Ordering::SeqCst) == 1
    });
    let mut relayed = runtime.block_on(async {
        BufReader::new(TcpStream::connect(relay).await.expect("connect the relay"))
    });
    assert_eq!(runtime.block_on(through_relay(&mut relayed)), 200);

    let new_pid = upgrade(&lb).expect("lb upgrade");
    let _successor = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    // The admin address is the new process's now (the old one stopped accepting on it).
    wait_for("the new lb on the admin address", LIMIT, || {
        status_pid(&lb) == u64::from(new_pid)
    });

    // The old process keeps what it had for the grace: the relay still carries traffic and
    // the slow request gets its answer.
    assert_eq!(runtime.block_on(through_relay(&mut relayed)), 200);
    backend.release.send_replace(true);
    assert_eq!(runtime.block_on(slow).expect("slow request task"), Ok(200));
    drop(relayed);
    // Then it exits, cleanly.
    assert!(lb.wait_exit().success());

    // The new process alone serves the load.
    let served = tally.ok();
    wait_for("traffic through the new lb", LIMIT, || {
        tally.ok() >= served + 200
    });
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        runtime.block_on(client).expect("client task");
    }
    let failures = tally.failures.lock().expect("tally");
    assert!(
        failures.is_empty(),
        "{} failed of {} ({} reconnects): {:?}",
        failures.len(),
        tally.ok(),
        tally.reconnects.load(Ordering::SeqCst),
        &failures[..failures.len().min(10)]
    );
    eprintln!(
        "upgrade under load: {} requests answered 200, {} reconnects, 0 failures",
        tally.ok(),
        tally.reconnects.load(Ordering::SeqCst)
    );
}

#[test]
fn an_upgrade_that_cannot_start_leaves_the_old_lb_serving() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (backend, spare) = runtime.block_on(async { (backend().await, backend().await) });
    let good = file_with(&[backend.addr, spare.addr]);
    let lb = LbRun::start("upgrade-fails", &good, &[]);
    let web = lb.listener("web");

    // The file turns bad: the running lb refuses the reload and keeps its configuration; a
    // new process refuses to start on it.
    std::fs::write(&lb.file, "[[pool]]\nname = 1\n").expect("write");
    wait_for("the bad file refused", LIMIT, || {
        lb.status()["config"]["reloads_failed"].as_u64() >= Some(1)
    });
    let why = upgrade(&lb).expect_err("an upgrade onto a bad file");
    assert!(why.contains("exited before it was ready"), "{why}");
    assert_eq!(status_pid(&lb), u64::from(lb.pid()));
    assert_eq!(runtime.block_on(close_request(web, "/")), Ok(200));

    // Nothing was lost by the failed attempt: with the file fixed, the upgrade goes through,
    // and the new lb keeps the operator's drain.
    std::fs::write(&lb.file, &good).expect("write");
    wait_for("the good file reloaded", LIMIT, || {
        lb.status()["config"]["last_error"].is_null()
    });
    // (A listener on port 0 is bound anew by a reload.)
    let web = lb.listener_now("web").expect("web listener");
    let drain = format!("/api/drain?pool=web&backend={}", spare.addr);
    assert_eq!(http("POST", lb.admin, &drain).0, 200);
    let pid = upgrade(&lb).expect("lb upgrade");
    let _successor = KillOnDrop(pid);
    wait_for("the new lb on the admin address", LIMIT, || {
        status_pid(&lb) == u64::from(pid)
    });
    let health: Vec<_> = lb.status()["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(health, ["unchecked", "draining"]);
    assert_eq!(lb.listener_now("web"), Some(web));
    assert_eq!(runtime.block_on(close_request(web, "/")), Ok(200));
}

/// The BIRD processes running with `config` (their pids).
fn birds(config: &std::path::Path) -> Vec<u32> {
    let wanted = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let is_bird = args.next().is_some_and(|a| a.ends_with(b"bird"));
            let with_config = cmdline.split(|b| *b == 0).any(|a| a == wanted);
            (is_bird && with_config && lb_tests::process_running(pid)).then_some(pid)
        })
        .collect()
}

/// `[bgp]` across an upgrade: the old lb's BIRD stops when the new lb is ready, the new lb
/// then starts its own (never two on one control socket and BGP peer address), keeps the
/// operator's drain-node, and its BIRD dies with it.
#[test]
fn an_upgrade_hands_the_bgp_speaker_over() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backend = runtime.block_on(backend());
    let dir = lb_tests::temp_dir::TempDir::new("upgrade-bgp");
    let routes = dir.0.join("vips.conf");
    let bird_config = dir.write(
        "bird.conf",
        &format!(
            "router id 10.0.0.1;\ninclude \"{}\";\nprotocol device {{}}\n",
            routes.display()
        ),
    );
    let text = format!(
        "[bgp]\nbird_config = \"{}\"\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n{}",
        bird_config.display(),
        dir.0.join("bird.ctl").display(),
        routes.display(),
        file(backend.addr)
    );
    let lb = LbRun::start("upgrade-bgp", &text, &[]);
    wait_for("BIRD running", LIMIT, || {
        lb.status()["bgp"]["speaker_running"] == true
    });
    let first = birds(&bird_config);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(http("POST", lb.admin, "/api/node/drain").0, 200);

    let pid = upgrade(&lb).expect("lb upgrade");
    let _successor = KillOnDrop(pid);
    wait_for("the new lb running its own BIRD", LIMIT, || {
        let status = lb.status();
        status["pid"].as_u64() == Some(u64::from(pid))
            && status["bgp"]["speaker_running"] == true
            && birds(&bird_config).iter().all(|b| !first.contains(b))
    });
    assert_eq!(birds(&bird_config).len(), 1, "one BIRD");
    let status = lb.status();
    assert_eq!(status["bgp"]["node_drained"], true, "{status}");
    assert!(status["bgp"]["last_error"].is_null(), "{status}");

    // Killed, the new lb takes its BIRD with it.
    drop(_successor);
    wait_for("BIRD gone with the lb that ran it", LIMIT, || {
        birds(&bird_config).is_empty()
    });
}
