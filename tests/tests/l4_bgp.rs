//! VIP announcement by BGP (issue 17), end to end: the ECMP topology of `lb_tests::cluster`
//! with BIRD 2 on the router (a session to each node, multipath routes installed in the
//! kernel) and `lb run` on each node running its own BIRD from `[bgp]`. The router's VIP route
//! is whatever the nodes announce, so the route the test reads is the announcement.
//!
//! What is proved: a node announces a VIP only once a health check of its reals has passed
//! (it starts with them assumed up, and says why it does not announce); 1000 long-lived flows
//! through the three nodes keep their real when one node is drained (`lb ctl drain-node`:
//! withdrawn, flows move to the others) and when another is killed with SIGKILL (its BIRD
//! dies with it, the router withdraws at once); a killed node started again announces again;
//! on SIGTERM a node withdraws first and drains after (its route is gone while it still runs);
//! status and metrics show sessions and announcements.
use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use lb::xdp::{self, AttachMode};
use lb_common::program_names;
use lb_tests::{
    cluster::{ClusterTopology, NODE_ADMIN, NODES, RouterBird, broken_flows},
    dsr::serve_name,
    lb_bin,
    lb_run::{http, wait_for},
    lb_run_netns::{LbRun, PinDir},
    netns::{Netns, require_root},
    temp_dir::TempDir,
};

/// Long-lived flows through the cluster.
const FLOWS: u16 = 1000;
/// BGP sessions come up within a few connect retries (1 s each); generous for a busy machine.
const CONVERGE: Duration = Duration::from_secs(90);
const ADMIN: &str = NODE_ADMIN;

fn admin() -> SocketAddr {
    ADMIN.parse().expect("admin address")
}

