//! Real TCP and UDP traffic between two network namespaces over a veth pair, with the datapath
//! attached to the receiving end in native and in generic mode. The counters must match what
//! was sent, exactly where the packet count is deterministic (UDP, SYNs).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use aya_log::EbpfLogger;
use lb::xdp::{self, AttachMode};
use lb_common::PacketClass;
use lb_tests::{
    NETNS_PREFIX,
    netns::{Netns, VethEnd, require_root, sweep_stale, veth_pair},
    packets::{IPPROTO_TCP, IPPROTO_UDP},
    xdp_run::LineSink,
};

const TCP_CONNECTIONS: usize = 24;
const TCP_PAYLOAD: usize = 1000;
const UDP4_DATAGRAMS: u64 = 50;
const UDP6_DATAGRAMS: u64 = 30;
const UDP_PAYLOAD: usize = 100;

fn real_traffic_is_counted(mode: AttachMode, expected_mode: &str, subnet: u8) {
    sweep_stale(NETNS_PREFIX);
    let client = Netns::new(NETNS_PREFIX, "cli").expect("client netns");
    let lb_ns = Netns::new(NETNS_PREFIX, "lb").expect("lb netns");
    let client_v4 = format!("10.{subnet}.0.1");
    let lb_v4 = format!("10.{subnet}.0.2");
    let client_v6 = format!("fd{subnet:02x}::1");
    let lb_v6 = format!("fd{subnet:02x}::2");
    veth_pair(
        VethEnd {
            ns: &client,
            name: "c0",
            addrs: &[&format!("{client_v4}/24"), &format!("{client_v6}/64")],
        },
        VethEnd {
            ns: &lb_ns,
            name: "l0",
            addrs: &[&format!("{lb_v4}/24"), &format!("{lb_v6}/64")],
        },
    )
    .expect("veth pair");

    let sink = LineSink::default();
    let log_sink = sink.clone();
    let (attached, mut log_reader) = lb_ns
        .run(move || {
            let mut attached = xdp::attach("l0", mode).expect("attach");
            let reader =
                EbpfLogger::init_with_logger(attached.ebpf_mut(), log_sink).expect("aya-log");
            (attached, reader)
        })
        .expect("attach in lb netns");
    assert_eq!(attached.mode(), expected_mode);
    let link = lb_ns.ip(&["link", "show", "dev", "l0"]).expect("ip link");
    assert!(link.contains("prog/xdp"), "XDP shows on the link: {link}");

    // Servers live in the lb namespace (a socket keeps the namespace it was created in).
    let (tcp, udp4, udp6) = {
        let (lb_v4, lb_v6) = (lb_v4.clone(), lb_v6.clone());
        lb_ns
            .run(move || {
                (
                    TcpListener::bind((lb_v4.as_str(), 8080)).expect("tcp bind"),
                    UdpSocket::bind((lb_v4.as_str(), 9000)).expect("udp4 bind"),
                    UdpSocket::bind((lb_v6.as_str(), 9001)).expect("udp6 bind"),
                )
            })
            .expect("bind in lb netns")
    };
    let echo = thread::spawn(move || {
        for _ in 0..TCP_CONNECTIONS {
            let (mut conn, _) = tcp.accept().expect("accept");
            let mut buf = vec![0u8; TCP_PAYLOAD];
            conn.read_exact(&mut buf).expect("read");
            conn.write_all(&buf).expect("echo");
        }
    });

    let (c4, l4, l6) = (client_v4.clone(), lb_v4.clone(), lb_v6.clone());
    client
        .run(move || {
            for i in 0..TCP_CONNECTIONS {
                let mut conn = TcpStream::connect((l4.as_str(), 8080)).expect("connect");
                let sent = vec![i as u8; TCP_PAYLOAD];
                conn.write_all(&sent).expect("write");
                let mut back = vec![0u8; TCP_PAYLOAD];
                conn.read_exact(&mut back).expect("read echo");
                assert_eq!(back, sent);
            }
            let sock = UdpSocket::bind((c4.as_str(), 0)).expect("udp4 client");
            for _ in 0..UDP4_DATAGRAMS {
                sock.send_to(&[7u8; UDP_PAYLOAD], (l4.as_str(), 9000))
                    .expect("send4");
            }
            let sock6 = UdpSocket::bind("[::]:0").expect("udp6 client");
            for _ in 0..UDP6_DATAGRAMS {
                sock6
                    .send_to(&[9u8; UDP_PAYLOAD], (l6.as_str(), 9001))
                    .expect("send6");
            }
        })
        .expect("client traffic");
    echo.join().expect("echo server");
    // Every datagram arrived, so every one went through the program.
    for (sock, expected) in [(&udp4, UDP4_DATAGRAMS), (&udp6, UDP6_DATAGRAMS)] {
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..expected {
            assert_eq!(sock.recv(&mut buf).expect("datagram"), UDP_PAYLOAD);
        }
    }

    let stats = xdp::read_stats(attached.ebpf()).expect("stats");
    let udp4_counters = stats.port(IPPROTO_UDP, 9000);
    assert_eq!(udp4_counters.packets, UDP4_DATAGRAMS);
    assert_eq!(
        udp4_counters.bytes,
        UDP4_DATAGRAMS * (14 + 20 + 8 + UDP_PAYLOAD as u64)
    );
    let udp6_counters = stats.port(IPPROTO_UDP, 9001);
    assert_eq!(udp6_counters.packets, UDP6_DATAGRAMS);
    assert_eq!(
        udp6_counters.bytes,
        UDP6_DATAGRAMS * (14 + 40 + 8 + UDP_PAYLOAD as u64)
    );
    assert_eq!(stats.class(PacketClass::TcpSyn), TCP_CONNECTIONS as u64);
    let tcp_counters = stats.port(IPPROTO_TCP, 8080);
    // Per connection at least SYN, ACK, data, FIN reach the server side.
    assert!(
        tcp_counters.packets >= 4 * TCP_CONNECTIONS as u64,
        "{tcp_counters:?}"
    );
    assert!(tcp_counters.bytes >= (TCP_CONNECTIONS * (TCP_PAYLOAD + 54)) as u64);
    assert_eq!(stats.malformed_total(), 0, "{stats}");
    // XDP sees ingress only: the server's replies to client ports never show up.
    let ports: Vec<_> = stats.ports.keys().map(|k| (k.proto, k.port)).collect();
    assert_eq!(
        ports,
        vec![
            (IPPROTO_TCP, 8080),
            (IPPROTO_UDP, 9000),
            (IPPROTO_UDP, 9001)
        ]
    );

    log_reader.flush();
    let expected_prefix = format!("new TCP connection {client_v4}:");
    let expected_suffix = format!(" -> {lb_v4}:8080");
    let sink_lines = sink.lines();
    let new_conns = sink_lines
        .iter()
        .filter(|l| l.starts_with(&expected_prefix) && l.ends_with(&expected_suffix))
        .count();
    assert_eq!(new_conns, TCP_CONNECTIONS, "log lines: {sink_lines:?}");

    attached.detach().expect("detach");
    let link = lb_ns.ip(&["link", "show", "dev", "l0"]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "detached: {link}");
}

#[test]
fn native_mode_counts_real_traffic() {
    if require_root("native_mode_counts_real_traffic") {
        real_traffic_is_counted(AttachMode::Native, "native", 91);
    }
}

#[test]
fn generic_mode_counts_real_traffic() {
    if require_root("generic_mode_counts_real_traffic") {
        real_traffic_is_counted(AttachMode::Skb, "skb", 92);
    }
}
