//! The L4 datapath on golden packets (BPF_PROG_TEST_RUN), with the real kernel FIB: each test
//! runs inside its own network namespace that has a route and permanent neighbour entries
//! toward the reals, so `bpf_fib_lookup` resolves next-hop MACs exactly as in production.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{Array, MapData};
use lb::{
    l4::{
        FlowTags, L4Config, L4Dataplane, Protocol, addr16, flow_key, lookup_flow_tag, read_l4_stats,
    },
    maglev::{self, Backend},
};
use lb_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    l4::{
        FAMILY_V4, FlowKey, L4Event, VIP_INDEX_SLOTS, VipKey, VipSlot, addr_words, vip_index_slot,
    },
    map_names, program_names,
};
use lb_tests::{
    fib,
    netns::require_root,
    packets::*,
    xdp_run::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XdpRunner},
};

const LB_MAC: [u8; 6] = fib::LB_MAC;
const REALS4: [&str; 3] = fib::REALS4;
const REALS6: [&str; 2] = fib::REALS6;
const VIP4: &str = "10.100.0.100:80";
const VIP6: &str = "[fd64::100]:443";

fn config(text: &str) -> L4Config {
    L4Config::parse(text, Path::new("test.toml")).expect("test config")
}

fn vip_config(ring: u32, reals: &[(&str, u32, bool)]) -> String {
    let mut text = format!("[[vip]]\naddress = \"{VIP4}\"\nring_size = {ring}\n");
    for (addr, weight, down) in reals {
        text.push_str(&format!(
            "[[vip.real]]\naddress = \"{addr}\"\nweight = {weight}\ndown = {down}\n"
        ));
    }
    text
}

/// Which real the datapath must pick for a new flow: the same Maglev table and flow hash.
fn predicted_real(flow: &FlowKey, reals: &[(&str, u32)], ring: u32) -> IpAddr {
    let backends: Vec<Backend> = reals
        .iter()
        .map(|(addr, weight)| Backend {
            key: addr16(addr.parse().expect("ip")).0,
            weight: *weight,
        })
        .collect();
    let table = maglev::build(&backends, ring).expect("maglev");
    let slot = flow_hash(flow, FLOW_HASH_SEED) % ring;
    let owner = table[slot as usize].expect("slot owned");
    reals[owner].0.parse().expect("ip")
}

fn v4_flow(client: [u8; 4], sport: u16, vip: SocketAddr) -> FlowKey {
    flow_key(SocketAddr::from((client, sport)), vip, Protocol::Tcp)
}

/// The outer IPv4 destination of an encapsulated frame.
fn outer_dst_v4(frame: &[u8]) -> IpAddr {
    IpAddr::from([frame[30], frame[31], frame[32], frame[33]])
}

fn run_in_fib_netns(test: &'static str, body: impl FnOnce() + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let ns = fib::fib_netns();
    ns.run(body).expect("test body");
}

#[test]
fn non_vip_traffic_is_passed_untouched() {
    run_in_fib_netns("non_vip_traffic_is_passed_untouched", || {
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(
            runner.ebpf_mut(),
            &config(&vip_config(1009, &[(REALS4[0], 1, false)])),
        )
        .expect("apply");
        let vip_ip = [10, 100, 0, 100];
        for (dst, dport, l4) in [
            ([10, 100, 0, 100], 81, tcp(1000, 81, TCP_SYN, &[], b"")),
            ([10, 100, 0, 101], 80, tcp(1000, 80, TCP_SYN, &[], b"")),
            (vip_ip, 80, udp(1000, 80, b"not tcp")),
        ] {
            let _ = dport;
            let (frame, _) = eth_ipv4(&[], &Ipv4Opts::new(V4_CLIENT, dst), l4);
            let res = runner.run(&frame).expect("run");
            assert_eq!(res.action, XDP_PASS);
            assert_eq!(res.frame, frame);
        }
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::NewFlow), 0);
    });
}

