//! New connections per second through the scale-out topology (issue 17, "Measure"): the ECMP
//! rig of `tests/tests/l4_bgp.rs` and `l4_cluster.rs` (`lb_tests::cluster`: client -> router
//! -> lb nodes running `lb run --iface` -> 3 reals running `lb decap`), the router's VIP route
//! over one node, then over all three (static multipath routes: the route is what BGP would
//! install, and BIRD's convergence is no part of the rate).
//!
//! Load: `lb bench tcp://VIP:80 --expect-reply` from the client namespace (connect, wait for
//! the real's one-byte answer, close), closed loop, [`CONNECTIONS`] at once, [`DURATION`]
//! after a warm-up. Each real answers from one accept loop, so the reals are cheap.
//!
//! Reported per route: connections/s, and the busiest node's share of the VIP's new flows;
//! then the three-node rate over the one-node rate. On a 2-core machine every namespace
//! shares the same cores (softirq of every veth hop, the client, the reals), so the ratio
//! shows what one node costs, not what more machines would add.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    thread,
};

use anyhow::{Context as _, Result, bail};
use lb::xdp::{self, AttachMode};
use lb_common::program_names;
use lb_tests::{
    cluster::{ClusterTopology, NODE_ADMIN, NODES},
    lb_bin,
    lb_run::http,
    lb_run_netns::{LbRun, PinDir},
    netns::{Netns, require_root},
    temp_dir::TempDir,
};

const CONNECTIONS: &str = "32";
const DURATION: &str = "5s";
const WARMUP: &str = "1s";

fn main() -> Result<()> {
    if !require_root("cluster_conns") {
        return Ok(());
    }
    let topo = ClusterTopology::build(86);
    let dir = TempDir::new("cluster-bench");
    let mut decaps = Vec::new();
    for real in &topo.reals {
        decaps.push(
            real.run(|| xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb))
                .context("decap in real netns")??,
        );
        let listener = real
            .run(|| TcpListener::bind(("0.0.0.0", 80)))
            .context("real netns")??;
        thread::spawn(move || answer_one_byte(listener));
    }
    let mut text = format!(
        "[[vip]]\naddress = \"{}:80\"\nring_size = 65537\n",
        topo.vip_ip()
    );
    for i in 0..NODES {
        text += &format!("[[vip.real]]\naddress = \"{}\"\n", topo.real_ip(i));
    }
    let file = dir.write("lb.toml", &text);
    let pins: Vec<PinDir> = (0..NODES)
        .map(|k| PinDir::new(&format!("bench{k}")))
        .collect();
    let _runs: Vec<LbRun> = (0..NODES)
        .map(|k| topo.start_lb(k, &file, &pins[k]))
        .collect();

    println!(
        "cluster_conns: new TCP connections/s through the VIP ({CONNECTIONS} at once, {DURATION})"
    );
    let mut rates = Vec::new();
    for nodes in [vec![0], vec![0, 1, 2]] {
        topo.route_vip(&nodes);
        let before = new_flows(&topo);
        let rate = bench(&topo, &dir.0)?;
        let after = new_flows(&topo);
        let per_node: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = per_node.iter().sum();
        println!(
            "  {} node(s): {rate:>9.0} connections/s; new flows per node {per_node:?} (busiest {:.0}%)",
            nodes.len(),
            100.0 * per_node.iter().copied().max().unwrap_or(0) as f64 / total.max(1) as f64
        );
        rates.push(rate);
    }
    println!("  3 nodes / 1 node: {:.2}x", rates[1] / rates[0]);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Each node's count of new flows for the VIP (its status).
fn new_flows(topo: &ClusterTopology) -> Vec<u64> {
    topo.nodes
        .iter()
        .map(|node: &Netns| {
            let admin: SocketAddr = NODE_ADMIN.parse().expect("admin");
            let (_, body) = node
                .run(move || http("GET", admin, "/api/status"))
                .unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|s| s["vips"][0]["new_flows"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

/// `lb bench` in the client namespace; connections per second.
fn bench(topo: &ClusterTopology, dir: &Path) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", topo.client.name()])
        .arg(lb_bin())
        .args([
            "bench",
            &format!("tcp://{}:80", topo.vip_ip()),
            "--expect-reply",
            "-c",
            CONNECTIONS,
            "-d",
            DURATION,
            "--warmup",
            WARMUP,
            "--json",
        ])
        .current_dir(dir)
        .output()
        .context("lb bench")?;
    if !out.status.success() {
        bail!("lb bench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("lb bench --json")?;
    report["ok_per_s"]
        .as_f64()
        .with_context(|| format!("no rate in {report}"))
}

/// Accepts and answers each connection with one byte, then closes (one thread for all).
fn answer_one_byte(listener: TcpListener) {
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(b"x");
    }
}
