//! The XDP parser and counters, run in the kernel through BPF_PROG_TEST_RUN on hand-made frames.
//!
//! Every frame must land in exactly one primary class or one malformed reason. No VIPs are
//! configured here, so well-formed frames are passed unchanged and malformed ones dropped.
use lb_common::{Malformed, PacketClass, program_names};
use lb_tests::{
    netns::require_root,
    packets::*,
    xdp_run::{XDP_DROP, XDP_PASS, XdpRunner},
};

const PRIMARY: [PacketClass; 7] = [
    PacketClass::NonIp,
    PacketClass::Ipv4Tcp,
    PacketClass::Ipv4Udp,
    PacketClass::Ipv4Other,
    PacketClass::Ipv6Tcp,
    PacketClass::Ipv6Udp,
    PacketClass::Ipv6Other,
];

/// What one frame did to the counters.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Class(PacketClass),
    Malformed(Malformed),
}

struct Seen {
    outcome: Outcome,
    stats: lb::xdp::XdpStats,
}

/// Runs `frame` through a freshly loaded program and checks the invariants every frame obeys:
/// exactly one primary class (then passed unchanged) or one malformed reason (then dropped).
fn run_one(frame: &[u8]) -> Seen {
    thread_local! {
        static RUNNER: std::cell::RefCell<Option<XdpRunner>> = const { std::cell::RefCell::new(None) };
    }
    RUNNER.with_borrow_mut(|slot| {
        let runner = match slot {
            Some(runner) => {
                runner.reset_counters().expect("reset counters");
                runner
            }
            None => slot.insert(XdpRunner::load(program_names::LB_XDP).expect("load lb_xdp")),
        };
        check_one(runner, frame)
    })
}

fn check_one(runner: &mut XdpRunner, frame: &[u8]) -> Seen {
    let res = runner.run(frame).expect("test run");
    let stats = runner.stats().expect("stats");
    let classes: Vec<_> = PRIMARY
        .iter()
        .filter(|c| stats.class(**c) > 0)
        .copied()
        .collect();
    let malformed: Vec<_> = Malformed::ALL
        .iter()
        .filter(|r| stats.malformed(**r) > 0)
        .copied()
        .collect();
    let outcome = match (classes.as_slice(), malformed.as_slice()) {
        ([c], []) => {
            assert_eq!(stats.class(*c), 1);
            assert_eq!(
                res.action, XDP_PASS,
                "well-formed non-VIP frames are passed"
            );
            assert_eq!(res.frame, frame, "and not modified");
            Outcome::Class(*c)
        }
        ([], [r]) => {
            assert_eq!(stats.malformed(*r), 1);
            assert_eq!(res.action, XDP_DROP, "malformed frames are dropped");
            Outcome::Malformed(*r)
        }
        _ => {
            panic!("expected exactly one outcome, got classes {classes:?} malformed {malformed:?}")
        }
    };
    Seen { outcome, stats }
}

fn v4() -> Ipv4Opts {
    Ipv4Opts::new(V4_CLIENT, V4_SERVER)
}

#[test]
fn ipv4_tcp_syn_counts_port_class_and_logs_the_connection() {
    if !require_root("ipv4_tcp_syn_counts_port_class_and_logs_the_connection") {
        return;
    }
    let (frame, _) = eth_ipv4(&[], &v4(), tcp(40000, 80, TCP_SYN, &[], b""));
    let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
    let mut logs = runner.capture_logs().expect("logs");
    assert_eq!(runner.run(&frame).expect("run").action, XDP_PASS);
    let stats = runner.stats().expect("stats");
    let port = stats.port(IPPROTO_TCP, 80);
    assert_eq!(port.packets, 1);
    assert_eq!(port.bytes, frame.len() as u64);
    assert_eq!(stats.class(PacketClass::Ipv4Tcp), 1);
    assert_eq!(stats.class(PacketClass::TcpSyn), 1);
    assert_eq!(stats.ports.len(), 1, "only the destination port is counted");
    assert_eq!(
        logs.lines(),
        vec!["new TCP connection 10.0.0.1:40000 -> 10.0.0.2:80".to_owned()]
    );
}

