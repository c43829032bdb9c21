//! A SYN flood at the rate one core can generate, against the XDP tier with the flood guard
//! off and on (issue 16, "Measure"): the DSR topology of `tests/tests/l4_flood.rs` (client ->
//! lb -> 3 reals, `lb_xdp` on l0 and `lb_decap` on the reals, native mode), a TCP VIP.
//!
//! Per run:
//! 1. an established flow: a keep-alive HTTP connection through the VIP, opened before the
//!    flood from the flood's CPU, so its entry sits in the per-CPU LRU list the flood churns
//!    (its connection-table entry checked);
//! 2. `hping3 -S --flood --rand-source -p 80 VIP` in the client namespace, pinned to CPU 1,
//!    for [`WINDOW`]; meanwhile legitimate connections from the client's own address, paced
//!    at [`LEGIT_EVERY`], each given [`LEGIT_TIMEOUT`] to connect and [`LEGIT_TIMEOUT`] to
//!    answer a GET (one SYN, no retransmission: the initial RTO is 1 s);
//! 3. the flood stops; once the counters stand still: the table's entry count, whether the
//!    established flow's entry survived and whether it still answers, on the same real.
//!
//! Reported: packets put on c0 per second (hping3's, plus the legitimate client's ~100 pps;
//! the sender's rate: when it matches the
//! VIP's packet rate the sender, not the XDP tier, is the bottleneck), VIP packets the XDP
//! tier counted per second, new flows inserted into and kept out of the table, the table's
//! entries and capacity, the legitimate success rate, the established flow afterwards.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use lb::{
    l4::{L4Config, L4Dataplane, L4Stats, Protocol, flow_key, read_l4_stats},
    xdp::{self, AttachMode},
};
use lb_common::{
    l4::{CONNTRACK_CAPACITY, FlowEntry, FlowKey, L4Event},
    map_names, program_names,
};
use lb_tests::dsr::{DsrTopology, get_name, serve_name};

/// How long the flood runs while legitimate connections are measured.
const WINDOW: Duration = Duration::from_secs(10);
/// The guard's setting in the "on" run: new flows per second per CPU let into the table.
const GUARD: u64 = 1000;
/// One legitimate connection attempt this often.
const LEGIT_EVERY: Duration = Duration::from_millis(50);
/// A legitimate connection's budget to connect, and then to answer.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(1);
const VIP_PORT: u16 = 80;
/// The established flow's client port.
const ESTABLISHED_PORT: u16 = 30000;
/// The CPU hping3 runs on (the rest of the rig floats).
const FLOOD_CPU: &str = "1";
const MODE: AttachMode = AttachMode::Native;

/// hping3, killed when dropped (the namespace's teardown kills it too).
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run's figures.
struct Row {
    label: String,
    guard: bool,
    secs: f64,
    sent: u64,
    vip_packets: u64,
    new_flows: u64,
    kept_out: u64,
    insert_failed: u64,
    forwarded: u64,
    dropped: u64,
    /// The flood CPU's time over the window: user, system, softirq, idle (percent).
    flood_cpu: [f64; 4],
    entries: usize,
    legit_attempts: u32,
    legit_ok: u32,
    legit_connect_ms: Vec<f64>,
    /// Failed legitimate attempts by error kind.
    legit_failures: std::collections::BTreeMap<String, u32>,
    established_entry_survived: bool,
    established_after: Result<bool, String>,
}

