//! `cargo xtask demo --cluster`: lb's scale-out. Three `lb run` nodes announce one VIP by BGP
//! to a router that spreads the flows over them by ECMP; every node builds the same Maglev
//! ring, so a flow keeps its real whichever node carries it.
//!
//! ```text
//!  client ns          router ns: BIRD 2, ECMP            lb node ns x3: `lb run` (XDP on i0)
//!  c0 10.210.0.1 ---- r0 10.210.0.2                      and BIRD, BGP to the router
//!                     n1 10.210.11.1 ------------------- i0 10.210.11.2
//!                     n2 10.210.12.1 ------------------- i0 10.210.12.2
//!                     n3 10.210.13.1 ------------------- i0 10.210.13.2
//!                                                        real ns x3: `lb decap` on e0,
//!                     t1 10.210.21.1 ------------------- e0 10.210.21.2  VIP 10.210.100.100
//!                     t2 10.210.22.1 ------------------- e0 10.210.22.2  on lo, HTTP on :80
//!                     t3 10.210.23.1 ------------------- e0 10.210.23.2
//! ```
//! A node encapsulates the client's packets (IPIP) back out of i0 to the router, which
//! forwards them to the real; the real answers the client directly through the router (DSR).
//! The story (what `tests/tests/l4_bgp.rs` proves with 1000 flows):
//! 1. The nodes announce the VIP once their health checks pass; the router's VIP route lists
//!    all three; the nodes' ring hashes agree.
//! 2. 300 long-lived keep-alive connections from fixed client ports, one request each.
//! 3. `lb ctl drain-node` on node 3: withdrawn; every connection still reaches its real.
//! 4. lb on node 1 killed with SIGKILL (its BIRD dies with it): withdrawn; every connection
//!    still reaches its real.
//! 5. Node 1 started again (same pin directory): announced again; same check.
//! 6. SIGTERM to every node: each withdraws first, then exits 0. Namespaces and pins are
//!    removed at the end, on failure and (namespaces; pins at the next run) on Ctrl-C.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use super::{
    PREFIX,
    process::{Echo, Process},
    track,
};
use crate::{
    netns::{Netns, VethEnd, veth_pair},
    run,
};