#[test]
fn mid_flow_tcp_is_counted_but_not_logged_as_new() {
    if !require_root("mid_flow_tcp_is_counted_but_not_logged_as_new") {
        return;
    }
    let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
    let mut logs = runner.capture_logs().expect("logs");
    let syn_ack = eth_ipv4(&[], &v4(), tcp(80, 40000, TCP_SYN | TCP_ACK, &[], b"")).0;
    let data = eth_ipv4(
        &[],
        &v4(),
        tcp(40000, 80, TCP_ACK | TCP_PSH, &[], b"GET / HTTP/1.1\r\n\r\n"),
    )
    .0;
    runner.run(&syn_ack).expect("run");
    runner.run(&data).expect("run");
    runner.run(&data).expect("run");
    let stats = runner.stats().expect("stats");
    assert_eq!(stats.class(PacketClass::TcpSyn), 0);
    assert_eq!(stats.class(PacketClass::Ipv4Tcp), 3);
    assert_eq!(stats.port(IPPROTO_TCP, 40000).packets, 1);
    let port80 = stats.port(IPPROTO_TCP, 80);
    assert_eq!((port80.packets, port80.bytes), (2, 2 * data.len() as u64));
    assert!(logs.lines().is_empty());
}

#[test]
fn ipv4_udp() {
    if !require_root("ipv4_udp") {
        return;
    }
    let (frame, _) = eth_ipv4(&[], &v4(), udp(5353, 53, b"query"));
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv4Udp));
    assert_eq!(seen.stats.port(IPPROTO_UDP, 53).bytes, frame.len() as u64);
}

#[test]
fn ipv6_tcp_and_udp() {
    if !require_root("ipv6_tcp_and_udp") {
        return;
    }
    let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
    let mut logs = runner.capture_logs().expect("logs");
    let syn = eth_ipv6(
        &[],
        V6_CLIENT,
        V6_SERVER,
        &[],
        tcp(40001, 443, TCP_SYN, &[], b""),
    )
    .0;
    let dgram = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &[], udp(40002, 443, b"quic")).0;
    runner.run(&syn).expect("run");
    runner.run(&dgram).expect("run");
    let stats = runner.stats().expect("stats");
    assert_eq!(stats.class(PacketClass::Ipv6Tcp), 1);
    assert_eq!(stats.class(PacketClass::Ipv6Udp), 1);
    assert_eq!(stats.port(IPPROTO_TCP, 443).bytes, syn.len() as u64);
    assert_eq!(stats.port(IPPROTO_UDP, 443).bytes, dgram.len() as u64);
    assert_eq!(
        logs.lines(),
        vec!["new TCP connection [fd00::1]:40001 -> [fd00::2]:443".to_owned()]
    );
}

#[test]
fn vlan_tagged_frames_are_parsed_through_one_or_two_tags() {
    if !require_root("vlan_tagged_frames_are_parsed_through_one_or_two_tags") {
        return;
    }
    for tags in [
        &[ETH_P_8021Q][..],
        &[ETH_P_8021AD, ETH_P_8021Q][..],
        &[ETH_P_8021Q, ETH_P_8021Q][..],
    ] {
        let (frame, _) = eth_ipv4(tags, &v4(), tcp(1234, 8080, TCP_SYN, &[], b""));
        let seen = run_one(&frame);
        assert_eq!(
            seen.outcome,
            Outcome::Class(PacketClass::Ipv4Tcp),
            "tags {tags:x?}"
        );
        assert_eq!(seen.stats.port(IPPROTO_TCP, 8080).packets, 1);
        let (frame, _) = eth_ipv6(tags, V6_CLIENT, V6_SERVER, &[], udp(1, 53, b"x"));
        assert_eq!(
            run_one(&frame).outcome,
            Outcome::Class(PacketClass::Ipv6Udp)
        );
    }
    let (frame, _) = eth_ipv4(
        &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        &v4(),
        tcp(1, 2, TCP_SYN, &[], b""),
    );
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::VlanTruncated)
    );
}

#[test]
fn non_ip_and_other_l4_protocols() {
    if !require_root("non_ip_and_other_l4_protocols") {
        return;
    }
    let arp = ethernet(&[], ETH_P_ARP, &[0u8; 28]);
    assert_eq!(run_one(&arp).outcome, Outcome::Class(PacketClass::NonIp));
    let (icmp, _) = eth_ipv4(&[], &v4(), raw(IPPROTO_ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]));
    let seen = run_one(&icmp);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv4Other));
    assert!(seen.stats.ports.is_empty());
    let (icmp6, _) = eth_ipv6(
        &[],
        V6_CLIENT,
        V6_SERVER,
        &[],
        raw(58, &[128, 0, 0, 0, 0, 1, 0, 1]),
    );
    assert_eq!(
        run_one(&icmp6).outcome,
        Outcome::Class(PacketClass::Ipv6Other)
    );
}

