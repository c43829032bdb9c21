//! Per-packet cost of the L4 paths, by BPF_PROG_TEST_RUN in a namespace whose FIB reaches the
//! reals (so encapsulation ends in a real `bpf_fib_lookup` + redirect), against the trivial
//! `lb_xdp_baseline_pass` program measured the same way in the same run.
//!
//! Two measurements per path:
//! - cold: a loop of repeat = 1 runs on a fresh copy of the input (rewrite paths change the
//!   frame, so the kernel's own repeat would feed the program its output). Each run pays cold
//!   caches and timer overhead; the baseline pays them too, and the delta removes the timer.
//! - warm: the kernel's own repeat (10^6 runs in one syscall, caches warm) for the paths that
//!   leave the frame unchanged (non-VIP pass, local hand-off). Encapsulating paths cannot be
//!   measured this way: from the second run on the program would see its own output. (Live-
//!   frames mode does not help either: it resets the data pointers between runs but not the
//!   bytes, so an encapsulated frame is re-read as garbage.)
use std::path::Path;

use anyhow::{Result, bail};
use lb::l4::{L4Config, L4Dataplane};
use lb_common::program_names;
use lb_tests::{fib, packets::*, xdp_run::XdpRunner};

const RUNS: u32 = 20_000;
const ROUNDS: usize = 5;
const WARM_REPEAT: u32 = 1_000_000;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("l4_packet_cost loads BPF programs and creates a namespace: run it as root");
    }
    let ns = fib::fib_netns();
    ns.run(measure)?
}

fn measure() -> Result<()> {
    let mut baseline = XdpRunner::load(program_names::BASELINE_PASS)?;
    let mut lb = XdpRunner::load(program_names::LB_XDP)?;
    let mut text = String::from("[[vip]]\naddress = \"10.100.0.100:80\"\n");
    for real in fib::REALS4 {
        text.push_str(&format!("[[vip.real]]\naddress = \"{real}\"\n"));
    }
    text.push_str("[[vip]]\naddress = \"10.100.0.200:80\"\nforward = \"local\"\n[[vip.real]]\naddress = \"127.0.0.1\"\n");
    let config = L4Config::parse(&text, Path::new("bench.toml"))?;
    L4Dataplane::new().apply(lb.ebpf_mut(), &config)?;
    // The same VIPs with every [l4] check in force (none trips: the client is allowed and
    // the rates are out of reach), to show what the checks cost when configured.
    let mut hardened = XdpRunner::load(program_names::LB_XDP)?;
    let checks = "[l4]\nflood_guard_new_flows_per_cpu = 1000000000\n\
        source_new_flows_per_second = 1000000000\ndeny = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n\
        allow = [\"10.0.0.0/8\"]\n";
    let config = L4Config::parse(&format!("{checks}{text}"), Path::new("bench.toml"))?;
    L4Dataplane::new().apply(hardened.ebpf_mut(), &config)?;
    // The flood guard tripped (one new flow per second per CPU enters the table): new flows
    // are hashed and forwarded without a connection-table insert.
    let mut guarded = XdpRunner::load(program_names::LB_XDP)?;
    let guard = "[l4]\nflood_guard_new_flows_per_cpu = 1\n";
    let config = L4Config::parse(&format!("{guard}{text}"), Path::new("bench.toml"))?;
    L4Dataplane::new().apply(guarded.ebpf_mut(), &config)?;

    let to = |dst: [u8; 4], flags| {
        eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, dst),
            tcp(40000, 80, flags, &[], &[0u8; 64]),
        )
    };
    let (non_vip, _) = to([10, 100, 0, 50], TCP_ACK);
    let (established, _) = to([10, 100, 0, 100], TCP_ACK);
    let (new_flow, layout) = to([10, 100, 0, 100], TCP_SYN);
    let (local, _) = to([10, 100, 0, 200], TCP_ACK);
    // Warm the connection table for the established cases.
    lb.run(&established)?;
    lb.run(&local)?;
    hardened.run(&established)?;
    hardened.run(&local)?;

    println!(
        "per-packet cost (ns): cold = mean of {RUNS} runs at repeat=1, warm = kernel repeat x {WARM_REPEAT}; best of {ROUNDS} rounds"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "path", "cold base", "cold lb", "cold delta", "warm base", "warm lb", "warm delta"
    );
    // (name, frame, new flow per run, frame rewritten, runner: 0 plain, 1 [l4] checks, 2
    // flood guard tripped)
    let cases: [(&str, &[u8], bool, bool, usize); 8] = [
        ("non-VIP pass", &non_vip, false, false, 0),
        ("established flow encap", &established, false, true, 0),
        ("new flow encap", &new_flow, true, true, 0),
        ("local hand-off", &local, false, false, 0),
        ("established, [l4] checks", &established, false, true, 1),
        ("new flow, [l4] checks", &new_flow, true, true, 1),
        ("local hand-off, [l4] checks", &local, false, false, 1),
        ("new flow, guard tripped", &new_flow, true, true, 2),
    ];
    let mut flow = 1u32;
    for (name, frame, vary_port, rewritten, runner) in cases {
        let lb = match runner {
            1 => &mut hardened,
            2 => &mut guarded,
            _ => &mut lb,
        };
        let mut base_best = f64::MAX;
        let mut lb_best = f64::MAX;
        let mut warm_base = f64::MAX;
        let mut warm_lb = f64::MAX;
        for _ in 0..ROUNDS {
            base_best = base_best.min(mean_ns(&mut baseline, frame, None)?);
            let vary = vary_port.then_some((layout.clone(), &mut flow));
            lb_best = lb_best.min(mean_ns(lb, frame, vary)?);
            if !rewritten {
                let base = baseline.run_repeat(frame, WARM_REPEAT)?.duration;
                let own = lb.run_repeat(frame, WARM_REPEAT)?.duration;
                warm_base = warm_base.min(base.as_nanos() as f64);
                warm_lb = warm_lb.min(own.as_nanos() as f64);
            }
        }
        let warm = |v: f64| {
            if v == f64::MAX {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{name:<28} {base_best:>10.1} {lb_best:>10.1} {:>10.1} {:>10} {:>10} {:>10}",
            lb_best - base_best,
            warm(warm_base),
            warm(warm_lb),
            if warm_lb == f64::MAX {
                "-".to_owned()
            } else {
                format!("{:.1}", warm_lb - warm_base)
            },
        );
    }
    Ok(())
}

/// Mean kernel-reported duration of `RUNS` single runs. With `vary`, each run gets a new
/// source port and, past 65535 flows, a new source address: a new flow each time (ports
/// alone would wrap and turn later rounds into table hits).
fn mean_ns(
    runner: &mut XdpRunner,
    frame: &[u8],
    mut vary: Option<(Layout, &mut u32)>,
) -> Result<f64> {
    let mut input = frame.to_vec();
    let mut total = 0u128;
    for _ in 0..RUNS {
        if let Some((layout, flow)) = vary.as_mut() {
            **flow += 1;
            let [hi, lo, port_hi, port_lo] = flow.to_be_bytes();
            input[layout.l3 + 14..layout.l3 + 16].copy_from_slice(&[hi, lo]);
            input[layout.l4..layout.l4 + 2].copy_from_slice(&[port_hi, port_lo]);
        }
        total += runner.run(&input)?.duration.as_nanos();
    }
    Ok(total as f64 / f64::from(RUNS))
}