/// `VIP_INDEX` (the direct-mapped copy of `VIPS`' keys) is a shortcut, `VIPS` the authority:
/// an apply gives each VIP key its slot; with the index emptied (as a new program's is until
/// its first apply) every frame gets the same verdict and bytes; and a slot naming a key
/// `VIPS` no longer has (a VIP removed in the middle of an apply) makes no new flow.
#[test]
fn vip_index_is_a_shortcut_to_vips() {
    run_in_fib_netns("vip_index_is_a_shortcut_to_vips", || {
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let reals: Vec<(&str, u32, bool)> = REALS4.iter().map(|r| (*r, 1, false)).collect();
        L4Dataplane::new()
            .apply(runner.ebpf_mut(), &config(&vip_config(1009, &reals)))
            .expect("apply");
        let key = |addr: [u8; 4], port| VipKey {
            addr: addr_words(addr16(IpAddr::from(addr)).0),
            port,
            proto: 6,
            family: FAMILY_V4,
        };
        let vip_key = key([10, 100, 0, 100], 80);
        let slot_of = |runner: &XdpRunner, key: &VipKey| -> VipSlot {
            let index: Array<&MapData, VipSlot> = runner
                .ebpf()
                .map(map_names::VIP_INDEX)
                .expect("VIP_INDEX")
                .try_into()
                .expect("array");
            index.get(&vip_index_slot(key), 0).expect("slot")
        };
        assert_eq!(
            slot_of(&runner, &vip_key).key,
            vip_key,
            "the VIP has its slot"
        );

        let frames: Vec<Vec<u8>> = (0..24u16)
            .map(|i| {
                let flags = if i % 2 == 0 { TCP_SYN } else { TCP_ACK };
                let l4 = tcp(42000 + i / 2, 80, flags, &[], b"x");
                eth_ipv4(&[], &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]), l4).0
            })
            .collect();
        let run_all = |runner: &mut XdpRunner| -> Vec<(u32, Vec<u8>)> {
            frames
                .iter()
                .map(|f| {
                    let res = runner.run(f).expect("run");
                    (res.action, res.frame)
                })
                .collect()
        };
        let with_index = run_all(&mut runner);
        assert!(with_index.iter().all(|(action, _)| *action == XDP_REDIRECT));
        let empty = |runner: &mut XdpRunner, slot: u32, value: VipSlot| {
            let mut index: Array<&mut MapData, VipSlot> = runner
                .ebpf_mut()
                .map_mut(map_names::VIP_INDEX)
                .expect("VIP_INDEX")
                .try_into()
                .expect("array");
            index.set(slot, value, 0).expect("set");
        };
        for slot in 0..VIP_INDEX_SLOTS {
            empty(&mut runner, slot, VipSlot::default());
        }
        assert_eq!(
            run_all(&mut runner),
            with_index,
            "same verdicts and frames from VIPS"
        );

        // A key only the index still names: host traffic, no flow.
        let gone = key([10, 100, 0, 150], 80);
        let vip_index = slot_of(&runner, &vip_key).index;
        empty(
            &mut runner,
            vip_index_slot(&gone),
            VipSlot {
                key: gone,
                index: vip_index,
                forward: 0,
            },
        );
        let (syn, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 150]),
            tcp(43000, 80, TCP_SYN, &[], b""),
        );
        let res = runner.run(&syn).expect("run");
        assert_eq!(res.action, XDP_PASS);
        assert_eq!(res.frame, syn);
    });
}

/// A TCP segment without SYN whose flow is not in the table (evicted, its real gone, from
/// before a restart) is hashed to the same real and remembered, but counted as a re-hash, not
/// as a new flow (issue 18: the demo's "new flows" were twice its SYNs).
#[test]
fn mid_flow_misses_are_rehashes_not_new_flows() {
    run_in_fib_netns("mid_flow_misses_are_rehashes_not_new_flows", || {
        let reals = [(REALS4[0], 1), (REALS4[1], 1)];
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(
            runner.ebpf_mut(),
            &config(&vip_config(1009, &reals.map(|(a, w)| (a, w, false)))),
        )
        .expect("apply");
        let vip: SocketAddr = VIP4.parse().expect("vip");
        let segment = |sport: u16, flags: u8| {
            eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(sport, 80, flags, &[], b"data"),
            )
            .0
        };
        // An ACK of a flow the table never saw, twice: the first re-hashed and remembered,
        // the second a table hit.
        for _ in 0..2 {
            let res = runner.run(&segment(41000, TCP_ACK)).expect("run");
            assert_eq!(res.action, XDP_REDIRECT);
        }
        let res = runner.run(&segment(41001, TCP_SYN)).expect("run");
        assert_eq!(res.action, XDP_REDIRECT);
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::MidFlowRehash), 1);
        assert_eq!(stats.event(L4Event::ConntrackHit), 1);
        assert_eq!(stats.event(L4Event::NewFlow), 1);
        assert_eq!(stats.vip(vip).new_flows, 1, "only the SYN opened a flow");
    });
}

