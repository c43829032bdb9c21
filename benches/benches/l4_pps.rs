//! Packets per second through the L4 tier vs the kernel's own L4 path, same run, same rig:
//! the DSR topology (client -> lb -> 3 reals), the same UDP packet mix (64-byte datagrams
//! from 64 client ports to VIP:9000).
//!
//! The client does not use its socket stack: `lb_xdp_tx` run in live-frames mode on c0 puts
//! prebuilt frames on the wire as XDP frames (no skb), so the load balancer, not the sender,
//! is what runs out of CPU. Everything is pinned to CPU 1 (veth runs the receiver's NAPI on
//! the sending CPU), so the figure is the packets one core moves through the whole path.
//!
//! - xdp: `lb_xdp` on l0 (native), IPIP to the reals, `lb_decap` on each real.
//! - nft: `lb_xdp_baseline_pass` on l0 (veth needs a native program to receive XDP frames; it
//!   passes everything to the stack), nftables DNAT in the lb namespace (`numgen random mod 3`,
//!   conntrack), the kernel forwards to the reals (plain skbs, no XDP on the reals).
//!
//! Reported: datagrams received by the reals' sockets per second.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb::{
    l4::{L4Config, L4Dataplane, read_l4_stats},
    xdp::{self, AttachMode},
};
use lb_common::program_names;
use lb_tests::{
    dsr::DsrTopology,
    packets::{Ipv4Opts, eth_ipv4, udp},
    xdp_run::XdpRunner,
};

const DURATION: Duration = Duration::from_secs(3);
const FLOWS: u16 = 64;
const PAYLOAD: usize = 64;
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("l4_pps creates namespaces and attaches XDP: run it as root");
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("nft not found: run `cargo xtask setup` (installs nftables)");
    }
    println!(
        "UDP {PAYLOAD}-byte datagrams, {FLOWS} flows, {DURATION:?} per round, best of {ROUNDS}"
    );
    let mut results = Vec::new();
    for mode in ["xdp", "nft"] {
        let mut best = 0.0f64;
        for round in 0..ROUNDS {
            let pps = measure(mode, 71 + round as u8 + if mode == "nft" { 10 } else { 0 })?;
            best = best.max(pps);
        }
        println!("{mode:<4} {best:>12.0} pps received");
        results.push(best);
    }
    println!("xdp / nft = {:.2}", results[0] / results[1]);
    Ok(())
}

fn measure(mode: &str, subnet: u8) -> Result<f64> {
    let topo = DsrTopology::build(subnet);
    let vip = SocketAddr::new(topo.vip_ip(), 9000);
    let mut keep = Vec::new();
    let mut dataplane = L4Dataplane::new();
    if mode == "xdp" {
        for real in &topo.reals {
            keep.push(
                real.run(|| xdp::attach_program(program_names::DECAP, "e0", AttachMode::Native))??,
            );
        }
        let mut lb = topo.lb.run(|| xdp::attach("l0", AttachMode::Native))??;
        let mut text = format!("[[vip]]\naddress = \"{vip}\"\nprotocol = \"udp\"\n");
        for i in 0..topo.reals.len() {
            text.push_str(&format!(
                "[[vip.real]]\naddress = \"{}\"\n",
                topo.real_ip(i)
            ));
        }
        dataplane.apply(
            lb.ebpf_mut(),
            &L4Config::parse(&text, Path::new("bench.toml"))?,
        )?;
        keep.push(lb);
    } else {
        keep.push(topo.lb.run(|| {
            xdp::attach_program(program_names::BASELINE_PASS, "l0", AttachMode::Native)
        })??);
        let map = (0..topo.reals.len())
            .map(|i| format!("{i} : {}", topo.real_ip(i)))
            .collect::<Vec<_>>()
            .join(", ");
        let ruleset = format!(
            "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    \
             ip daddr {} udp dport 9000 dnat to numgen random mod {} map {{ {map} }}\n  }}\n}}\n",
            topo.vip_ip(),
            topo.reals.len()
        );
        let status = topo
            .lb
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child
                    .stdin
                    .take()
                    .context("stdin")
                    .map_err(std::io::Error::other)?
                    .write_all(ruleset.as_bytes())?;
                child.wait()
            })?;
        if !status.success() {
            bail!("nft rejected the ruleset");
        }
    }

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for real in &topo.reals {
        let sock = real.run(|| UdpSocket::bind("0.0.0.0:9000"))??;
        // Deep receive buffers: losses should be the forwarding path's, not the sockets'.
        socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (received, stop) = (received.clone(), stop.clone());
        receivers.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let frames = frames(&topo, vip)?;
    // Warm up (ARP, conntrack), then count from zero.
    let warm = frames.clone();
    topo.client
        .run(move || generate(&warm, Duration::from_millis(300)))??;
    thread::sleep(Duration::from_millis(200));
    received.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let sent = topo.client.run(move || generate(&frames, DURATION))??;
    thread::sleep(Duration::from_millis(100));
    let elapsed = start.elapsed();
    eprintln!(
        "  {mode} round: generated {:.0} pps",
        sent as f64 / elapsed.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    if let (true, Some(lb)) = (mode == "xdp", keep.last()) {
        let stats = read_l4_stats(lb.ebpf(), &dataplane)?;
        eprintln!(
            "  xdp round: {}",
            stats.to_string().lines().last().unwrap_or_default()
        );
    }
    Ok(received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// One frame per flow: Ethernet (c0 -> l0 MACs) / IPv4 client -> VIP / UDP to port 9000.
fn frames(topo: &DsrTopology, vip: SocketAddr) -> Result<Vec<Vec<u8>>> {
    let mac = |ns: &lb_tests::netns::Netns, dev: &str| -> Result<[u8; 6]> {
        let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
        let text = out
            .split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("no MAC in ip link output")?;
        let mut mac = [0u8; 6];
        for (slot, part) in mac.iter_mut().zip(text.split(':')) {
            *slot = u8::from_str_radix(part, 16)?;
        }
        Ok(mac)
    };
    let (src_mac, dst_mac) = (mac(&topo.client, "c0")?, mac(&topo.lb, "l0")?);
    let (IpAddr::V4(client), IpAddr::V4(vip_ip)) = (topo.client_ip(), vip.ip()) else {
        bail!("IPv4 rig expected");
    };
    Ok((0..FLOWS)
        .map(|n| {
            let (mut frame, _) = eth_ipv4(
                &[],
                &Ipv4Opts::new(client.octets(), vip_ip.octets()),
                udp(20000 + n, vip.port(), &[0x5a; PAYLOAD]),
            );
            frame[0..6].copy_from_slice(&dst_mac);
            frame[6..12].copy_from_slice(&src_mac);
            frame
        })
        .collect())
}

/// Puts `frames` on c0 (round-robin, in bursts) for `duration`, from CPU 1. Returns how many.
fn generate(frames: &[Vec<u8>], duration: Duration) -> Result<u64> {
    // Each live-frames run sets up and tears down a page pool (milliseconds), so runs must
    // be long; flows change per run.
    const BURST: u32 = 50_000;
    let mut set = nix::sched::CpuSet::new();
    set.set(1)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    let ifindex = nix::net::if_::if_nametoindex("c0")?;
    let mut tx = XdpRunner::load(program_names::TX)?;
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    for frame in frames.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        tx.run_live_on(frame, BURST, Some(ifindex))?;
        sent += u64::from(BURST);
    }
    Ok(sent)
}
