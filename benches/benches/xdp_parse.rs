//! Per-packet cost of `lb_xdp` on typical frames, by BPF_PROG_TEST_RUN, against the trivial
//! `lb_xdp_baseline_pass` program measured the same way in the same run.
//!
//! The datapath does not rewrite frames yet, so `repeat` runs the same frame many times inside
//! one syscall and the kernel reports the mean; rewrite paths (L4 tier) will need repeat = 1
//! loops instead (see ../shared/ebpf-toolchain.md).
use anyhow::{Result, bail};
use lb_common::program_names;
use lb_tests::{packets::*, xdp_run::XdpRunner};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xdp_parse loads BPF programs: run it as root");
    }
    let v4 = Ipv4Opts::new(V4_CLIENT, V4_SERVER);
    let mut v4_opts = v4.clone();
    v4_opts.options = vec![1; 8];
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("arp (non-IP)", ethernet(&[], ETH_P_ARP, &[0; 28])),
        (
            "ipv4 tcp mid-flow",
            eth_ipv4(&[], &v4, tcp(40000, 80, TCP_ACK | TCP_PSH, &[], &[0; 64])).0,
        ),
        (
            "ipv4 tcp syn (logs)",
            eth_ipv4(&[], &v4, tcp(40000, 80, TCP_SYN, &[], b"")).0,
        ),
        (
            "ipv4+opts udp",
            eth_ipv4(&[], &v4_opts, udp(4000, 53, &[0; 64])).0,
        ),
        (
            "qinq ipv4 tcp",
            eth_ipv4(
                &[ETH_P_8021AD, ETH_P_8021Q],
                &v4,
                tcp(40000, 80, TCP_ACK, &[], &[0; 64]),
            )
            .0,
        ),
        (
            "ipv6 udp",
            eth_ipv6(&[], V6_CLIENT, V6_SERVER, &[], udp(4000, 443, &[0; 64])).0,
        ),
        (
            "ipv6 hbh+frag udp",
            eth_ipv6(
                &[],
                V6_CLIENT,
                V6_SERVER,
                &[Ext::opts(IPPROTO_HOPOPTS, 0), Ext::fragment(0, true)],
                udp(4000, 443, &[0; 64]),
            )
            .0,
        ),
    ];

    let mut baseline = XdpRunner::load(program_names::BASELINE_PASS)?;
    let mut datapath = XdpRunner::load(program_names::LB_XDP)?;
    // Keep the ring buffer drained so the SYN case measures logging, not a full buffer.
    let mut logs = datapath.capture_logs()?;

    println!("per-packet cost, kernel-reported mean of {REPEAT} runs, best of {ROUNDS} rounds");
    println!(
        "{:<22} {:>12} {:>12} {:>12}",
        "frame", "baseline ns", "lb_xdp ns", "delta ns"
    );
    for (name, frame) in &frames {
        let mut base_best = f64::MAX;
        let mut lb_best = f64::MAX;
        for _ in 0..ROUNDS {
            base_best = base_best.min(per_run_ns(&mut baseline, frame)?);
            lb_best = lb_best.min(per_run_ns(&mut datapath, frame)?);
            logs.lines();
        }
        println!(
            "{name:<22} {base_best:>12.1} {lb_best:>12.1} {:>12.1}",
            lb_best - base_best
        );
    }
    Ok(())
}

fn per_run_ns(runner: &mut XdpRunner, frame: &[u8]) -> Result<f64> {
    let res = runner.run_repeat(frame, REPEAT)?;
    Ok(res.duration.as_nanos() as f64)
}