#[test]
fn ipv4_encap_is_byte_exact_with_valid_checksums() {
    run_in_fib_netns("ipv4_encap_is_byte_exact_with_valid_checksums", || {
        let reals = [(REALS4[0], 1), (REALS4[1], 2), (REALS4[2], 3)];
        let text = vip_config(65537, &reals.map(|(a, w)| (a, w, false)));
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), &config(&text)).expect("apply");
        let vip: SocketAddr = VIP4.parse().expect("vip");

        for sport in [40000u16, 40001, 40002, 51234, 60000] {
            let (inner, _) = eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(sport, 80, TCP_SYN, &[2, 4, 5, 180], b""),
            );
            let flow = v4_flow(V4_CLIENT, sport, vip);
            let real = predicted_real(&flow, &reals, 65537);
            let hash = flow_hash(&flow, FLOW_HASH_SEED).to_be_bytes();

            let res = runner.run(&inner).expect("run");
            assert_eq!(res.action, XDP_REDIRECT, "redirected to g0");

            let ip_packet = &inner[14..];
            let IpAddr::V4(real_v4) = real else {
                panic!("v4 real")
            };
            let mut outer = vec![0x45, 0];
            outer.extend_from_slice(&((ip_packet.len() + 20) as u16).to_be_bytes());
            outer.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
            outer.extend_from_slice(&[172, 16, hash[2], hash[3]]);
            outer.extend_from_slice(&real_v4.octets());
            let sum = checksum(&[&outer]);
            outer[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut expected = fib::real_mac(real).to_vec();
            expected.extend_from_slice(&LB_MAC);
            expected.extend_from_slice(&[0x08, 0x00]);
            expected.extend_from_slice(&outer);
            expected.extend_from_slice(ip_packet);
            assert_eq!(res.frame, expected, "sport {sport} -> {real}");
            assert_eq!(checksum(&[&res.frame[14..34]]), 0, "outer header checksum");
        }
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::NewFlow), 5);
        assert_eq!(stats.event(L4Event::EncapRedirect), 5);
        assert_eq!(stats.vip(vip).new_flows, 5);
    });
}

#[test]
fn ipv6_encap_is_byte_exact() {
    run_in_fib_netns("ipv6_encap_is_byte_exact", || {
        let reals = [(REALS6[0], 1), (REALS6[1], 1)];
        let mut text = format!("[[vip]]\naddress = \"{VIP6}\"\nring_size = 1009\n");
        for (addr, _) in reals {
            text.push_str(&format!("[[vip.real]]\naddress = \"{addr}\"\n"));
        }
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), &config(&text)).expect("apply");
        let vip: SocketAddr = VIP6.parse().expect("vip");
        let IpAddr::V6(vip_ip) = vip.ip() else {
            panic!("v6")
        };
        let client: SocketAddr = "[fd00::1]:43210".parse().expect("client");
        let (frame, _) = eth_ipv6(
            &[],
            V6_CLIENT,
            vip_ip.octets(),
            &[],
            tcp(43210, 443, TCP_SYN, &[], b""),
        );
        let flow = flow_key(client, vip, Protocol::Tcp);
        let real = predicted_real(&flow, &reals, 1009);
        let hash = flow_hash(&flow, FLOW_HASH_SEED).to_be_bytes();
        let res = runner.run(&frame).expect("run");
        assert_eq!(res.action, XDP_REDIRECT);
        let ip_packet = &frame[14..];
        let IpAddr::V6(real_v6) = real else {
            panic!("v6 real")
        };
        let mut expected = fib::real_mac(real).to_vec();
        expected.extend_from_slice(&LB_MAC);
        expected.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        expected.extend_from_slice(&(ip_packet.len() as u16).to_be_bytes());
        expected.extend_from_slice(&[41, 64]);
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[11] = 1;
        src[12..].copy_from_slice(&hash);
        expected.extend_from_slice(&src);
        expected.extend_from_slice(&real_v6.octets());
        expected.extend_from_slice(ip_packet);
        assert_eq!(res.frame, expected);
    });
}