fn status(node: &Netns) -> serde_json::Value {
    let (code, body) = node
        .run(|| http("GET", admin(), "/api/status"))
        .expect("status in node netns");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// The node's backend file: the three reals as a health-checked pool behind the VIP, and
/// `[bgp]` running BIRD with the node's configuration.
fn backend_file(topo: &ClusterTopology, dir: &Path, router: &RouterBird, k: usize) -> String {
    let routes = dir.join(format!("node{}-vips.conf", k + 1));
    let bird_config = router.node_config(topo, k, &routes);
    let mut text = format!(
        "[bgp]\nbird_config = \"{}\"\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n\
         drain_wait = \"3s\"\n\n[[pool]]\nname = \"reals\"\n",
        bird_config.display(),
        dir.join(format!("node{}.ctl", k + 1)).display(),
        routes.display(),
    );
    for i in 0..NODES {
        text += &format!("[[pool.backend]]\naddress = \"{}:80\"\n", topo.real_ip(i));
    }
    text += &format!(
        "[pool.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         rise = 1\nfall = 1\n\n[[vip]]\naddress = \"{}:80\"\npool = \"reals\"\nring_size = 65537\n",
        topo.vip_ip()
    );
    text
}

fn ctl(node: &Netns, command: &str) -> String {
    let out = node
        .command(lb_bin())
        .args(["ctl", "--admin", ADMIN, command])
        .output()
        .expect("lb ctl");
    assert!(out.status.success(), "lb ctl {command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bgp_announces_what_each_node_serves_and_1000_flows_survive_drain_and_kill() {
    if !require_root("bgp_announces_what_each_node_serves_and_1000_flows_survive_drain_and_kill") {
        return;
    }
    let topo = ClusterTopology::build(87);
    topo.unroute_vip();
    let dir = TempDir::new("bgp");
    let router = RouterBird::start(&topo, &dir.0);
    let mut decaps = Vec::new();
    for real in &topo.reals {
        decaps.push(
            real.run(|| {
                xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb).expect("decap")
            })
            .expect("decap in real netns"),
        );
    }
    let files: Vec<_> = (0..NODES)
        .map(|k| {
            dir.write(
                &format!("node{}.toml", k + 1),
                &backend_file(&topo, &dir.0, &router, k),
            )
        })
        .collect();
    let pins: Vec<PinDir> = (0..NODES)
        .map(|k| PinDir::new(&format!("bgp{k}")))
        .collect();
    let mut runs: Vec<Option<LbRun>> = (0..NODES)
        .map(|k| Some(topo.start_lb(k, &files[k], &pins[k])))
        .collect();

    // Sessions up, reals not listening yet: every check fails, nothing is announced although
    // the backends start assumed up.
    wait_for("sessions established and checks failing", CONVERGE, || {
        topo.nodes.iter().all(|node| {
            let s = status(node);
            s["bgp"]["sessions"][0]["info"]
                .as_str()
                .is_some_and(|i| i.starts_with("Established"))
                && s["pools"][0]["backends"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b["check"]["last_result"] == "failed"))
        })
    });
    assert_eq!(
        topo.vip_nexthops(),
        Vec::<usize>::new(),
        "nothing announced"
    );
    for node in &topo.nodes {
        let s = status(node);
        let address = &s["bgp"]["addresses"][0];
        assert_eq!(address["address"], topo.vip_ip().to_string(), "{s}");
        assert_eq!(address["announce"], false, "{s}");
        assert!(
            address["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no backend of pool reals is up and checked")),
            "{address}"
        );
    }

    // The reals start serving: every node announces once its checks pass.
    for (i, real) in topo.reals.iter().enumerate() {
        let listener = real
            .run(|| TcpListener::bind(("0.0.0.0", 80)).expect("bind"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    wait_for("the VIP routed over all three nodes", CONVERGE, || {
        topo.vip_nexthops() == [0, 1, 2]
    });
    // The snapshot behind status and metrics is refreshed every second.
    let lines = [
        format!("lb_bgp_announced{{address=\"{}\"}} 1", topo.vip_ip()),
        "lb_bgp_session_established{session=\"uplink\"} 1".to_owned(),
        "lb_bgp_speaker_running{} 1".to_owned(),
    ];
    wait_for("metrics showing the announcement", CONVERGE, || {
        let (_, metrics) = topo.nodes[0]
            .run(|| http("GET", admin(), "/metrics"))
            .expect("metrics");
        lines.iter().all(|line| metrics.contains(line))
    });
    let text = ctl(&topo.nodes[0], "status");
    assert!(text.contains("bgp: bird running"), "{text}");
    let vip_line = text
        .lines()
        .find(|l| l.starts_with(&format!("{} ", topo.vip_ip())))
        .unwrap_or_default();
    assert!(vip_line.contains(" announced "), "{text}");

    // A node announces once one real passes; the others come up over the next check
    // interval, each a change of its ring. Flows opened meanwhile would be hashed on rings the
    // nodes do not share (each checks on its own), so wait until every node has every real up
    // and all report the same ring.
    wait_for("every node's ring with all three reals", CONVERGE, || {
        let statuses: Vec<serde_json::Value> = topo.nodes.iter().map(status).collect();
        let all_up = statuses.iter().all(|s| {
            s["vips"][0]["reals"]
                .as_array()
                .is_some_and(|r| r.len() == NODES && r.iter().all(|r| r["up"] == true))
        });
        let hashes: Vec<&serde_json::Value> = statuses
            .iter()
            .map(|s| &s["vips"][0]["ring_hash"])
            .collect();
        all_up && hashes.windows(2).all(|w| w[0] == w[1])
    });
    let ports: Vec<u16> = (0..FLOWS).map(|n| 40000 + n).collect();
    let mut conns = topo.open_flows(&ports);
    // ECMP spread them: every node scheduled some (its status counts them at the next tick).
    for node in &topo.nodes {
        wait_for("every node carrying some of the flows", CONVERGE, || {
            status(node)["vips"][0]["new_flows"]
                .as_u64()
                .is_some_and(|n| n > 0)
        });
    }

    // Node 3 drained: withdrawn (lb keeps running), its flows move to the others.
    let answer = ctl(&topo.nodes[2], "drain-node");
    assert!(answer.contains("node drained"), "{answer}");
    wait_for("node 3 withdrawn", CONVERGE, || {
        topo.vip_nexthops() == [0, 1]
    });
    let s = status(&topo.nodes[2]);
    assert_eq!(s["bgp"]["node_drained"], true, "{s}");
    let broken = broken_flows(&mut conns);
    assert!(
        broken.is_empty(),
        "node 3 drained: {} of {FLOWS} broke: {broken:?}",
        broken.len()
    );

    // Node 1 killed: its BIRD dies with it, the router withdraws the route at once.
    let killed = runs[0].take().expect("node 1");
    let at = Instant::now();
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    unsafe { libc::kill(killed.pid(), libc::SIGKILL) };
    wait_for("node 1 withdrawn", CONVERGE, || topo.vip_nexthops() == [1]);
    eprintln!(
        "measured: node killed -> route withdrawn in {:?}",
        at.elapsed()
    );
    drop(killed);
    let broken = broken_flows(&mut conns);
    assert!(
        broken.is_empty(),
        "node 1 killed: {} of {FLOWS} broke: {broken:?}",
        broken.len()
    );

    // Node 1 again (its pins kept the tables): announced again once its checks pass.
    runs[0] = Some(topo.start_lb(0, &files[0], &pins[0]));
    wait_for("node 1 announced again", CONVERGE, || {
        topo.vip_nexthops() == [0, 1]
    });
    let s = status(&topo.nodes[0]);
    assert!(
        s["pools"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["check"]["last_result"] == "passed")),
        "{s}"
    );
    let broken = broken_flows(&mut conns);
    assert!(
        broken.is_empty(),
        "node 1 back: {} of {FLOWS} broke: {broken:?}",
        broken.len()
    );

    // Node 2 stopped with SIGTERM: withdrawn first, while it still runs; then it stops.
    let stopping = runs[1].take().expect("node 2");
    let pid = stopping.pid();
    let at = Instant::now();
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("node 2 withdrawn", CONVERGE, || topo.vip_nexthops() == [0]);
    let withdrawn_after = at.elapsed();
    assert!(
        lb_tests::process_running(u32::try_from(pid).expect("pid")),
        "node 2's route went only when lb had exited (withdraw first, then drain)"
    );
    eprintln!("measured: SIGTERM -> route withdrawn in {withdrawn_after:?}");
    let exit = stopping.stop(CONVERGE);
    assert!(exit.success(), "{exit:?}");
    let broken = broken_flows(&mut conns);
    assert!(
        broken.is_empty(),
        "node 2 stopped: {} of {FLOWS} broke: {broken:?}",
        broken.len()
    );
    drop(runs);
    drop(decaps);
}

/// A `[bgp]` BIRD that cannot start (its configuration is wrong) keeps `lb run` from starting,
/// with BIRD's own words, and `lb check-config` refuses it the same way; it also refuses a
/// `bird_config` that is not there.
#[test]
fn a_bird_that_cannot_start_stops_lb_run_with_birds_reason() {
    if !require_root("a_bird_that_cannot_start_stops_lb_run_with_birds_reason") {
        return;
    }
    let dir = TempDir::new("bgp-bad");
    let bird_config = dir.write("bird.conf", "router id 10.0.0.1;\nprotocol bgp {\n");
    let file = dir.write(
        "lb.toml",
        &format!(
            "[bgp]\nbird_config = \"{}\"\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n",
            bird_config.display(),
            dir.0.join("bird.ctl").display(),
            dir.0.join("vips.conf").display()
        ),
    );
    let out = std::process::Command::new(lb_bin())
        .args(["run", "--admin", "127.0.0.1:0", "--backends"])
        .arg(&file)
        .output()
        .expect("lb run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("starting BIRD for [bgp]") && stderr.contains("bird.conf"),
        "{stderr}"
    );

    // lb check-config asks BIRD too, once the routes file it includes exists.
    let out = std::process::Command::new(lb_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("lb check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("BIRD refuses") && stderr.contains("bird.conf"),
        "{stderr}"
    );

    let missing = dir.write(
        "missing.toml",
        "[bgp]\nbird_config = \"/nonexistent/bird.conf\"\n",
    );
    let out = std::process::Command::new(lb_bin())
        .arg("check-config")
        .arg(&missing)
        .output()
        .expect("lb check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("missing.toml:2") && stderr.contains("no such file"),
        "{stderr}"
    );
}