const NODES: usize = 3;
const REALS: usize = 3;
const VIP: &str = "10.210.100.100";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const ROUTER: &str = "10.210.0.2";
/// Long-lived flows, from client ports `FIRST_PORT..FIRST_PORT + FLOWS`.
const FLOWS: u16 = 300;
const FIRST_PORT: u16 = 40000;
/// lb's admin address inside each node namespace.
const ADMIN: &str = "127.0.0.1:9900";
/// BGP sessions come up within a few connect retries (1 s each); generous for a busy machine.
const CONVERGE: Duration = Duration::from_secs(90);
/// How long one request on an open connection may take before it counts as broken.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub fn demo(ws: &Path, lb: &Path) -> Result<()> {
    let started = Instant::now();
    let dir = ws.join("target/demo/cluster");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sweep_stale_pins();
    let topo = Topology::build()?;
    println!(
        "demo: topology up: client ns -> router ns (BIRD, ECMP over the nodes) -> {NODES} lb node namespaces -> {REALS} real namespaces, VIP {VIP}:80"
    );
    // Declared after the namespaces so they go first: pins, then the processes (dropped in
    // reverse order), then the namespaces.
    let pins = Pins::new();

    let mut decaps = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        let name = format!("real{}", i + 1);
        let listener = real
            .run(|| TcpListener::bind(("0.0.0.0", 80)))?
            .with_context(|| format!("binding port 80 in {name}'s namespace"))?;
        let server_name = name.clone();
        thread::spawn(move || serve_name(listener, &server_name));
        let mut decap = Process::spawn(
            real.command(lb)
                .args(["decap", "--iface", "e0"])
                .env("RUST_LOG", "warn"),
            &format!("{name} decap"),
            Echo::Both,
        )?;
        decap.wait_for_line("attached ", Duration::from_secs(30))?;
        decaps.push(decap);
    }

    let _router_bird = start_router_bird(&topo, &dir)?;
    let files = (0..NODES)
        .map(|k| write_node_files(&dir, k))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "demo: node 1's backend file {}:\n{}",
        files[0].display(),
        std::fs::read_to_string(&files[0])?
    );
    let mut nodes: Vec<Option<Process>> = Vec::new();
    for (k, file) in files.iter().enumerate() {
        let (node, pinned) = start_node(&topo, lb, k, file, &pins.dir(k))?;
        println!("demo: node {} is up ({pinned})", k + 1);
        nodes.push(Some(node));
    }

    // 1. Announced everywhere.
    println!(
        "\ndemo: step 1: each node announces the VIP to the router once a health check of its reals passed"
    );
    let (waited, route) = wait_route(&topo, &[0, 1, 2], "the VIP routed over all three nodes")?;
    println!(
        "demo: the router's VIP route, installed by its BIRD from the nodes' announcements ({} ms after the last node started):",
        waited.as_millis()
    );
    print_route(&route);
    wait_status(
        &topo,
        &[0, 1, 2],
        "every node showing its announcement",
        |s| {
            s["bgp"]["sessions"][0]["info"]
                .as_str()
                .is_some_and(|i| i.starts_with("Established"))
                && s["bgp"]["addresses"][0]["announce"] == true
                && s["bgp"]["addresses"][0]["in_bird"] == true
                && s["vips"][0]["ring_hash"].is_string()
        },
    )?;
    let mut hashes = Vec::new();
    for (k, node) in topo.nodes.iter().enumerate() {
        println!("demo: node {}: lb ctl status (BGP part):", k + 1);
        for line in bgp_lines(&ctl(node, lb, "status")?) {
            println!("demo: |   {line}");
        }
        let hash = status(node)?["vips"][0]["ring_hash"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("node {} shows no ring hash for the VIP", k + 1))?;
        hashes.push(hash);
    }
    for (k, hash) in hashes.iter().enumerate() {
        println!("demo: node {}: VIP {VIP}:80 ring hash {hash}", k + 1);
    }
    ensure!(
        hashes.iter().all(|h| *h == hashes[0]),
        "the nodes built different Maglev rings from the same configuration: {hashes:?}"
    );
    println!(
        "demo: the same ring on every node: whichever node a flow reaches, it hashes to the same real"
    );

    // 2. Long-lived flows.
    println!(
        "\ndemo: step 2: the client opens {FLOWS} keep-alive connections to {VIP}:80 (ports {FIRST_PORT}..{}) and makes one request on each",
        FIRST_PORT + FLOWS - 1
    );
    let vip: SocketAddr = format!("{VIP}:80").parse().context("VIP address")?;
    let mut flows = topo.client.run(move || open_flows(vip))??;
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for flow in &flows {
        *tally.entry(flow.real.as_str()).or_insert(0) += 1;
    }
    for (real, n) in &tally {
        println!("demo: | answered by {real}: {n:>4} connections");
    }
    ensure!(
        tally.len() == REALS,
        "not every real answered: {tally:?} (Maglev spreads {FLOWS} flows over all {REALS})"
    );
    // The status snapshot is refreshed about once a second: wait for the counters to catch up.
    let carried = wait_flows_counted(&topo)?;
    for (k, n) in carried.iter().enumerate() {
        println!("demo: | node {} carried {n:>4} new flows", k + 1);
    }
    ensure!(
        carried.iter().all(|&n| n > 0),
        "ECMP gave some node no flow: {carried:?}"
    );
    let mut seen = rehashed(&topo, &[0, 1, 2])?;

    // 3. Drain node 3.
    println!("\ndemo: step 3: lb ctl drain-node on node 3");
    let answer = ctl(&topo.nodes[2], lb, "drain-node")?;
    println!("demo: | {}", answer.trim());
    let (waited, route) = wait_route(&topo, &[0, 1], "node 3's route withdrawn")?;
    println!(
        "demo: node 3 withdrawn after {} ms; the router's VIP route now:",
        waited.as_millis()
    );
    print_route(&route);
    wait_status(&topo, &[2], "node 3 showing itself drained", |s| {
        s["bgp"]["node_drained"] == true
    })?;
    println!(
        "demo: node 3 keeps running (drained: {:?}); its flows now reach nodes 1 and 2",
        status(&topo.nodes[2])?["bgp"]["addresses"][0]["reason"]
            .as_str()
            .unwrap_or("?")
    );
    check_flows(&mut flows, "node 3 drained")?;
    let moved = took_over(&topo, &[0, 1], &mut seen)?;
    ensure!(
        moved > 0,
        "no flow moved to nodes 1 and 2 although node 3 was withdrawn"
    );

    // 4. Kill node 1.
    println!(
        "\ndemo: step 4: lb on node 1 killed with SIGKILL, as in a crash (its BIRD dies with it)"
    );
    let mut killed = nodes[0]
        .take()
        .ok_or_else(|| anyhow!("node 1 is not running"))?;
    let at = Instant::now();
    killed.kill()?;
    let (_, route) = wait_route(&topo, &[1], "node 1's route withdrawn")?;
    let withdrawal = at.elapsed();
    println!(
        "demo: the router withdrew node 1 {} ms after the kill; its VIP route now:",
        withdrawal.as_millis()
    );
    print_route(&route);
    check_flows(&mut flows, "node 1 killed")?;
    let moved = took_over(&topo, &[1], &mut seen)?;
    ensure!(
        moved > 0,
        "no flow moved to node 2 although node 1 was withdrawn"
    );

    // 5. Node 1 again.
    println!("\ndemo: step 5: lb started again on node 1, with the same pin directory");
    let (node, pinned) = start_node(&topo, lb, 0, &files[0], &pins.dir(0))?;
    nodes[0] = Some(node);
    println!("demo: node 1 is up ({pinned})");
    let (waited, route) = wait_route(&topo, &[0, 1], "node 1 announced again")?;
    println!(
        "demo: node 1 announced again {} ms after it started; the router's VIP route now:",
        waited.as_millis()
    );
    print_route(&route);
    // Counted from here: what node 1 counted before it was killed is not news.
    seen[0] = rehashed(&topo, &[0])?[0];
    check_flows(&mut flows, "node 1 back")?;
    if took_over(&topo, &[0, 1], &mut seen)? == 0 {
        println!(
            "demo: (with nodes 1 and 2 again, the router sends each flow where it went after step 3, and node 1's connection table outlived the kill in its pins: both already knew their flows)"
        );
    }

    // 6. Stop.
    println!("\ndemo: step 6: SIGTERM to every node: each withdraws first, then drains and exits");
    let mut stopping: Vec<(usize, Process)> = nodes
        .iter_mut()
        .enumerate()
        .filter_map(|(k, n)| n.take().map(|n| (k, n)))
        .collect();
    for (_, node) in &stopping {
        let pid = i32::try_from(node.pid()).context("pid")?;
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let (waited, _) = wait_route(&topo, &[], "every route withdrawn")?;
    // Node 3 announced nothing (drained), so it has no reason to wait; the others keep
    // forwarding for `drain_wait` after their withdrawal.
    let exited: Vec<usize> = stopping
        .iter()
        .filter(|(k, node)| *k != 2 && !still_running(node.pid()))
        .map(|(k, _)| k + 1)
        .collect();
    ensure!(
        exited.is_empty(),
        "nodes {exited:?} exited before the router had withdrawn their route (withdraw first, then drain)"
    );
    println!(
        "demo: the VIP route is gone {} ms after the SIGTERM, while nodes 1 and 2 still run (withdrawn first; they keep forwarding for drain_wait while the routers move the flows, then stop)",
        waited.as_millis()
    );
    for (k, node) in &mut stopping {
        let status = node.wait()?;
        ensure!(
            status.success(),
            "node {}'s lb exited with {status}",
            *k + 1
        );
        println!("demo: node {} exited 0", *k + 1);
    }
    drop(flows);
    drop(decaps);

    println!(
        "\ndemo: shown: {NODES} nodes announce one VIP by BGP, the router spreads {FLOWS} long-lived flows over them by ECMP, \
         every node builds the same Maglev ring (hash {}); draining node 3, killing node 1 (withdrawn in {} ms) and starting it again \
         broke 0 of {FLOWS} flows; on SIGTERM each node withdrew before it stopped",
        hashes[0],
        withdrawal.as_millis()
    );
    println!(
        "demo: done in {} s; removing namespaces and pins",
        started.elapsed().as_secs()
    );
    Ok(())
}