#[test]
fn ipv4_options_of_every_length_are_skipped() {
    if !require_root("ipv4_options_of_every_length_are_skipped") {
        return;
    }
    // IHL 6..=15: 4 to 40 bytes of options (NOPs, then end-of-options).
    for words in 1..=10usize {
        let mut ip = v4();
        ip.options = vec![1u8; words * 4 - 1];
        ip.options.push(0);
        let (frame, layout) = eth_ipv4(&[], &ip, tcp(999, 2000 + words as u16, TCP_SYN, &[], b""));
        assert_eq!(layout.l4, 14 + 20 + words * 4);
        let seen = run_one(&frame);
        assert_eq!(
            seen.outcome,
            Outcome::Class(PacketClass::Ipv4Tcp),
            "{words} option words"
        );
        assert_eq!(seen.stats.port(IPPROTO_TCP, 2000 + words as u16).packets, 1);
    }
}

#[test]
fn bad_ipv4_version_and_ihl() {
    if !require_root("bad_ipv4_version_and_ihl") {
        return;
    }
    let (good, layout) = eth_ipv4(&[], &v4(), tcp(1, 80, TCP_SYN, &[], b""));
    for ihl in 0..5u8 {
        let mut frame = good.clone();
        frame[layout.l3] = 0x40 | ihl;
        assert_eq!(
            run_one(&frame).outcome,
            Outcome::Malformed(Malformed::Ipv4BadIhl),
            "ihl {ihl}"
        );
    }
    let mut frame = good.clone();
    frame[layout.l3] = 0x65;
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::Ipv4BadVersion)
    );
    // IHL 15 on a frame that has no options: the options would run past the end.
    let mut frame = good.clone();
    frame[layout.l3] = 0x4f;
    frame.truncate(layout.l3 + 40);
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::Ipv4OptionsTruncated)
    );
    // Total length smaller than the header.
    let mut frame = good.clone();
    frame[layout.l3 + 2..layout.l3 + 4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::Ipv4BadTotalLength)
    );
    // IPv6 EtherType with a version-4 header.
    let mut frame = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &[], udp(1, 2, b"")).0;
    frame[14] = 0x40;
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::Ipv6BadVersion)
    );
}

#[test]
fn ipv4_fragments_first_has_ports_later_ones_do_not() {
    if !require_root("ipv4_fragments_first_has_ports_later_ones_do_not") {
        return;
    }
    let mut first = v4();
    first.frag_field = 0x2000; // MF, offset 0
    // The first fragment carries the UDP length of the whole datagram (larger than its payload).
    let mut seg = udp(7000, 7001, &[0u8; 64]);
    seg.bytes[4..6].copy_from_slice(&3000u16.to_be_bytes());
    let (frame, _) = eth_ipv4(&[], &first, seg);
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv4Udp));
    assert_eq!(seen.stats.class(PacketClass::Ipv4Fragment), 1);
    assert_eq!(seen.stats.port(IPPROTO_UDP, 7001).packets, 1);

    for (field, what) in [(0x2000 | 185, "middle"), (185, "last")] {
        let mut later = v4();
        later.frag_field = field;
        let (frame, _) = eth_ipv4(&[], &later, raw(IPPROTO_UDP, &[0xee; 64]));
        let seen = run_one(&frame);
        assert_eq!(
            seen.outcome,
            Outcome::Class(PacketClass::Ipv4Other),
            "{what}"
        );
        assert_eq!(seen.stats.class(PacketClass::Ipv4Fragment), 1, "{what}");
        assert!(
            seen.stats.ports.is_empty(),
            "{what}: payload bytes are not ports"
        );
    }
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    if !require_root("ipv6_extension_headers_and_fragments") {
        return;
    }
    let chain = [
        Ext::opts(IPPROTO_HOPOPTS, 0),
        Ext::opts(IPPROTO_DSTOPTS, 2),
        Ext::opts(IPPROTO_ROUTING, 1),
    ];
    let (frame, _) = eth_ipv6(
        &[],
        V6_CLIENT,
        V6_SERVER,
        &chain,
        tcp(5, 6006, TCP_SYN, &[], b""),
    );
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv6Tcp));
    assert_eq!(seen.stats.port(IPPROTO_TCP, 6006).packets, 1);
    assert_eq!(seen.stats.class(PacketClass::Ipv6Fragment), 0);

    let first = [Ext::fragment(0, true)];
    let (frame, _) = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &first, udp(5, 6007, &[1; 32]));
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv6Udp));
    assert_eq!(seen.stats.class(PacketClass::Ipv6Fragment), 1);
    assert_eq!(seen.stats.port(IPPROTO_UDP, 6007).packets, 1);

    let later = [Ext::fragment(5, false)];
    let (frame, _) = eth_ipv6(
        &[],
        V6_CLIENT,
        V6_SERVER,
        &later,
        raw(IPPROTO_UDP, &[0xee; 32]),
    );
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv6Other));
    assert_eq!(seen.stats.class(PacketClass::Ipv6Fragment), 1);
    assert!(seen.stats.ports.is_empty());

    // Six extension headers are walked; a seventh is more than we follow: legal IPv6, so it
    // is passed without ports rather than dropped.
    let six: Vec<_> = (0..6).map(|_| Ext::opts(IPPROTO_DSTOPTS, 0)).collect();
    let (frame, _) = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &six, udp(5, 6008, b""));
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Class(PacketClass::Ipv6Udp)
    );
    let seven: Vec<_> = (0..7).map(|_| Ext::opts(IPPROTO_DSTOPTS, 0)).collect();
    let (frame, _) = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &seven, udp(5, 6008, b""));
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv6Other));
    assert!(seen.stats.ports.is_empty());

    // An extension header whose length runs past the payload is malformed.
    let hbh = [Ext::opts(IPPROTO_HOPOPTS, 0)];
    let mut long = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &hbh, udp(5, 6009, b"")).0;
    long[14 + 40 + 1] = 4; // hop-by-hop length: 40 bytes, more than the 16-byte payload
    assert_eq!(
        run_one(&long).outcome,
        Outcome::Malformed(Malformed::Ipv6ExtTruncated)
    );
}