#[test]
fn established_flows_keep_their_real_across_a_table_swap_and_rehash_when_it_goes_down() {
    run_in_fib_netns("established_flows_keep_their_real", || {
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        let all = [(REALS4[0], 1), (REALS4[1], 1), (REALS4[2], 1)];
        dp.apply(
            runner.ebpf_mut(),
            &config(&vip_config(1009, &all.map(|(a, w)| (a, w, false)))),
        )
        .expect("apply");
        let vip: SocketAddr = VIP4.parse().expect("vip");
        let syn = |sport| {
            eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(sport, 80, TCP_SYN, &[], b""),
            )
            .0
        };
        let data = |sport| {
            eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(sport, 80, TCP_ACK, &[], b"payload"),
            )
            .0
        };
        // Open 30 flows and remember where each went.
        let mut placed = Vec::new();
        for sport in 20000..20030u16 {
            let res = runner.run(&syn(sport)).expect("run");
            assert_eq!(res.action, XDP_REDIRECT);
            placed.push((sport, outer_dst_v4(&res.frame)));
        }
        let (_, victim) = placed[0];
        let victim_str = victim.to_string();

        // Weight 0 for one real: the swapped ring gives it no new flows, but its
        // established flows stay (drain).
        let drained: Vec<_> = all
            .iter()
            .map(|(a, w)| (*a, if *a == victim_str { 0 } else { *w }, false))
            .collect();
        let report = dp
            .apply(runner.ebpf_mut(), &config(&vip_config(1009, &drained)))
            .expect("apply");
        assert_eq!(report.rings_rebuilt, 1);
        for (sport, real) in &placed {
            let res = runner.run(&data(*sport)).expect("run");
            assert_eq!(
                outer_dst_v4(&res.frame),
                *real,
                "flow {sport} kept its real"
            );
        }
        for sport in 30000..30100u16 {
            let res = runner.run(&syn(sport)).expect("run");
            assert_ne!(
                outer_dst_v4(&res.frame),
                victim,
                "new flow {sport} avoided the drained real"
            );
        }

        // Down: its established flows are re-hashed onto the others; the rest stay put.
        let down: Vec<_> = all
            .iter()
            .map(|(a, w)| (*a, *w, *a == victim_str))
            .collect();
        dp.apply(runner.ebpf_mut(), &config(&vip_config(1009, &down)))
            .expect("apply");
        let mut rehashed = 0;
        for (sport, real) in &placed {
            let res = runner.run(&data(*sport)).expect("run");
            let now = outer_dst_v4(&res.frame);
            if *real == victim {
                assert_ne!(now, victim, "flow {sport} left the down real");
                rehashed += 1;
            } else {
                assert_eq!(now, *real, "flow {sport} on a healthy real stayed");
            }
        }
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert!(rehashed > 0);
        assert_eq!(stats.event(L4Event::RealDownRehash), rehashed);
        assert_eq!(
            stats.real(vip, victim).new_flows as usize,
            placed.iter().filter(|p| p.1 == victim).count()
        );
    });
}

#[test]
fn local_vip_passes_and_tags_new_flows() {
    run_in_fib_netns("local_vip_passes_and_tags_new_flows", || {
        let text = format!(
            "[[vip]]\naddress = \"{VIP4}\"\nforward = \"local\"\nring_size = 1009\n[[vip.real]]\naddress = \"127.0.0.1\"\n"
        );
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), &config(&text)).expect("apply");
        let vip: SocketAddr = VIP4.parse().expect("vip");
        let client: SocketAddr = "10.0.0.1:41000".parse().expect("client");
        assert_eq!(
            lookup_flow_tag(runner.ebpf(), client, vip, Protocol::Tcp).expect("lookup"),
            None
        );
        let (frame, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(41000, 80, TCP_SYN, &[], b""),
        );
        let res = runner.run(&frame).expect("run");
        assert_eq!(res.action, XDP_PASS);
        assert_eq!(res.frame, frame, "local hand-off leaves the packet alone");
        let tag = lookup_flow_tag(runner.ebpf(), client, vip, Protocol::Tcp)
            .expect("lookup")
            .expect("tag recorded");
        assert_eq!(tag.client, client);
        assert_eq!(tag.vip, vip);
        assert_eq!(tag.target, "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_ne!(tag.flow_id, 0);
        // Later packets of the flow keep the same tag (same flow id).
        let (ack, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(41000, 80, TCP_ACK, &[], b"x"),
        );
        runner.run(&ack).expect("run");
        let again = lookup_flow_tag(runner.ebpf(), client, vip, Protocol::Tcp)
            .expect("lookup")
            .expect("tag");
        assert_eq!(again.flow_id, tag.flow_id);
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::LocalPassed), 2);
        assert_eq!(stats.vip(vip).new_flows, 1);
    });
}