struct Topology {
    client: Netns,
    router: Netns,
    nodes: Vec<Netns>,
    reals: Vec<Netns>,
}

impl Topology {
    fn build() -> Result<Self> {
        let client = track(Netns::new(PREFIX, "client")?);
        let router = track(Netns::new(PREFIX, "router")?);
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &["10.210.0.1/24"],
            },
            VethEnd {
                ns: &router,
                name: "r0",
                addrs: &[&format!("{ROUTER}/24")],
            },
        )?;
        client.ip(&["route", "add", "default", "via", ROUTER])?;
        // veth hands CHECKSUM_PARTIAL skbs on, which XDP cannot finish: forwarded TCP would
        // reach the reals with a bad checksum. Real NICs have checksummed before XDP runs.
        run(client
            .command("ethtool")
            .args(["-K", "c0", "tx", "off"])
            .stdout(Stdio::null()))?;
        // Policy 3 with fields 0x37 hashes the 5-tuple only: the node a flow goes to depends
        // on its addresses and ports alone (policy 1 would mix in the socket's random hash).
        sysctls(
            &router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.fib_multipath_hash_policy=3",
                "net.ipv4.fib_multipath_hash_fields=0x37",
            ],
        )?;
        let mut nodes = Vec::new();
        for k in 1..=NODES {
            let node = track(Netns::new(PREFIX, &format!("node{k}"))?);
            veth_pair(
                VethEnd {
                    ns: &router,
                    name: &format!("n{k}"),
                    addrs: &[&format!("10.210.1{k}.1/24")],
                },
                VethEnd {
                    ns: &node,
                    name: "i0",
                    addrs: &[&format!("10.210.1{k}.2/24")],
                },
            )?;
            node.ip(&["route", "add", "default", "via", &format!("10.210.1{k}.1")])?;
            // A packet XDP passes (its next hop not resolved yet) is routed by the stack.
            sysctls(
                &node,
                &["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"],
            )?;
            nodes.push(node);
        }
        let mut reals = Vec::new();
        for k in 1..=REALS {
            let real = track(Netns::new(PREFIX, &format!("real{k}"))?);
            veth_pair(
                VethEnd {
                    ns: &router,
                    name: &format!("t{k}"),
                    addrs: &[&format!("10.210.2{k}.1/24")],
                },
                VethEnd {
                    ns: &real,
                    name: "e0",
                    addrs: &[&format!("10.210.2{k}.2/24")],
                },
            )?;
            real.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            real.ip(&["route", "add", "default", "via", &format!("10.210.2{k}.1")])?;
            // Decapsulated packets arrive on e0 for an address on lo.
            sysctls(
                &real,
                &[
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.e0.rp_filter=0",
                ],
            )?;
            reals.push(real);
        }
        Ok(Self {
            client,
            router,
            nodes,
            reals,
        })
    }
}

