//! A network namespace whose kernel FIB reaches a few "reals" through a veth with permanent
//! neighbour entries, so BPF_PROG_TEST_RUN of the datapath (run on a thread inside it) gets
//! real `bpf_fib_lookup` answers: egress interface and next-hop MACs, as in production.
use std::net::IpAddr;

use crate::{
    NETNS_PREFIX,
    netns::{Netns, sweep_stale},
};

/// MAC of g0, the egress toward the reals.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Reachable IPv4 reals (10.201.0.0/24 via g0).
pub const REALS4: [&str; 3] = ["10.201.0.2", "10.201.0.3", "10.201.0.4"];
/// Reachable IPv6 reals (fd01::/64 via g0).
pub const REALS6: [&str; 2] = ["fd01::2", "fd01::3"];

/// The MAC the neighbour table holds for `real`: 02:00:00:00:00:(a0 + last byte).
pub fn real_mac(real: IpAddr) -> [u8; 6] {
    let last = match real {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    [0x02, 0, 0, 0, 0, 0xa0 + last]
}

/// Creates the namespace (panics on failure: a broken rig is a failed test).
pub fn fib_netns() -> Netns {
    sweep_stale(NETNS_PREFIX);
    let ns = Netns::new(NETNS_PREFIX, "gold").expect("netns");
    ns.ip(&["link", "add", "g0", "type", "veth", "peer", "name", "g1"])
        .expect("veth");
    ns.ip(&["link", "set", "g0", "address", "02:00:00:00:00:01"])
        .expect("mac");
    for dev in ["g0", "g1"] {
        ns.ip(&["link", "set", dev, "up"]).expect("up");
    }
    ns.ip(&["addr", "add", "10.201.0.1/24", "dev", "g0"])
        .expect("addr");
    ns.ip(&["addr", "add", "fd01::1/64", "dev", "g0", "nodad"])
        .expect("addr6");
    for real in REALS4.iter().chain(REALS6.iter()) {
        let addr: IpAddr = real.parse().expect("ip");
        let mac = real_mac(addr)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ns.ip(&[
            "neigh",
            "add",
            real,
            "lladdr",
            &mac,
            "nud",
            "permanent",
            "dev",
            "g0",
        ])
        .expect("neigh");
    }
    // bpf_fib_lookup answers only where forwarding is on (the XDP program forwards).
    for knob in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let status = ns
            .command("sysctl")
            .args(["-qw", knob])
            .status()
            .expect("sysctl");
        assert!(status.success(), "{knob}");
    }
    ns
}