/// The L7 tier's flow-tag lookups (`FlowTags`, one syscall each) are made only for connections
/// accepted on a `local` VIP: a connection to any other address, an `encap` VIP's included,
/// is answered without one, while a local VIP's connection still gets its flow's id.
#[test]
fn flow_tags_looks_up_local_vips_only() {
    run_in_fib_netns("flow_tags_looks_up_local_vips_only", || {
        let text = format!(
            "[[vip]]\naddress = \"{VIP4}\"\nforward = \"local\"\nring_size = 1009\n[[vip.real]]\naddress = \"127.0.0.1\"\n\
             [[vip]]\naddress = \"10.100.0.101:80\"\nring_size = 1009\n[[vip.real]]\naddress = \"10.201.0.2\"\n"
        );
        let l4 = config(&text);
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        L4Dataplane::new()
            .apply(runner.ebpf_mut(), &l4)
            .expect("apply");
        let (syn, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(41000, 80, TCP_SYN, &[], b""),
        );
        assert_eq!(runner.run(&syn).expect("run").action, XDP_PASS);
        let client: SocketAddr = "10.0.0.1:41000".parse().expect("client");
        let vip: SocketAddr = VIP4.parse().expect("vip");
        let recorded = lookup_flow_tag(runner.ebpf(), client, vip, Protocol::Tcp)
            .expect("lookup")
            .expect("tag recorded");

        let tags = FlowTags::open(runner.ebpf()).expect("open");
        // Before the VIPs are known, nothing is looked up.
        assert_eq!(tags.tcp_flow_id(client, vip), None);
        assert_eq!(tags.lookups(), 0);
        tags.set_local_vips(&l4);
        for other in [
            "10.100.0.101:80",  // an encap VIP
            "10.100.0.100:81",  // the local VIP's address, another port
            "192.0.2.7:80",     // a plain listener address
            "[2001:db8::1]:80", // IPv6
        ] {
            let other: SocketAddr = other.parse().expect("addr");
            assert_eq!(tags.tcp_flow_id(client, other), None, "{other}");
        }
        assert_eq!(
            tags.lookups(),
            0,
            "no lookup for addresses that are no local VIP"
        );
        assert_eq!(tags.tcp_flow_id(client, vip), Some(recorded.flow_id));
        // A dual-stack socket sees the VIP as an IPv4-mapped address: still the VIP.
        let mapped: SocketAddr = "[::ffff:10.100.0.100]:80".parse().expect("mapped");
        let mapped_client: SocketAddr = "[::ffff:10.0.0.1]:41000".parse().expect("mapped");
        assert_eq!(
            tags.tcp_flow_id(mapped_client, mapped),
            Some(recorded.flow_id)
        );
        assert_eq!(tags.lookups(), 2);
        // A reload without local VIPs stops the lookups.
        tags.set_local_vips(&config(""));
        assert_eq!(tags.tcp_flow_id(client, vip), None);
        assert_eq!(tags.lookups(), 2);
    });
}

#[test]
fn fragments_of_one_datagram_go_to_one_real() {
    run_in_fib_netns("fragments_of_one_datagram_go_to_one_real", || {
        let reals = [(REALS4[0], 1), (REALS4[1], 1), (REALS4[2], 1)];
        let mut text =
            "[[vip]]\naddress = \"10.100.0.100:53\"\nprotocol = \"udp\"\nring_size = 1009\n"
                .to_owned();
        for (addr, _) in reals {
            text.push_str(&format!("[[vip.real]]\naddress = \"{addr}\"\n"));
        }
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), &config(&text)).expect("apply");
        for client_last in 1..=20u8 {
            let client = [10, 0, 0, client_last];
            let mut first = Ipv4Opts::new(client, [10, 100, 0, 100]);
            first.frag_field = 0x2000;
            let mut seg = udp(5000, 53, &[0u8; 64]);
            seg.bytes[4..6].copy_from_slice(&2000u16.to_be_bytes());
            let (first_frame, _) = eth_ipv4(&[], &first, seg);
            let mut later = Ipv4Opts::new(client, [10, 100, 0, 100]);
            later.frag_field = 9;
            let (later_frame, _) = eth_ipv4(&[], &later, raw(IPPROTO_UDP, &[0u8; 64]));
            let a = runner.run(&first_frame).expect("run");
            let b = runner.run(&later_frame).expect("run");
            assert_eq!(a.action, XDP_REDIRECT);
            assert_eq!(b.action, XDP_REDIRECT);
            let flow = FlowKey {
                src: addr_words(addr16(IpAddr::from(client)).0),
                dst: addr_words(addr16(IpAddr::from([10, 100, 0, 100])).0),
                src_port: 0,
                dst_port: 0,
                proto: IPPROTO_UDP,
                family: 4,
                _pad: [0; 2],
            };
            let expected = predicted_real(&flow, &reals, 1009);
            assert_eq!(outer_dst_v4(&a.frame), expected);
            assert_eq!(outer_dst_v4(&b.frame), expected);
        }
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::VipFragment), 40);
    });
}