fn sysctls(ns: &Netns, knobs: &[&str]) -> Result<()> {
    for knob in knobs {
        run(ns.command("sysctl").args(["-qw", knob]))?;
    }
    Ok(())
}

fn node_ip(k: usize) -> String {
    format!("10.210.1{}.2", k + 1)
}

/// BIRD in the router namespace: a session to each node (AS 65000 to the nodes' AS 65001),
/// routes installed in the kernel as multipath routes (`merge paths`), so the kernel's ECMP
/// spreads the VIP over the nodes announcing it.
fn start_router_bird(topo: &Topology, dir: &Path) -> Result<Process> {
    let log = dir.join("router-bird.log");
    let mut conf = format!(
        "# Written by `cargo xtask demo --cluster`: the router's BIRD.\n\
         log \"{}\" all;\nrouter id {ROUTER};\nprotocol device {{}}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n",
        log.display()
    );
    for k in 0..NODES {
        conf += &format!(
            "protocol bgp node{n} {{ local 10.210.1{n}.1 as 65000; neighbor {ip} as 65001; \
             hold time 3; keepalive time 1; connect retry time 1; \
             ipv4 {{ import all; export none; }}; }}\n",
            n = k + 1,
            ip = node_ip(k),
        );
    }
    let path = dir.join("router-bird.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "demo: router: BIRD with {} (log: {})",
        path.display(),
        log.display()
    );
    Process::spawn(
        topo.router
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(dir.join("router-bird.ctl")),
        "router bird",
        Echo::Both,
    )
}