#[test]
fn bad_l4_headers() {
    if !require_root("bad_l4_headers") {
        return;
    }
    let (good, layout) = eth_ipv4(&[], &v4(), tcp(1, 80, TCP_SYN, &[], b"payload!"));
    for doff in 0..5u8 {
        let mut frame = good.clone();
        frame[layout.l4 + 12] = doff << 4;
        assert_eq!(
            run_one(&frame).outcome,
            Outcome::Malformed(Malformed::TcpBadDataOffset),
            "data offset {doff}"
        );
    }
    // Data offset 15 (60 bytes) with only 28 bytes of TCP segment.
    let mut frame = good.clone();
    frame[layout.l4 + 12] = 0xf0;
    assert_eq!(
        run_one(&frame).outcome,
        Outcome::Malformed(Malformed::TcpBadDataOffset)
    );

    let (good, layout) = eth_ipv4(&[], &v4(), udp(1, 53, b"abcd"));
    for (len, what) in [(7u16, "below header size"), (13, "beyond IP payload")] {
        let mut frame = good.clone();
        frame[layout.l4 + 4..layout.l4 + 6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            run_one(&frame).outcome,
            Outcome::Malformed(Malformed::UdpBadLength),
            "{what}"
        );
    }
}

#[test]
fn ethernet_padding_after_the_ip_packet_is_ignored() {
    if !require_root("ethernet_padding_after_the_ip_packet_is_ignored") {
        return;
    }
    // A 54-byte TCP SYN padded to the 60-byte Ethernet minimum.
    let (mut frame, _) = eth_ipv4(&[], &v4(), tcp(1, 80, TCP_SYN, &[], b""));
    frame.resize(60, 0);
    let seen = run_one(&frame);
    assert_eq!(seen.outcome, Outcome::Class(PacketClass::Ipv4Tcp));
    assert_eq!(seen.stats.port(IPPROTO_TCP, 80).bytes, 60);
}