#[test]
fn vip_without_reals_drops_and_unroutable_real_is_passed_encapsulated() {
    run_in_fib_netns("vip_without_reals_drops", || {
        let text = "[[vip]]\naddress = \"10.100.0.100:80\"\nring_size = 1009\n\
                    [[vip]]\naddress = \"10.100.0.101:80\"\nring_size = 1009\n\
                    [[vip.real]]\naddress = \"10.99.0.2\"\n";
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), &config(text)).expect("apply");
        let (frame, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(1, 80, TCP_SYN, &[], b""),
        );
        assert_eq!(runner.run(&frame).expect("run").action, XDP_DROP);

        // No route to 10.99.0.2: the stack gets the encapsulated packet (it answers with ICMP
        // or routes it once a route exists), still addressed to this host's MAC.
        let (frame, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 101]),
            tcp(1, 80, TCP_SYN, &[], b""),
        );
        let res = runner.run(&frame).expect("run");
        assert_eq!(res.action, XDP_PASS);
        assert_eq!(&res.frame[..12], &frame[..12], "original MACs kept");
        assert_eq!(res.frame[23], 4, "IPIP");
        assert_eq!(outer_dst_v4(&res.frame), IpAddr::from([10, 99, 0, 2]));
        assert_eq!(&res.frame[34..], &frame[14..]);
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::NoRealDropped), 1);
        assert_eq!(stats.event(L4Event::EncapFibPassed), 1);
    });
}

#[test]
fn removed_vip_stops_matching() {
    run_in_fib_netns("removed_vip_stops_matching", || {
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(
            runner.ebpf_mut(),
            &config(&vip_config(1009, &[(REALS4[0], 1, false)])),
        )
        .expect("apply");
        let (frame, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(1, 80, TCP_SYN, &[], b""),
        );
        assert_eq!(runner.run(&frame).expect("run").action, XDP_REDIRECT);
        let report = dp.apply(runner.ebpf_mut(), &config("")).expect("apply");
        assert_eq!(report.vips_removed, 1);
        let res = runner.run(&frame).expect("run");
        assert_eq!(res.action, XDP_PASS);
        assert_eq!(res.frame, frame);
    });
}

/// An ICMP error quoting the real's reply (VIP:80 -> client:port), as a router on the
/// return path would send it, to the VIP.
fn icmp_quoting(kind: u8, code: u8, client: [u8; 4], client_port: u16) -> Vec<u8> {
    let (quoted, _) = ipv4(
        &Ipv4Opts::new([10, 100, 0, 100], client),
        tcp(80, client_port, TCP_ACK, &[], &[0u8; 1400]),
    );
    let mut msg = vec![kind, code, 0, 0, 0, 0];
    msg.extend_from_slice(&1400u16.to_be_bytes());
    msg.extend_from_slice(&quoted[..28]);
    let sum = checksum(&[&msg]);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    eth_ipv4(
        &[],
        &Ipv4Opts::new([10, 9, 9, 9], [10, 100, 0, 100]),
        raw(IPPROTO_ICMP, &msg),
    )
    .0
}