/// Node `k`'s BIRD configuration and backend file; returns the backend file's path.
fn write_node_files(dir: &Path, k: usize) -> Result<PathBuf> {
    let n = k + 1;
    let routes = dir.join(format!("node{n}-vips.conf"));
    let bird_config = dir.join(format!("node{n}-bird.conf"));
    // lb writes `protocol static lb_vips4 {...}` to the routes file: what this node announces.
    let bird = format!(
        "router id {node};\ninclude \"{routes}\";\nprotocol device {{}}\n\
         protocol bgp uplink {{ local {node} as 65001; neighbor 10.210.1{n}.1 as 65000; \
         hold time 3; keepalive time 1; connect retry time 1; \
         ipv4 {{ import none; export where proto = \"lb_vips4\"; }}; }}\n",
        node = node_ip(k),
        routes = routes.display(),
    );
    std::fs::write(&bird_config, bird)
        .with_context(|| format!("writing {}", bird_config.display()))?;
    let mut text = format!(
        "# Written by `cargo xtask demo --cluster`: node {n}. Every node has the same pool and VIP,\n\
         # so every node builds the same Maglev ring; [bgp] runs BIRD, which announces the VIP\n\
         # while this node can serve it.\n\
         [bgp]\nbird_config = \"{}\"\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n\
         drain_wait = \"2s\"\n\n[[pool]]\nname = \"reals\"\n",
        bird_config.display(),
        dir.join(format!("node{n}.ctl")).display(),
        routes.display(),
    );
    for r in 1..=REALS {
        text += &format!("[[pool.backend]]\naddress = \"10.210.2{r}.2:80\"\n");
    }
    text += &format!(
        "[pool.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         rise = 1\nfall = 1\n\n[[vip]]\naddress = \"{VIP}:80\"\npool = \"reals\"\nring_size = 65537\n"
    );
    let path = dir.join(format!("node{n}.toml"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts `lb run` on node `k`; waits until it serves its admin API. Returns the process and
/// its `pinned ...` line.
fn start_node(
    topo: &Topology,
    lb: &Path,
    k: usize,
    file: &Path,
    pin_dir: &Path,
) -> Result<(Process, String)> {
    let node = &topo.nodes[k];
    // Entered with setns before exec rather than `ip netns exec`: that also gives the process
    // a private mount namespace with a fresh /sys, so its pins under /sys/fs/bpf would die
    // with it, and a restarted node could not take its tables back.
    let netns: OwnedFd = File::open(node.path())
        .with_context(|| format!("opening {}", node.path().display()))?
        .into();
    let mut command = Command::new(lb);
    command
        .arg("run")
        .args(["--iface", "i0", "--xdp-mode", "skb", "--backends"])
        .arg(file)
        .args(["--admin", ADMIN, "--pin-dir"])
        .arg(pin_dir)
        .env("RUST_LOG", "warn,lb::announce=info");
    // SAFETY: the closure runs in the forked child before exec and only calls setns, which is
    // async-signal-safe; the fd it uses is owned by the closure, so open until after spawn
    // (and close-on-exec, so lb does not inherit it).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = Process::spawn(&mut command, &format!("node{}", k + 1), Echo::StderrOnly)?;
    let pinned = process.wait_for_line("pinned ", Duration::from_secs(60))?;
    process.wait_for_line("admin ", Duration::from_secs(30))?;
    Ok((process, pinned))
}

/// True while `pid` (a child not yet reaped) has not exited.
fn still_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// The pin directories `/sys/fs/bpf/lbdemo-<pid>-nodeK`, removed on drop: a node's XDP link
/// and maps outlast its lb (that is how a restarted node takes its tables back).
struct Pins;

impl Pins {
    fn new() -> Self {
        let pins = Self;
        for k in 0..NODES {
            pins.remove(k);
        }
        pins
    }

    fn dir(&self, k: usize) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/{PREFIX}-{}-node{}",
            std::process::id(),
            k + 1
        ))
    }

    fn remove(&self, k: usize) {
        let dir = self.dir(k);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            eprintln!("warning: pins in {} left: {e}", dir.display());
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for k in 0..NODES {
            self.remove(k);
        }
    }
}

