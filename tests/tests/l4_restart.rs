//! Restart under load with the fast path pinned, in the DSR topology (see `dsr.rs`):
//! `lb run --keep-fast-path` balances long-lived TCP connections over three reals; SIGTERM
//! stops lb while the connections keep exchanging requests; with no lb running they keep
//! working (and new connections still get balanced); a new lb takes over the pins (program
//! replaced behind the link, ids rebuilt, rings re-flipped) without disturbing them; stopping
//! that one without `--keep-fast-path` removes the pins and detaches.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb::{
    l4::{Protocol, addr16, flow_key},
    maglev::{self, Backend},
    xdp::{self, AttachMode, AttachedXdp},
};
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::DEFAULT_RING_SIZE,
    program_names,
};
use lb_tests::{
    dsr::{DsrTopology, REALS, connect_from, get_name, serve_name},
    lb_maps::attached_prog_id,
    lb_run_netns::{LbRun, PinDir},
};

const LONG_LIVED: u16 = 30;

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Requests round-robin over the long-lived connections until stopped. Every answer must come
/// from the real the connection first reached.
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(conns: Vec<(TcpStream, String)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (flag, count, failed) = (stop.clone(), requests.clone(), failures.clone());
        let thread = thread::spawn(move || {
            let mut conns = conns;
            let mut broken = Vec::new();
            // One round with failures is enough to report; a broken connection stays broken.
            while !flag.load(Ordering::Relaxed) && broken.is_empty() {
                for (n, (conn, real)) in conns.iter_mut().enumerate() {
                    match get_name(conn) {
                        Ok(got) if got == *real => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        other => broken.push(format!("connection {n} (on {real}): {other:?}")),
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
            if let Ok(mut failed) = failed.lock() {
                failed.extend(broken);
            }
        });
        Self {
            stop,
            requests,
            failures,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests succeeded (all connections took part).
    fn advance(&self, more: u64, what: &str) {
        let target = self.requests() + more;
        let start = Instant::now();
        while self.requests() < target {
            self.assert_clean(what);
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: load stalled at {} requests",
                self.requests()
            );
            thread::sleep(Duration::from_millis(10));
        }
        self.assert_clean(what);
    }

    fn assert_clean(&self, what: &str) {
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(failures.is_empty(), "{what}: {failures:?}");
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backend file: the reals in `reals` order, with their weights.
fn backend_file(topo: &DsrTopology, reals: &[(usize, u32)]) -> String {
    let mut text = format!("[[vip]]\naddress = \"{}:80\"\n", topo.vip_ip());
    for (i, weight) in reals {
        text += &format!(
            "[[vip.real]]\naddress = \"{}\"\nweight = {weight}\n",
            topo.real_ip(*i)
        );
    }
    text
}

/// The real ("realN") Maglev and the flow hash pick for a new flow from `client_port`.
fn predict(topo: &DsrTopology, reals: &[(usize, u32)], client_port: u16) -> String {
    let backends: Vec<Backend> = reals
        .iter()
        .map(|(i, weight)| Backend {
            key: addr16(topo.real_ip(*i)).0,
            weight: *weight,
        })
        .collect();
    let table = maglev::build(&backends, DEFAULT_RING_SIZE).expect("maglev");
    let flow = flow_key(
        SocketAddr::new(topo.client_ip(), client_port),
        SocketAddr::new(topo.vip_ip(), 80),
        Protocol::Tcp,
    );
    let slot = flow_hash(&flow, FLOW_HASH_SEED) % DEFAULT_RING_SIZE;
    let owner = table[slot as usize].expect("owned");
    format!("real{}", reals[owner].0 + 1)
}

/// `count` new connections from `first_port` on, one request each; answers by real. Each
/// must land exactly where the Maglev table of `reals` and the flow hash say.
fn new_connections(
    topo: &DsrTopology,
    reals: &[(usize, u32)],
    first_port: u16,
    count: u16,
) -> BTreeMap<String, usize> {
    let (client_ip, vip) = (topo.client_ip(), SocketAddr::new(topo.vip_ip(), 80));
    let answers: Vec<String> = topo
        .client
        .run(move || {
            (0..count)
                .map(|n| {
                    let mut conn = connect_from(client_ip, first_port + n, vip).expect("connect");
                    get_name(&mut conn).expect("GET on a new connection")
                })
                .collect()
        })
        .expect("client");
    let predicted: Vec<String> = (0..count)
        .map(|n| predict(topo, reals, first_port + n))
        .collect();
    assert_eq!(answers, predicted, "each new flow lands where Maglev says");
    let mut by_real = BTreeMap::new();
    for a in answers {
        *by_real.entry(a).or_insert(0) += 1;
    }
    by_real
}

/// Every real got at least half its weighted share of `total` new connections.
fn assert_balanced(
    by_real: &BTreeMap<String, usize>,
    reals: &[(usize, u32)],
    total: u16,
    what: &str,
) {
    let weights: u32 = reals.iter().map(|(_, w)| w).sum();
    for (i, weight) in reals {
        let got = by_real.get(&format!("real{}", i + 1)).copied().unwrap_or(0);
        let share = f64::from(total) * f64::from(*weight) / f64::from(weights);
        assert!(
            got as f64 >= share / 2.0,
            "{what}: real{} got {got}, its share is {share}: {by_real:?}",
            i + 1
        );
    }
}

#[test]
fn established_flows_survive_an_lb_restart_with_the_fast_path_pinned() {
    if !lb_tests::netns::require_root("established_flows_survive_an_lb_restart") {
        return;
    }
    let topo = DsrTopology::build(92);
    let vip = SocketAddr::new(topo.vip_ip(), 80);
    let mut decaps: Vec<AttachedXdp> = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        decaps.push(
            real.run(|| {
                xdp::attach_program(program_names::DECAP, "e0", AttachMode::Native).expect("decap")
            })
            .expect("decap in real netns"),
        );
        let vip_ip: IpAddr = topo.vip_ip();
        let listener = real
            .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    // The second lb lists the reals in another order with other weights: a fresh dataplane
    // would number them differently and rebuild another ring, so established flows survive
    // only if the connection table and the ids really are carried over.
    let before: [(usize, u32); REALS] = [(0, 1), (1, 1), (2, 1)];
    let after_restart: [(usize, u32); REALS] = [(2, 3), (0, 1), (1, 1)];
    let text = backend_file(&topo, &before);
    let file =
        TempFile(std::env::temp_dir().join(format!("lb-restart-{}.toml", std::process::id())));
    std::fs::write(&file.0, text).expect("write backend file");
    let pins = PinDir::new("restart");
    let args = |keep: bool| {
        let mut args = vec![
            "--iface".to_owned(),
            "l0".to_owned(),
            "--xdp-mode".to_owned(),
            "native".to_owned(),
            "--backends".to_owned(),
            file.0.display().to_string(),
            "--admin".to_owned(),
            "127.0.0.1:9900".to_owned(),
            "--pin-dir".to_owned(),
            pins.arg(),
        ];
        if keep {
            args.push("--keep-fast-path".to_owned());
        }
        args
    };

    // 1. First lb, fresh pins; long-lived connections spread over the reals.
    let first = LbRun::start(&topo.lb, args(true));
    assert!(
        first
            .startup
            .iter()
            .any(|l| l.contains("reused_link=false reused_maps=false")),
        "{:?}",
        first.startup
    );
    let first_prog = attached_prog_id(&topo.lb, "l0").expect("lb_xdp attached");
    let client_ip = topo.client_ip();
    let conns: Vec<(TcpStream, String)> = topo
        .client
        .run(move || {
            (0..LONG_LIVED)
                .map(|n| {
                    let mut conn = connect_from(client_ip, 30000 + n, vip).expect("connect");
                    let real = get_name(&mut conn).expect("first GET");
                    (conn, real)
                })
                .collect()
        })
        .expect("client");
    let mut spread = BTreeMap::new();
    for (_, real) in &conns {
        *spread.entry(real.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        REALS,
        "long-lived connections on every real: {spread:?}"
    );
    let would_move = conns
        .iter()
        .enumerate()
        .filter(|(n, (_, real))| predict(&topo, &after_restart, 30000 + *n as u16) != *real)
        .count();
    assert!(
        would_move > 0,
        "some long-lived flows hash elsewhere under the new ring (so the test can fail)"
    );
    let load = Load::start(conns);
    load.advance(u64::from(LONG_LIVED) * 3, "with the first lb");

    // 2. SIGTERM with --keep-fast-path: lb exits, program and pins stay.
    let status = first.stop(Duration::from_secs(10));
    assert!(status.success(), "first lb exit: {status:?}");
    assert_eq!(
        attached_prog_id(&topo.lb, "l0"),
        Some(first_prog),
        "program left attached"
    );
    assert!(pins.path.join("link_native").exists(), "link pin kept");
    load.advance(u64::from(LONG_LIVED) * 5, "with no lb running");
    let while_gone = new_connections(&topo, &before, 31000, 90);
    assert_balanced(
        &while_gone,
        &before,
        90,
        "new connections with no lb running",
    );
    eprintln!("{would_move} of {LONG_LIVED} long-lived flows hash elsewhere under the new ring");
    load.advance(u64::from(LONG_LIVED), "after new connections with no lb");

    // 3. A new lb takes over the pins: same link, new program, ids rebuilt, rings re-flipped.
    std::fs::write(&file.0, backend_file(&topo, &after_restart)).expect("rewrite");
    let second = LbRun::start(&topo.lb, args(false));
    assert!(
        second
            .startup
            .iter()
            .any(|l| l.contains("reused_link=true reused_maps=true")),
        "{:?}",
        second.startup
    );
    let second_prog = attached_prog_id(&topo.lb, "l0").expect("still attached");
    assert_ne!(
        second_prog, first_prog,
        "program replaced behind the pinned link"
    );
    load.advance(u64::from(LONG_LIVED) * 5, "after the restart");
    let after = new_connections(&topo, &after_restart, 32000, 90);
    assert_balanced(
        &after,
        &after_restart,
        90,
        "new connections after the restart",
    );
    load.advance(u64::from(LONG_LIVED), "after new connections");
    eprintln!(
        "{} requests on {LONG_LIVED} long-lived connections across the restart, none failed",
        load.requests()
    );
    drop(load);

    // 4. Stopped without --keep-fast-path: pins removed, program detached.
    let status = second.stop(Duration::from_secs(10));
    assert!(status.success(), "second lb exit: {status:?}");
    assert!(!pins.path.exists(), "pins removed: {}", pins.path.display());
    assert_eq!(attached_prog_id(&topo.lb, "l0"), None, "no XDP on l0");
    let link = topo.lb.ip(&["link", "show", "dev", "l0"]).expect("ip link");
    assert!(!link.contains("xdp"), "ip link shows no xdp: {link}");
}
