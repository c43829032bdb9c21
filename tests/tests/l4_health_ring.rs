//! One health state reaches the BPF Maglev table: `lb run --iface` in the DSR topology with a
//! `[[vip]]` whose reals are a health-checked pool. Stopping one real's health endpoint must
//! take its id out of the VIP's live ring in `MAGLEV_RINGS` (read from the kernel, through the
//! program attached to the interface) within interval x fall, and starting it again must put it
//! back after rise.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    dsr::{DsrTopology, REALS},
    lb_maps::{LbMaps, attached_prog_id},
    lb_run_netns::{LbRun, PinDir},
    netns::{Netns, require_root},
};

const HEALTH_PORT: u16 = 8080;
const RING_SIZE: u32 = 1009;

/// A TCP endpoint in a namespace that accepts and closes (a passing `tcp` health check);
/// stopping it closes the listener, so checks get "connection refused".
struct HealthEndpoint {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HealthEndpoint {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns
            .run(move || TcpListener::bind(addr).expect("bind health endpoint"))
            .expect("in real netns");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn backend_file(topo: &DsrTopology, vip: SocketAddr) -> String {
    let mut text = String::from(
        "[[pool]]\nname = \"web\"\n[pool.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\n\
         timeout = \"80ms\"\nrise = 2\nfall = 2\n",
    );
    for i in 0..REALS {
        text += &format!(
            "[[pool.backend]]\naddress = \"{}\"\n",
            SocketAddr::new(topo.real_ip(i), HEALTH_PORT)
        );
    }
    text += &format!("[[vip]]\naddress = \"{vip}\"\nring_size = {RING_SIZE}\npool = \"web\"\n");
    text
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => panic!("the DSR rig is IPv4"),
    }
}

/// Polls the live ring until `done` holds for its set of real ids; returns how long it took.
fn wait_ring(
    maps: &LbMaps,
    vip: SocketAddr,
    what: &str,
    limit: Duration,
    done: impl Fn(&BTreeSet<u32>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let ids = maps.ring_ids(vip).expect("read ring");
        if done(&ids) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}; ring holds {ids:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_state_reaches_the_bpf_maglev_ring() {
    if !require_root("health_state_reaches_the_bpf_maglev_ring") {
        return;
    }
    let topo = DsrTopology::build(91);
    let vip = SocketAddr::new(topo.vip_ip(), 80);
    let mut endpoints: Vec<Option<HealthEndpoint>> = topo
        .reals
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Some(HealthEndpoint::start(
                ns,
                SocketAddr::new(topo.real_ip(i), HEALTH_PORT),
            ))
        })
        .collect();
    let file =
        TempFile(std::env::temp_dir().join(format!("lb-health-ring-{}.toml", std::process::id())));
    std::fs::write(&file.0, backend_file(&topo, vip)).expect("write backend file");
    let file_arg = file.0.display().to_string();
    let pins = PinDir::new("ring");
    let pin_arg = pins.arg();
    let _lb = LbRun::start(
        &topo.lb,
        [
            "--iface",
            "l0",
            "--xdp-mode",
            "skb",
            "--backends",
            &file_arg,
            "--admin",
            "127.0.0.1:9900",
            "--pin-dir",
            &pin_arg,
        ],
    );
    let prog = attached_prog_id(&topo.lb, "l0").expect("lb_xdp attached to l0");
    let maps = LbMaps::of_program(prog).expect("lb's maps");

    let ids: Vec<u32> = (0..REALS)
        .map(|i| {
            maps.real_id_of(v4(topo.real_ip(i)))
                .expect("read REALS")
                .expect("every real has an id")
        })
        .collect();
    let all: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(all.len(), REALS, "distinct ids {ids:?}");
    wait_ring(
        &maps,
        vip,
        "all reals in the ring",
        Duration::from_secs(3),
        |r| *r == all,
    );
    let ring = maps.ring(vip).expect("ring");
    assert_eq!(
        ring.values().sum::<u32>(),
        RING_SIZE,
        "every slot owned: {ring:?}"
    );

    // Real 2 stops answering its health checks: fall = 2 at 100 ms, so well under a second.
    endpoints[1] = None;
    let took = wait_ring(
        &maps,
        vip,
        "real 2 out of the ring",
        Duration::from_secs(3),
        |r| !r.contains(&ids[1]),
    );
    eprintln!("real 2 left the ring after {took:?}");
    let ring = maps.ring(vip).expect("ring");
    assert_eq!(
        ring.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([ids[0], ids[2]]),
        "the others keep serving"
    );
    assert_eq!(ring.values().sum::<u32>(), RING_SIZE, "slots re-owned");
    let reals = maps.reals().expect("reals");
    assert_eq!(
        reals[&ids[1]].flags & lb_common::l4::REAL_DOWN,
        lb_common::l4::REAL_DOWN
    );
    assert_eq!(reals[&ids[0]].flags & lb_common::l4::REAL_DOWN, 0);
    // Still out a few intervals later (no flapping back while it is down).
    thread::sleep(Duration::from_millis(500));
    assert!(!maps.ring_ids(vip).expect("ring").contains(&ids[1]));

    // Back: rise = 2, same id as before (established flows elsewhere keep theirs).
    endpoints[1] = Some(HealthEndpoint::start(
        &topo.reals[1],
        SocketAddr::new(topo.real_ip(1), HEALTH_PORT),
    ));
    let took = wait_ring(
        &maps,
        vip,
        "real 2 back in the ring",
        Duration::from_secs(3),
        |r| *r == all,
    );
    eprintln!("real 2 came back after {took:?}");
    assert_eq!(
        maps.real_id_of(v4(topo.real_ip(1))).expect("REALS"),
        Some(ids[1]),
        "the real keeps its id"
    );
    assert_eq!(maps.reals().expect("reals")[&ids[1]].flags, 0);
}
