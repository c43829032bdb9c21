//! The L4 hardening end to end, in the DSR topology of `l4_dsr_e2e`:
//! - a SYN flood from random sources at an `encap` VIP (hping3 in the client namespace): with
//!   the flood guard on, an established flow keeps its connection-table entry and keeps
//!   working, new legitimate connections work during the flood, and the flood's flows stay
//!   out of the table;
//! - `lb run` with a deny list in its backend file: the client is dropped and counted in
//!   `/metrics`; the file loses the entry, a reload applies it, and the client connects, with
//!   the same XDP program attached throughout.
use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lb::{
    l4::{L4Config, L4Dataplane, L4Stats, Protocol, flow_key, read_l4_stats},
    xdp::{self, AttachMode},
};
use lb_common::{
    l4::{FlowEntry, FlowKey, L4Event},
    map_names, program_names,
};
use lb_tests::{
    dsr::{DsrTopology, connect_from, get_name, serve_name},
    lb_maps::attached_prog_id,
    lb_run::http,
    lb_run_netns::{LbRun, PinDir},
    netns::require_root,
};

/// New flows per second per CPU the guard lets into the table.
const GUARD: u64 = 100;
/// Flood flows kept out of the table before the checks run: far more than the guard admits
/// in the seconds that takes, so most of the flood must have been kept out.
const FLOOD_KEPT_OUT: u64 = 20_000;

