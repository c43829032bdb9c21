//! The datapath's hardening decisions on golden packets (BPF_PROG_TEST_RUN, real kernel FIB as
//! in `l4_datapath`): allow/deny lists, the per-source new-flow limit and the flood guard,
//! each changed at runtime through `L4Dataplane::apply` as a reload does.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, MapData, lpm_trie::LpmTrie};
use lb::{
    l4::{L4Config, L4Dataplane, Protocol, addr16, flow_key, read_l4_stats},
    maglev::{self, Backend},
};
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::{FlowEntry, FlowKey, L4Event, ListKeyV4, ListKeyV6},
    map_names, program_names,
};
use lb_tests::{
    fib,
    netns::require_root,
    packets::*,
    xdp_run::{XDP_DROP, XDP_REDIRECT, XdpRunner},
};

const REALS4: [&str; 3] = fib::REALS4;
const VIP4: &str = "10.100.0.100:80";
const VIP4_IP: [u8; 4] = [10, 100, 0, 100];
const VIP6: &str = "[fd64::100]:443";
const VIP6_IP: [u8; 16] = [0xfd, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0];
const RING: u32 = 1009;

fn config(guard: &str, vip4_keys: &str) -> L4Config {
    let mut text =
        format!("{guard}\n[[vip]]\naddress = \"{VIP4}\"\nring_size = {RING}\n{vip4_keys}\n");
    for real in REALS4 {
        text.push_str(&format!("[[vip.real]]\naddress = \"{real}\"\n"));
    }
    text.push_str(&format!(
        "[[vip]]\naddress = \"{VIP6}\"\nring_size = {RING}\n[[vip.real]]\naddress = \"{}\"\n",
        fib::REALS6[0]
    ));
    L4Config::parse(&text, Path::new("test.toml")).expect("test config")
}

fn syn4(client: [u8; 4], sport: u16) -> Vec<u8> {
    eth_ipv4(
        &[],
        &Ipv4Opts::new(client, VIP4_IP),
        tcp(sport, 80, TCP_SYN, &[], b""),
    )
    .0
}

fn ack4(client: [u8; 4], sport: u16) -> Vec<u8> {
    eth_ipv4(
        &[],
        &Ipv4Opts::new(client, VIP4_IP),
        tcp(sport, 80, TCP_ACK, &[], b"x"),
    )
    .0
}

fn syn6(client: [u8; 16], sport: u16) -> Vec<u8> {
    eth_ipv6(
        &[],
        client,
        VIP6_IP,
        &[],
        tcp(sport, 443, TCP_SYN, &[], b""),
    )
    .0
}

/// Which real Maglev gives a flow to VIP4 (all weights 1).
fn predicted_real(flow: &FlowKey) -> IpAddr {
    let backends: Vec<Backend> = REALS4
        .iter()
        .map(|addr| Backend {
            key: addr16(addr.parse().expect("ip")).0,
            weight: 1,
        })
        .collect();
    let table = maglev::build(&backends, RING).expect("maglev");
    let owner = table[(flow_hash(flow, FLOW_HASH_SEED) % RING) as usize].expect("slot owned");
    REALS4[owner].parse().expect("ip")
}

fn conntrack_entries(runner: &XdpRunner) -> usize {
    let map: BpfHashMap<&MapData, FlowKey, FlowEntry> = runner
        .ebpf()
        .map(map_names::CONNTRACK)
        .expect("CONNTRACK")
        .try_into()
        .expect("hash map");
    map.keys().filter(Result::is_ok).count()
}

fn run_in_fib_netns(test: &'static str, body: impl FnOnce() + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let ns = fib::fib_netns();
    ns.run(body).expect("test body");
}

/// Keeps the calling thread on one CPU: the flood guard's windows are per CPU, and
/// BPF_PROG_TEST_RUN runs on the caller's CPU.
fn stay_on_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getcpu().expect("current cpu");
    set.set(cpu).expect("cpu set");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("affinity");
}