#[test]
fn icmp_frag_needed_about_a_vip_flow_goes_to_its_real() {
    run_in_fib_netns("icmp_frag_needed_about_a_vip_flow_goes_to_its_real", || {
        let reals = [(REALS4[0], 1), (REALS4[1], 1), (REALS4[2], 1)];
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(
            runner.ebpf_mut(),
            &config(&vip_config(1009, &reals.map(|(a, w)| (a, w, false)))),
        )
        .expect("apply");
        for sport in [33000u16, 33001, 33002, 33003] {
            let (syn, _) = eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(sport, 80, TCP_SYN, &[], b""),
            );
            let flow_real = outer_dst_v4(&runner.run(&syn).expect("run").frame);
            let icmp = icmp_quoting(3, 4, V4_CLIENT, sport);
            let res = runner.run(&icmp).expect("run");
            assert_eq!(res.action, XDP_REDIRECT);
            assert_eq!(
                outer_dst_v4(&res.frame),
                flow_real,
                "PTB follows flow {sport}"
            );
            assert_eq!(&res.frame[34..], &icmp[14..], "ICMP carried unchanged");
        }
        // Other ICMP to the VIP (echo, port unreachable) is the host's business.
        for (kind, code) in [(8u8, 0u8), (3, 3)] {
            let frame = icmp_quoting(kind, code, V4_CLIENT, 33000);
            let res = runner.run(&frame).expect("run");
            assert_eq!((res.action, res.frame), (XDP_PASS, frame));
        }
        let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
        assert_eq!(stats.event(L4Event::IcmpPtbForwarded), 4);
    });
}

#[test]
fn decap_strips_exactly_what_encap_added() {
    run_in_fib_netns("decap_strips_exactly_what_encap_added", || {
        let mut lb = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(
            lb.ebpf_mut(),
            &config(&vip_config(1009, &[(REALS4[0], 1, false)])),
        )
        .expect("apply");
        let mut decap = XdpRunner::load(program_names::DECAP).expect("load decap");
        let (original, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
            tcp(1234, 80, TCP_SYN, &[], b"hello"),
        );
        let encapsulated = lb.run(&original).expect("encap").frame;
        let res = decap.run(&encapsulated).expect("decap");
        assert_eq!(res.action, XDP_PASS);
        assert_eq!(&res.frame[12..], &original[12..], "inner packet restored");
        assert_eq!(
            &res.frame[..12],
            &encapsulated[..12],
            "MACs of the received frame kept"
        );
        // Anything else is not touched.
        let res = decap.run(&original).expect("decap");
        assert_eq!((res.action, res.frame), (XDP_PASS, original));
    });
}

#[test]
fn a_full_connection_table_degrades_to_hashing_not_drops() {
    run_in_fib_netns(
        "a_full_connection_table_degrades_to_hashing_not_drops",
        || {
            let reals = [(REALS4[0], 1), (REALS4[1], 1), (REALS4[2], 1)];
            let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
            let mut dp = L4Dataplane::new();
            dp.apply(
                runner.ebpf_mut(),
                &config(&vip_config(1009, &reals.map(|(a, w)| (a, w, false)))),
            )
            .expect("apply");
            let vip: SocketAddr = VIP4.parse().expect("vip");
            let capacity = lb_common::l4::CONNTRACK_CAPACITY;
            let (mut frame, layout) = eth_ipv4(
                &[],
                &Ipv4Opts::new(V4_CLIENT, [10, 100, 0, 100]),
                tcp(1, 80, TCP_SYN, &[], b""),
            );
            // 1.5x the table's capacity of distinct flows (client address and port varied in
            // place; checksums are not checked on this path).
            let flows = capacity + capacity / 2;
            for n in 0..flows {
                let addr = [10, 0, 0, (n >> 16) as u8];
                frame[layout.l3 + 12..layout.l3 + 16].copy_from_slice(&addr);
                frame[layout.l4..layout.l4 + 2].copy_from_slice(&(n as u16).to_be_bytes());
                let res = runner.run(&frame).expect("run");
                assert_eq!(res.action, XDP_REDIRECT, "flow {n}");
                let client = SocketAddr::from((addr, n as u16));
                let expected = predicted_real(&flow_key(client, vip, Protocol::Tcp), &reals, 1009);
                assert_eq!(outer_dst_v4(&res.frame), expected, "flow {n}");
            }
            let stats = read_l4_stats(runner.ebpf(), &dp).expect("stats");
            assert_eq!(stats.event(L4Event::NewFlow), u64::from(flows));
            assert_eq!(stats.event(L4Event::NoRealDropped), 0);
            assert_eq!(stats.event(L4Event::ConntrackInsertFailed), 0);
        },
    );
}