/// hping3, killed when dropped (the namespace's teardown kills it too).
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Flood {
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

fn conntrack_has(ebpf: &aya::Ebpf, flow: &FlowKey) -> (bool, usize) {
    let map: BpfHashMap<&MapData, FlowKey, FlowEntry> = ebpf
        .map(map_names::CONNTRACK)
        .expect("CONNTRACK")
        .try_into()
        .expect("hash map");
    let entries = map.keys().filter(Result::is_ok).count();
    (map.get(flow, 0).is_ok(), entries)
}

#[test]
fn a_syn_flood_does_not_evict_established_flows_with_the_flood_guard_on() {
    if !require_root("a_syn_flood_does_not_evict_established_flows_with_the_flood_guard_on") {
        return;
    }
    if std::process::Command::new("hping3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("hping3 is missing: run `cargo xtask setup`");
    }
    let topo = DsrTopology::build(93);
    let vip_ip = topo.vip_ip();
    let vip = SocketAddr::new(vip_ip, 80);
    let client_ip = topo.client_ip();
    let mut decaps = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        decaps.push(
            real.run(|| {
                xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb).expect("decap")
            })
            .expect("netns"),
        );
        let listener = real
            .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    let mut lb = topo
        .lb
        .run(|| xdp::attach("l0", AttachMode::Skb).expect("attach lb_xdp"))
        .expect("netns");
    let mut text = format!(
        "[l4]\nflood_guard_new_flows_per_cpu = {GUARD}\n[[vip]]\naddress = \"{vip}\"\nring_size = 1009\n"
    );
    for i in 0..3 {
        text += &format!("[[vip.real]]\naddress = \"{}\"\n", topo.real_ip(i));
    }
    let config = L4Config::parse(&text, Path::new("flood.toml")).expect("config");
    let mut dp = L4Dataplane::new();
    dp.apply(lb.ebpf_mut(), &config).expect("apply");

    // An established flow, before the flood.
    let (mut established, first_real) = topo
        .client
        .run(move || {
            let mut conn = connect_from(client_ip, 30000, vip).expect("connect");
            let real = get_name(&mut conn).expect("GET");
            (conn, real)
        })
        .expect("client");
    let established_flow = flow_key(SocketAddr::new(client_ip, 30000), vip, Protocol::Tcp);
    assert!(conntrack_has(lb.ebpf(), &established_flow).0);

    let mut flood = Flood(
        topo.client
            .command("hping3")
            .args(["-q", "-S", "-p", "80", "--rand-source", "-i", "u50"])
            .arg(vip_ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hping3"),
    );
    let stats =
        |lb: &xdp::AttachedXdp| -> L4Stats { read_l4_stats(lb.ebpf(), &dp).expect("stats") };
    while stats(&lb).event(L4Event::FloodGuardNotInserted) < FLOOD_KEPT_OUT {
        assert!(flood.running(), "hping3 stopped: {}", stats(&lb));
        thread::sleep(Duration::from_millis(50));
    }

    // During the flood: the established flow still works on its real, new connections work.
    let again = get_name(&mut established).expect("established flow during the flood");
    assert_eq!(again, first_real);
    let answered = topo
        .client
        .run(move || {
            (0..20u16)
                .map(|n| {
                    connect_from(client_ip, 31000 + n, vip)
                        .and_then(|mut conn| get_name(&mut conn))
                        .map_err(|e| format!("connection {n}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("client");
    assert!(flood.running(), "the flood ran throughout");
    if let Err(e) = answered {
        panic!("{e}; {}", stats(&lb));
    }

    // The table: the established flow's entry survived; the flood's flows stayed out (the
    // guard's per-CPU rate admits a few hundred a second; the flood sent tens of thousands).
    // Counted once the flood has stopped and its last packets are through (the counters stay
    // put between two reads), so table and counters describe the same moment.
    drop(flood);
    let mut s = stats(&lb);
    loop {
        thread::sleep(Duration::from_millis(50));
        let again = stats(&lb);
        if again == s {
            break;
        }
        s = again;
    }
    let (kept, entries) = conntrack_has(lb.ebpf(), &established_flow);
    assert!(kept, "established flow evicted; {s}");
    let kept_out = s.event(L4Event::FloodGuardNotInserted);
    // Every table miss (a flow opening, or a segment of one whose entry is missing) passes
    // the guard: what it did not keep out entered the table.
    let misses = s.event(L4Event::NewFlow) + s.event(L4Event::MidFlowRehash);
    let inserted = misses.saturating_sub(kept_out);
    eprintln!(
        "flood: {kept_out} new flows kept out of the table, {inserted} entered, {entries} entries"
    );
    assert!(
        entries as u64 <= inserted,
        "{entries} entries, {inserted} inserted"
    );
    assert!(
        inserted * 4 <= kept_out,
        "{inserted} new flows entered the table, {kept_out} were kept out; {s}"
    );
    lb.detach().expect("detach");
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts a decap program and a name server on each real; returns the decap attachments.
fn serve_reals(topo: &DsrTopology) -> Vec<xdp::AttachedXdp> {
    let vip_ip = topo.vip_ip();
    let mut decaps = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        decaps.push(
            real.run(|| {
                xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb).expect("decap")
            })
            .expect("netns"),
        );
        let listener = real
            .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    decaps
}

#[test]
fn a_deny_list_changes_on_reload_without_reloading_the_program() {
    if !require_root("a_deny_list_changes_on_reload_without_reloading_the_program") {
        return;
    }
    let topo = DsrTopology::build(94);
    let _decaps = serve_reals(&topo);
    let vip = SocketAddr::new(topo.vip_ip(), 80);
    let client_ip = topo.client_ip();
    let backend_file = |l4: &str| {
        let mut text = format!("{l4}\n[[vip]]\naddress = \"{vip}\"\nring_size = 1009\n");
        for i in 0..3 {
            text += &format!("[[vip.real]]\naddress = \"{}\"\n", topo.real_ip(i));
        }
        text
    };
    let file = TempFile(std::env::temp_dir().join(format!("lb-deny-{}.toml", std::process::id())));
    std::fs::write(
        &file.0,
        backend_file(&format!(
            "[l4]\ndeny = [\"{client_ip}\", \"2001:db8::/32\"]"
        )),
    )
    .expect("write backend file");
    let pins = PinDir::new("deny");
    let (file_arg, pin_arg) = (file.0.display().to_string(), pins.arg());
    let lb = LbRun::start(
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
    let prog = attached_prog_id(&topo.lb, "l0").expect("lb_xdp attached");
    let admin: SocketAddr = "127.0.0.1:9900".parse().expect("addr");
    let get = |path: &'static str| topo_lb_get(&topo.lb, admin, path);
    let denied = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("lb_xdp_events_total{name=\"deny_list_dropped\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };

    // The client's SYNs are dropped (and counted) while the list holds it. Connect attempts
    // run on their own (each gives up after its SYN retries); the counter says when SYNs met
    // the list.
    let attempt = || {
        topo.client
            .spawn(move || connect_from(client_ip, 32000, vip).map(|_| ()))
            .expect("client thread")
    };
    let mut attempts = vec![attempt()];
    while denied(&get("/metrics")) == 0 {
        if attempts.iter().all(|a| a.is_finished()) {
            assert!(
                attempts.len() < 10,
                "no drop counted in {} connect attempts",
                attempts.len()
            );
            attempts.push(attempt());
        }
        thread::sleep(Duration::from_millis(50));
    }

    // The file drops the client from the list; SIGHUP; the reload applies it.
    std::fs::write(&file.0, backend_file("[l4]\ndeny = [\"2001:db8::/32\"]"))
        .expect("rewrite backend file");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lb.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let reloads = || {
        let status: serde_json::Value = serde_json::from_str(&get("/api/status")).expect("JSON");
        status["config"]["reloads_ok"].as_u64().unwrap_or(0)
    };
    while reloads() == 0 {
        thread::sleep(Duration::from_millis(50));
    }
    let answered = topo
        .client
        .run(move || connect_from(client_ip, 32001, vip).and_then(|mut c| get_name(&mut c)))
        .expect("client");
    assert!(
        answered.as_deref().is_ok_and(|r| r.starts_with("real")),
        "after the reload: {answered:?}"
    );
    assert_eq!(
        attached_prog_id(&topo.lb, "l0"),
        Some(prog),
        "the same program throughout: only maps changed"
    );
    // An attempt still retrying may connect now that the list lets it: either is fine.
    for a in attempts {
        let _ = a.join();
    }
    drop(lb);
}

/// GET `path` from lb's admin server in the lb namespace; the body.
fn topo_lb_get(ns: &lb_tests::netns::Netns, admin: SocketAddr, path: &'static str) -> String {
    let (code, body) = ns.run(move || http("GET", admin, path)).expect("netns");
    assert_eq!(code, 200, "{path}: {body}");
    body
}