impl Row {
    fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    fn vip_pps(&self) -> f64 {
        self.vip_packets as f64 / self.secs
    }
    fn inserted(&self) -> u64 {
        self.new_flows.saturating_sub(self.kept_out)
    }
    fn success(&self) -> f64 {
        if self.legit_attempts == 0 {
            0.0
        } else {
            f64::from(self.legit_ok) / f64::from(self.legit_attempts)
        }
    }
    fn connect_ms(&self, q: f64) -> f64 {
        if self.legit_connect_ms.is_empty() {
            return f64::NAN;
        }
        let mut v = self.legit_connect_ms.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("syn_flood: skipped (creates namespaces and attaches XDP: run it as root)");
        return Ok(());
    }
    if std::process::Command::new("hping3")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("hping3 not found: run `cargo xtask setup`");
    }
    println!(
        "SYN flood: hping3 -S --flood --rand-source on CPU {FLOOD_CPU}, {WINDOW:?} window; \
         legitimate connections every {LEGIT_EVERY:?}, {LEGIT_TIMEOUT:?} to connect + \
         {LEGIT_TIMEOUT:?} to answer; XDP {MODE:?}; {} CPUs",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Off, on, on, off: the machine's load drifts, and a fixed order would credit the drift
    // to the guard.
    let mut rows = Vec::new();
    for (round, guard) in [None, Some(GUARD), Some(GUARD), None]
        .into_iter()
        .enumerate()
    {
        let label = match guard {
            None => format!("{}. guard off", round + 1),
            Some(n) => format!("{}. guard on ({n}/cpu/s)", round + 1),
        };
        rows.push(measure(&label, guard, 61 + round as u8)?);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<25} {:>11} {:>11} {:>10} {:>10} {:>9} {:>15} {:>13} {:>13} {:>15}",
        "run",
        "sent pps",
        "XDP VIP pps",
        "inserted",
        "kept out",
        "entries",
        "legit ok",
        "connect p50",
        "connect p99",
        "established"
    );
    for r in rows {
        let established = match &r.established_after {
            Ok(same) => format!(
                "{}{}",
                if *same { "works" } else { "moved" },
                if r.established_entry_survived {
                    ", entry"
                } else {
                    ", no entry"
                }
            ),
            Err(_) => format!(
                "broken{}",
                if r.established_entry_survived {
                    ", entry"
                } else {
                    ", no entry"
                }
            ),
        };
        println!(
            "{:<25} {:>11.0} {:>11.0} {:>10} {:>10} {:>9} {:>15} {:>11.1}ms {:>11.1}ms {:>15}",
            r.label,
            r.sent_pps(),
            r.vip_pps(),
            r.inserted(),
            r.kept_out,
            r.entries,
            format!(
                "{}/{} {:.1}%",
                r.legit_ok,
                r.legit_attempts,
                100.0 * r.success()
            ),
            r.connect_ms(0.5),
            r.connect_ms(0.99),
            established
        );
    }
    println!("table capacity: {CONNTRACK_CAPACITY} entries (LRU, per-CPU lists)");
    for r in rows {
        println!(
            "{}: XDP forwarded {:.0} pps (encap), dropped {:.0} pps",
            r.label,
            r.forwarded as f64 / r.secs,
            r.dropped as f64 / r.secs
        );
        let [user, sys, softirq, idle] = r.flood_cpu;
        println!(
            "{}: CPU {FLOOD_CPU} (hping3 and, veth receiving on the sender's CPU, the XDP tier \
             and the reals' stack): user {user:.0}%, sys {sys:.0}%, softirq {softirq:.0}%, \
             idle/steal {idle:.0}%",
            r.label
        );
        if r.insert_failed > 0 {
            println!("{}: {} conntrack inserts failed", r.label, r.insert_failed);
        }
        if !r.legit_failures.is_empty() {
            println!("{}: legitimate failures: {:?}", r.label, r.legit_failures);
        }
        if let Err(e) = &r.established_after {
            println!("{}: established flow after the flood: {e}", r.label);
        }
    }
    let mean = |guard: bool, f: &dyn Fn(&Row) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.guard == guard).map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let ratio = |f: &dyn Fn(&Row) -> f64| {
        let (on, off) = (mean(true, f), mean(false, f));
        if off > 0.0 { on / off } else { f64::NAN }
    };
    println!(
        "on / off (means): XDP VIP pps {:.2}, sent pps {:.2}, legit success {:.3}, table \
         entries {:.2}, inserted {:.4}",
        ratio(&Row::vip_pps),
        ratio(&Row::sent_pps),
        ratio(&Row::success),
        ratio(&|r| r.entries as f64),
        ratio(&|r| r.inserted() as f64),
    );
    let survived = |guard: bool| {
        let runs = rows.iter().filter(|r| r.guard == guard);
        let kept = runs
            .clone()
            .filter(|r| r.established_entry_survived)
            .count();
        let works = runs
            .clone()
            .filter(|r| matches!(r.established_after, Ok(true)))
            .count();
        format!(
            "entry kept {kept}/{}, flow works {works}/{}",
            runs.clone().count(),
            runs.count()
        )
    };
    println!(
        "established flow after the flood: off {}; on {}",
        survived(false),
        survived(true)
    );
}