/// Removes pin directories of demo runs whose process is gone (one stopped by Ctrl-C).
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The nodes (0-based) the router's VIP route leads to, and the route as `ip` prints it.
fn vip_route(topo: &Topology) -> (Vec<usize>, String) {
    let route = topo
        .router
        .ip(&["route", "show", &format!("{VIP}/32")])
        .unwrap_or_default();
    let words: Vec<&str> = route.split_whitespace().collect();
    let mut nodes: Vec<usize> = words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| (0..NODES).find(|&k| node_ip(k) == w[1]))
        .collect();
    nodes.sort_unstable();
    (nodes, route)
}

/// Waits until the router's VIP route leads to exactly `want`; returns how long that took and
/// the route.
fn wait_route(topo: &Topology, want: &[usize], what: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    loop {
        let (nodes, route) = vip_route(topo);
        if nodes == want {
            return Ok((start.elapsed(), route));
        }
        if start.elapsed() > CONVERGE {
            bail!(
                "{what}: not within {CONVERGE:?}; the router's VIP route leads to nodes {:?} ({:?}); BIRD logs in target/demo/cluster/",
                nodes.iter().map(|k| k + 1).collect::<Vec<_>>(),
                route.trim()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn print_route(route: &str) {
    for line in route.lines().filter(|l| !l.trim().is_empty()) {
        println!("demo: |   {}", line.trim_end());
    }
}

/// `lb ctl --admin ADMIN command` inside `node`; its output.
fn ctl(node: &Netns, lb: &Path, command: &str) -> Result<String> {
    let out = node
        .command(lb)
        .args(["ctl", "--admin", ADMIN, command])
        .output()
        .with_context(|| format!("running lb ctl {command}"))?;
    ensure!(
        out.status.success(),
        "lb ctl {command} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `bgp:` section of `lb ctl status`: up to the next blank line.
fn bgp_lines(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.starts_with("bgp:"))
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// `/api/status` of the lb in `node`.
fn status(node: &Netns) -> Result<Value> {
    let body = node.run(|| -> Result<String> {
        let mut conn = TcpStream::connect(ADMIN).context("connecting to lb's admin API")?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET /api/status HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        conn.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("GET /api/status: no complete response"))?;
        ensure!(
            head.starts_with("HTTP/1.1 200"),
            "GET /api/status: {}",
            head.lines().next().unwrap_or_default()
        );
        Ok(body.to_owned())
    })??;
    serde_json::from_str(&body).context("parsing /api/status")
}

/// Waits until every node in `which` (0-based) has a status for which `done` holds.
fn wait_status(
    topo: &Topology,
    which: &[usize],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut pending = Vec::new();
        for &k in which {
            let s = status(&topo.nodes[k])?;
            if !done(&s) {
                pending.push((k + 1, s["bgp"].to_string()));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > CONVERGE {
            bail!("{what}: not within {CONVERGE:?}; bgp status of the others: {pending:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// New flows each node's XDP tier counted on the VIP, once they add up to the flows opened
/// (the status snapshot lags by up to a second).
fn wait_flows_counted(topo: &Topology) -> Result<Vec<u64>> {
    let start = Instant::now();
    loop {
        let counts = topo
            .nodes
            .iter()
            .map(|node| Ok(status(node)?["vips"][0]["new_flows"].as_u64().unwrap_or(0)))
            .collect::<Result<Vec<u64>>>()?;
        if counts.iter().sum::<u64>() >= u64::from(FLOWS) {
            return Ok(counts);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the nodes counted {counts:?} new flows on the VIP, fewer than the {FLOWS} opened"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Per node (`None` for nodes not asked), the TCP segments of flows it had no entry for that
/// it hashed on the ring (XDP event `mid_flow_rehash`): each is a flow it took over from
/// another node (it keeps an entry from then on). Read from a snapshot taken after this call
/// started (the snapshot behind `/api/status` is refreshed about once a second).
fn rehashed(topo: &Topology, which: &[usize]) -> Result<Vec<Option<u64>>> {
    let uptime = |s: &Value| s["uptime_seconds"].as_f64().unwrap_or(0.0);
    let first = which
        .iter()
        .map(|&k| Ok((k, uptime(&status(&topo.nodes[k])?))))
        .collect::<Result<Vec<_>>>()?;
    let mut counts = vec![None; NODES];
    let start = Instant::now();
    for (k, then) in first {
        // A snapshot at least 1.5 s newer than the one just read was taken after this call
        // began, whatever that one's age.
        loop {
            let s = status(&topo.nodes[k])?;
            if uptime(&s) >= then + 1.5 {
                let n = s["xdp"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|pair| pair[0] == "mid_flow_rehash")
                    .and_then(|pair| pair[1].as_u64())
                    .unwrap_or(0);
                counts[k] = Some(n);
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(15),
                "node {}'s status snapshot was not refreshed within 15 s",
                k + 1
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(counts)
}

/// Prints how many flows each node in `which` took over since `seen`, updates `seen`, and
/// returns the total.
fn took_over(topo: &Topology, which: &[usize], seen: &mut [Option<u64>]) -> Result<u64> {
    let now = rehashed(topo, which)?;
    let mut total = 0;
    let mut parts = Vec::new();
    for &k in which {
        let (Some(n), Some(before)) = (now[k], seen[k]) else {
            continue;
        };
        let moved = n.saturating_sub(before);
        total += moved;
        parts.push(format!("node {} {moved}", k + 1));
        seen[k] = Some(n);
    }
    println!(
        "demo: flows that came to a node which had never seen them (it hashed them on its ring to the same real): {}",
        parts.join(", ")
    );
    Ok(total)
}

/// One long-lived connection and the real that answered its first request.
struct Flow {
    port: u16,
    conn: TcpStream,
    real: String,
}

/// Runs in the client namespace: a connection from each fixed client port, one request each.
fn open_flows(vip: SocketAddr) -> Result<Vec<Flow>> {
    (FIRST_PORT..FIRST_PORT + FLOWS)
        .map(|port| {
            let mut conn = connect_from(port, vip)
                .with_context(|| format!("connecting from {CLIENT}:{port} to {vip}"))?;
            conn.write_all(REQUEST)?;
            let real =
                read_name(&mut conn).with_context(|| format!("first request from port {port}"))?;
            Ok(Flow { port, conn, real })
        })
        .collect()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

/// One more request on every connection (all sent first, then every answer read, so a dead
/// flow costs one timeout, not one each); fails unless each was answered by its real.
fn check_flows(flows: &mut [Flow], after: &str) -> Result<()> {
    let sent: Vec<std::io::Result<()>> = flows
        .iter_mut()
        .map(|f| f.conn.write_all(REQUEST))
        .collect();
    let mut broken = Vec::new();
    for (flow, sent) in flows.iter_mut().zip(sent) {
        let answer = sent.and_then(|()| read_name(&mut flow.conn));
        match answer {
            Ok(name) if name == flow.real => {}
            Ok(name) => broken.push(format!(
                "port {}: answered by {name}, was {}",
                flow.port, flow.real
            )),
            Err(e) => broken.push(format!("port {} (on {}): {e}", flow.port, flow.real)),
        }
    }
    if broken.is_empty() {
        println!(
            "demo: one more request on each connection: 0 of {FLOWS} broken, each answered by the same real as before"
        );
    }
    ensure!(
        broken.is_empty(),
        "{after}: {} of {FLOWS} flows broke, e.g. {:?}",
        broken.len(),
        &broken[..broken.len().min(5)]
    );
    Ok(())
}

/// A TCP connection from `CLIENT:port` (SO_REUSEADDR, so a port of an earlier run still in
/// TIME_WAIT does not stop this one). std cannot bind before connecting, hence libc.
fn connect_from(port: u16, to: SocketAddr) -> Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        bail!("{to}: IPv4 only");
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = |size: usize| libc::socklen_t::try_from(size).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: plain syscall; the descriptor is owned by `socket` right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // A blocking connect gives up after SO_SNDTIMEO.
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(REQUEST_TIMEOUT.as_secs()).unwrap_or(3),
        tv_usec: 0,
    };
    let local = sockaddr(CLIENT, port);
    let remote = sockaddr(*to.ip(), to.port());
    // SAFETY: valid descriptor; each pointer is to a live value of the size passed with it.
    let rc = unsafe {
        if libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            len(size_of::<libc::c_int>()),
        ) != 0
            || libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const timeout).cast(),
                len(size_of::<libc::timeval>()),
            ) != 0
        {
            -1
        } else if libc::bind(
            socket.as_raw_fd(),
            (&raw const local).cast(),
            len(size_of::<libc::sockaddr_in>()),
        ) != 0
        {
            -2
        } else {
            libc::connect(
                socket.as_raw_fd(),
                (&raw const remote).cast(),
                len(size_of::<libc::sockaddr_in>()),
            )
        }
    };
    if rc != 0 {
        let step = match rc {
            -1 => "setsockopt",
            -2 => "bind",
            _ => "connect",
        };
        return Err(std::io::Error::last_os_error()).context(step);
    }
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    Ok(stream)
}

/// Reads one response of [`serve_name`]; returns its body.
fn read_name(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A tiny keep-alive HTTP/1.1 server: every request on a connection is answered with `name`.
fn serve_name(listener: TcpListener, name: &str) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_owned();
        thread::spawn(move || {
            let Ok(mut writer) = conn.try_clone() else {
                return;
            };
            let mut reader = std::io::BufReader::new(conn);
            loop {
                // Request line and headers, up to the blank line.
                let mut line = String::new();
                match std::io::BufRead::read_line(&mut reader, &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => {}
                    Ok(_) => continue,
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                    name.len()
                );
                if writer.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}