#[test]
fn deny_and_allow_lists_drop_per_vip_and_globally_and_change_at_runtime() {
    run_in_fib_netns(
        "deny_and_allow_lists_drop_per_vip_and_globally_and_change_at_runtime",
        || {
            let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
            let mut dp = L4Dataplane::new();
            let ebpf = runner.ebpf_mut();
            dp.apply(ebpf, &config("", "")).expect("apply");
            let client = [10, 9, 1, 1];
            let other = [10, 8, 1, 1];
            let client6 = [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

            // No lists: everything is forwarded; an established flow from `client` is made.
            assert_eq!(
                runner.run(&syn4(client, 1000)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(
                runner.run(&syn6(client6, 1000)).expect("run").action,
                XDP_REDIRECT
            );

            // Global deny of client's /16 and one IPv6 host: both dropped, the established
            // flow too; other sources pass.
            dp.apply(
                runner.ebpf_mut(),
                &config("[l4]\ndeny = [\"10.9.0.0/16\", \"fd99::1\"]", ""),
            )
            .expect("apply deny");
            assert_eq!(
                runner.run(&ack4(client, 1000)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn4(client, 1001)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn6(client6, 1001)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn4(other, 1000)).expect("run").action,
                XDP_REDIRECT
            );
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::DenyListDropped), 3);

            // VIP4's own allow list: only 10.8.0.0/16 reaches VIP4; VIP6 is not affected by
            // it. The global deny is gone: client now fails the allow list instead.
            dp.apply(runner.ebpf_mut(), &config("", "allow = [\"10.8.0.0/16\"]"))
                .expect("apply allow");
            assert_eq!(
                runner.run(&syn4(other, 1001)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(
                runner.run(&syn4(client, 1002)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn6(client6, 1002)).expect("run").action,
                XDP_REDIRECT
            );
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::AllowListDropped), 1);
            assert_eq!(stats.event(L4Event::DenyListDropped), 3);

            // A global allow list holding only IPv4 drops IPv6 clients (the list is in force
            // for every family); deny wins over allow; removing the lists restores everything.
            dp.apply(
                runner.ebpf_mut(),
                &config("[l4]\nallow = [\"10.0.0.0/8\"]", "deny = [\"10.8.1.1\"]"),
            )
            .expect("apply global allow");
            assert_eq!(
                runner.run(&syn6(client6, 1003)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn4(other, 1003)).expect("run").action,
                XDP_DROP
            );
            assert_eq!(
                runner.run(&syn4(client, 1003)).expect("run").action,
                XDP_REDIRECT
            );
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::AllowListDropped), 2);
            assert_eq!(stats.event(L4Event::DenyListDropped), 4);

            dp.apply(runner.ebpf_mut(), &config("", ""))
                .expect("apply none");
            for frame in [syn4(client, 1004), syn4(other, 1004), syn6(client6, 1004)] {
                assert_eq!(runner.run(&frame).expect("run").action, XDP_REDIRECT);
            }
            for name in [map_names::DENY_V4, map_names::ALLOW_V4] {
                let trie: LpmTrie<&MapData, ListKeyV4, u8> = runner
                    .ebpf()
                    .map(name)
                    .expect("trie")
                    .try_into()
                    .expect("lpm trie");
                assert_eq!(trie.keys().count(), 0, "{name} emptied");
            }
            for name in [map_names::DENY_V6, map_names::ALLOW_V6] {
                let trie: LpmTrie<&MapData, ListKeyV6, u8> = runner
                    .ebpf()
                    .map(name)
                    .expect("trie")
                    .try_into()
                    .expect("lpm trie");
                assert_eq!(trie.keys().count(), 0, "{name} emptied");
            }
        },
    );
}

#[test]
fn over_its_rate_a_source_opens_no_new_flows_but_keeps_its_open_ones() {
    run_in_fib_netns(
        "over_its_rate_a_source_opens_no_new_flows_but_keeps_its_open_ones",
        || {
            let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
            let mut dp = L4Dataplane::new();
            // 1 new flow per second, bursts of 3: the fourth SYN within the second is dropped
            // (the runs take microseconds; a second would have to pass for another token).
            dp.apply(
                runner.ebpf_mut(),
                &config(
                    "[l4]\nsource_new_flows_per_second = 1\nsource_new_flows_burst = 3",
                    "",
                ),
            )
            .expect("apply");
            let client = [10, 9, 1, 1];
            for sport in 1000..1003 {
                assert_eq!(
                    runner.run(&syn4(client, sport)).expect("run").action,
                    XDP_REDIRECT
                );
            }
            assert_eq!(
                runner.run(&syn4(client, 1003)).expect("run").action,
                XDP_DROP
            );
            // Its established flows go on; a segment of a flow not in the table (no SYN) is
            // never charged; another source has its own allowance.
            assert_eq!(
                runner.run(&ack4(client, 1000)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(
                runner.run(&ack4(client, 2000)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(
                runner.run(&syn4([10, 9, 1, 2], 1000)).expect("run").action,
                XDP_REDIRECT
            );
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::SourceRateDropped), 1);

            // The limit goes at runtime: the same source opens flows again.
            dp.apply(runner.ebpf_mut(), &config("", "")).expect("apply");
            assert_eq!(
                runner.run(&syn4(client, 1004)).expect("run").action,
                XDP_REDIRECT
            );
        },
    );
}

#[test]
fn past_the_flood_guard_rate_new_flows_are_hashed_without_entering_the_table() {
    run_in_fib_netns(
        "past_the_flood_guard_rate_new_flows_are_hashed_without_entering_the_table",
        || {
            stay_on_one_cpu();
            let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
            let mut dp = L4Dataplane::new();
            dp.apply(
                runner.ebpf_mut(),
                &config("[l4]\nflood_guard_new_flows_per_cpu = 5", ""),
            )
            .expect("apply");
            let vip: SocketAddr = VIP4.parse().expect("vip");
            // 20 new flows within one window (microseconds apart): the first 5 enter the
            // table, the other 15 are forwarded to the same real Maglev gives them anyway.
            for n in 0..20u8 {
                let client = [10, 9, 0, n];
                let res = runner.run(&syn4(client, 1000)).expect("run");
                assert_eq!(res.action, XDP_REDIRECT, "flow {n}");
                let flow = flow_key(SocketAddr::from((client, 1000)), vip, Protocol::Tcp);
                let real = predicted_real(&flow);
                assert_eq!(
                    IpAddr::from([res.frame[30], res.frame[31], res.frame[32], res.frame[33]]),
                    real,
                    "flow {n}"
                );
            }
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::NewFlow), 20);
            assert_eq!(stats.event(L4Event::FloodGuardNotInserted), 15);
            assert_eq!(conntrack_entries(&runner), 5);
            // The first flows are established (table hits); a kept-out flow's next packet is
            // a miss again, forwarded by hash, and not rate limited (no SYN).
            assert_eq!(
                runner.run(&ack4([10, 9, 0, 0], 1000)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(
                runner.run(&ack4([10, 9, 0, 19], 1000)).expect("run").action,
                XDP_REDIRECT
            );
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::ConntrackHit), 1);
            assert_eq!(conntrack_entries(&runner), 5);

            // Guard off at runtime: new flows enter the table again.
            dp.apply(runner.ebpf_mut(), &config("", "")).expect("apply");
            assert_eq!(
                runner.run(&syn4([10, 9, 1, 0], 1000)).expect("run").action,
                XDP_REDIRECT
            );
            assert_eq!(conntrack_entries(&runner), 6);
        },
    );
}