/// A frame cut short anywhere is counted under the reason for the header the cut falls in
/// (first variant: IP length fields untouched, so the IP layer notices; second: IP lengths
/// rewritten to match the cut, so the L4 layer must notice on its own).
#[test]
fn truncation_at_every_byte_is_counted_by_reason() {
    if !require_root("truncation_at_every_byte_is_counted_by_reason") {
        return;
    }
    let mut opts_ip = v4();
    opts_ip.options = vec![1, 1, 1, 0];
    let tcp_opts = [2u8, 4, 0x05, 0xb4]; // MSS
    // (name, frame, layout, is IPv4, is TCP)
    let cases: Vec<(&str, Vec<u8>, Layout, bool, bool)> = vec![
        {
            let (f, l) = eth_ipv4(&[], &v4(), tcp(1, 80, TCP_SYN, &tcp_opts, b""));
            ("v4 tcp", f, l, true, true)
        },
        {
            let (f, l) = eth_ipv4(&[ETH_P_8021AD, ETH_P_8021Q], &opts_ip, udp(1, 53, b"q"));
            ("qinq v4+opts udp", f, l, true, false)
        },
        {
            let (f, l) = eth_ipv6(
                &[ETH_P_8021Q],
                V6_CLIENT,
                V6_SERVER,
                &[],
                tcp(1, 80, TCP_SYN, &tcp_opts, b""),
            );
            ("vlan v6 tcp", f, l, false, true)
        },
        {
            let ext = [Ext::opts(IPPROTO_HOPOPTS, 0)];
            let (f, l) = eth_ipv6(&[], V6_CLIENT, V6_SERVER, &ext, udp(1, 53, b"q"));
            ("v6+hbh udp", f, l, false, false)
        },
    ];
    for (name, frame, layout, is_v4, is_tcp) in cases {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as NICs do.
        for cut in 14..frame.len() {
            let cut_frame = &frame[..cut];
            let in_vlan = cut < layout.l3;
            let fixed_ip = if is_v4 { 20 } else { 40 };
            let expected_raw = if in_vlan {
                Malformed::VlanTruncated
            } else if cut < layout.l3 + fixed_ip {
                if is_v4 {
                    Malformed::Ipv4Truncated
                } else {
                    Malformed::Ipv6Truncated
                }
            } else if is_v4 && cut < layout.l4 {
                Malformed::Ipv4OptionsTruncated
            } else if is_v4 {
                Malformed::Ipv4BadTotalLength
            } else {
                Malformed::Ipv6BadPayloadLength
            };
            assert_eq!(
                run_one(cut_frame).outcome,
                Outcome::Malformed(expected_raw),
                "{name}: cut at {cut} of {}",
                frame.len()
            );

            // Same cut with IP lengths rewritten to end at the cut.
            if cut < layout.l4 {
                continue;
            }
            let mut fixed = cut_frame.to_vec();
            if is_v4 {
                let total = (cut - layout.l3) as u16;
                fixed[layout.l3 + 2..layout.l3 + 4].copy_from_slice(&total.to_be_bytes());
            } else {
                let payload = (cut - layout.l3 - 40) as u16;
                fixed[layout.l3 + 4..layout.l3 + 6].copy_from_slice(&payload.to_be_bytes());
            }
            let l4_len = cut - layout.l4;
            let expected_fixed = if is_tcp {
                if l4_len < 20 {
                    Some(Malformed::TcpTruncated)
                } else if cut < layout.payload {
                    Some(Malformed::TcpBadDataOffset)
                } else {
                    None
                }
            } else if l4_len < 8 {
                Some(Malformed::UdpTruncated)
            } else {
                // The UDP length field still counts the cut-off payload byte.
                Some(Malformed::UdpBadLength)
            };
            let outcome = run_one(&fixed).outcome;
            match expected_fixed {
                Some(reason) => assert_eq!(
                    outcome,
                    Outcome::Malformed(reason),
                    "{name}: consistent cut at {cut}"
                ),
                None => assert!(matches!(outcome, Outcome::Class(_)), "{name}: cut at {cut}"),
            }
        }
    }
}

#[test]
fn full_port_table_degrades_to_class_counting() {
    if !require_root("full_port_table_degrades_to_class_counting") {
        return;
    }
    let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
    let capacity = lb_common::PORT_STATS_CAPACITY as u16;
    for port in 1..=capacity + 1 {
        let (frame, _) = eth_ipv4(&[], &v4(), udp(1, port, b""));
        runner.run(&frame).expect("run");
    }
    // Existing keys keep counting after the table is full.
    let (frame, _) = eth_ipv4(&[], &v4(), udp(1, 1, b""));
    runner.run(&frame).expect("run");
    let stats = runner.stats().expect("stats");
    assert_eq!(stats.ports.len(), capacity as usize);
    assert_eq!(stats.class(PacketClass::PortStatsFull), 1);
    assert_eq!(stats.class(PacketClass::Ipv4Udp), u64::from(capacity) + 2);
    assert_eq!(stats.port(IPPROTO_UDP, 1).packets, 2);
}