fn measure(label: &str, guard: Option<u64>, subnet: u8) -> Result<Row> {
    let topo = DsrTopology::build(subnet);
    let vip_ip = topo.vip_ip();
    let vip = SocketAddr::new(vip_ip, VIP_PORT);
    let client_ip = topo.client_ip();
    let mut keep = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        keep.push(real.run(|| xdp::attach_program(program_names::DECAP, "e0", MODE))??);
        let listener = real.run(move || TcpListener::bind((vip_ip, VIP_PORT)))??;
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    let mut lb = topo.lb.run(|| xdp::attach("l0", MODE))??;
    let mut text = String::new();
    if let Some(n) = guard {
        text += &format!("[l4]\nflood_guard_new_flows_per_cpu = {n}\n");
    }
    text += &format!("[[vip]]\naddress = \"{vip}\"\nring_size = 1009\n");
    for i in 0..topo.reals.len() {
        text += &format!("[[vip.real]]\naddress = \"{}\"\n", topo.real_ip(i));
    }
    let config = L4Config::parse(&text, Path::new("syn_flood.toml"))?;
    let mut dp = L4Dataplane::new();
    dp.apply(lb.ebpf_mut(), &config)?;

    // The established flow, before the flood, opened from the flood's CPU: veth runs the
    // receiver's XDP program on the sending CPU as a rule, and the table keeps one LRU list
    // per CPU, so the entry lands in the list the flood churns (as it would with RSS
    // spreading a flood over every CPU). Not strictly: some flood packets are handled on the
    // other CPU (the table fills past one CPU's share in some rounds), so whether the
    // unguarded flood evicts this entry varies from round to round.
    let (mut established, first_real) = topo.client.run(move || -> Result<_> {
        let mut set = nix::sched::CpuSet::new();
        set.set(FLOOD_CPU.parse()?)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
        let mut conn = connect(client_ip, ESTABLISHED_PORT, vip, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let real = get_name(&mut conn)?;
        Ok((conn, real))
    })??;
    let established_flow = flow_key(
        SocketAddr::new(client_ip, ESTABLISHED_PORT),
        vip,
        Protocol::Tcp,
    );
    if !conntrack(lb.ebpf(), &established_flow)?.0 {
        bail!("{label}: the established flow has no connection-table entry before the flood");
    }

    let stats = |lb: &xdp::AttachedXdp| -> Result<L4Stats> { Ok(read_l4_stats(lb.ebpf(), &dp)?) };
    let before = stats(&lb)?;
    let tx_before = tx_packets(&topo)?;
    let cpu_before = cpu_times(FLOOD_CPU)?;
    let mut flood = Flood(
        topo.client
            .command("taskset")
            .args([
                "-c",
                FLOOD_CPU,
                "hping3",
                "-q",
                "-S",
                "--flood",
                "--rand-source",
            ])
            .args(["-p", &VIP_PORT.to_string()])
            .arg(vip_ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start hping3")?,
    );
    let start = Instant::now();
    // Legitimate connections, paced, from ephemeral ports of the client's own address.
    let legit = topo.client.run(move || {
        let mut attempts = 0u32;
        let mut ok = 0u32;
        let mut connect_ms = Vec::new();
        let mut failures = std::collections::BTreeMap::new();
        let mut next = Instant::now();
        while start.elapsed() < WINDOW {
            attempts += 1;
            let t = Instant::now();
            let answered = connect(client_ip, 0, vip, LEGIT_TIMEOUT).and_then(|mut conn| {
                let took = t.elapsed();
                conn.set_read_timeout(Some(LEGIT_TIMEOUT))?;
                get_name(&mut conn).map(|_| took)
            });
            match answered {
                Ok(took) => {
                    ok += 1;
                    connect_ms.push(took.as_secs_f64() * 1e3);
                }
                Err(e) => *failures.entry(e.kind().to_string()).or_insert(0u32) += 1,
            }
            next += LEGIT_EVERY;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        (attempts, ok, connect_ms, failures)
    })?;
    let after = stats(&lb)?;
    let tx_after = tx_packets(&topo)?;
    let cpu_after = cpu_times(FLOOD_CPU)?;
    let secs = start.elapsed().as_secs_f64();
    if flood.0.try_wait()?.is_some() {
        bail!("{label}: hping3 stopped before the window ended");
    }
    drop(flood);

    // Once the flood's last packets are through (the counters stand still between two reads),
    // the table and the established flow.
    let mut settled = stats(&lb)?;
    loop {
        thread::sleep(Duration::from_millis(100));
        let again = stats(&lb)?;
        if again == settled {
            break;
        }
        settled = again;
    }
    let (survived, entries) = conntrack(lb.ebpf(), &established_flow)?;
    let established_after = get_name(&mut established)
        .map(|real| real == first_real)
        .map_err(|e| e.to_string());
    let delta = |e: L4Event| after.event(e) - before.event(e);
    let row = Row {
        label: label.to_string(),
        guard: guard.is_some(),
        secs,
        sent: tx_after - tx_before,
        vip_packets: after.vip(vip).packets - before.vip(vip).packets,
        // Table misses: flows that opened, and segments of flows whose entry was missing
        // (both pass the guard).
        new_flows: after.vip(vip).new_flows - before.vip(vip).new_flows
            + delta(L4Event::MidFlowRehash),
        kept_out: delta(L4Event::FloodGuardNotInserted),
        insert_failed: delta(L4Event::ConntrackInsertFailed),
        forwarded: [
            L4Event::EncapTx,
            L4Event::EncapRedirect,
            L4Event::EncapFibPassed,
        ]
        .into_iter()
        .map(delta)
        .sum(),
        dropped: [
            L4Event::NoRealDropped,
            L4Event::EncapFailedDropped,
            L4Event::MalformedDropped,
            L4Event::DenyListDropped,
            L4Event::AllowListDropped,
            L4Event::SourceRateDropped,
        ]
        .into_iter()
        .map(delta)
        .sum(),
        flood_cpu: {
            let d: Vec<f64> = cpu_after
                .iter()
                .zip(&cpu_before)
                .map(|(a, b)| (a - b) as f64)
                .collect();
            let total: f64 = d.iter().sum::<f64>().max(1.0);
            // /proc/stat: user nice system idle iowait irq softirq steal ...
            [d[0] + d[1], d[2] + d[5], d[6], d[3] + d[4] + d[7]].map(|t| 100.0 * t / total)
        },
        entries,
        legit_attempts: legit.0,
        legit_ok: legit.1,
        legit_connect_ms: legit.2,
        legit_failures: legit.3,
        established_entry_survived: survived,
        established_after,
    };
    eprintln!(
        "  {label}: sent {:.0} pps, XDP saw {:.0} VIP pps, {} new flows ({} kept out), \
         {entries} entries, legit {}/{}",
        row.sent_pps(),
        row.vip_pps(),
        row.new_flows,
        row.kept_out,
        row.legit_ok,
        row.legit_attempts
    );
    drop(established);
    lb.detach()?;
    drop(keep);
    Ok(row)
}

/// A TCP connection from `client_ip:port` (port 0: ephemeral) to `to`, giving up after
/// `timeout` (call inside the client namespace).
fn connect(
    client_ip: IpAddr,
    port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(client_ip, port).into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// Whether `flow` has a connection-table entry, and how many entries the table holds.
fn conntrack(ebpf: &aya::Ebpf, flow: &FlowKey) -> Result<(bool, usize)> {
    let map: BpfHashMap<&MapData, FlowKey, FlowEntry> = ebpf
        .map(map_names::CONNTRACK)
        .context("no CONNTRACK map")?
        .try_into()?;
    let entries = map.keys().filter(Result::is_ok).count();
    Ok((map.get(flow, 0).is_ok(), entries))
}

/// Packets sent on the client's c0 (what hping3 and the legitimate client put on the wire).
fn tx_packets(topo: &DsrTopology) -> Result<u64> {
    let out = topo.client.ip(&["-j", "-s", "link", "show", "dev", "c0"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .context("no tx packets in `ip -j -s link` output")
}

/// The jiffies counters of `cpu` in /proc/stat (user nice system idle iowait irq softirq steal).
fn cpu_times(cpu: &str) -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))
        .context("CPU not in /proc/stat")?;
    let times: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if times.len() < 8 {
        bail!("short /proc/stat line: {line}");
    }
    Ok(times)
}
