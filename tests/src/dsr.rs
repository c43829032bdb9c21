//! The direct-server-return topology the L4 end-to-end test and the pps benchmark share:
//!
//! ```text
//! client ns --- lb ns (forwarding; XDP on l0 when asked) --- real ns 1..3
//!  c0 10.S.0.1    l0 10.S.0.2 | ti 10.S.i.1                    e0 10.S.i.2, VIP 10.S.100.100 on lo
//! ```
//! Callers attach programs and start servers; this module only builds the network.
use std::{net::IpAddr, process::Stdio};

use crate::{
    NETNS_PREFIX,
    netns::{Netns, VethEnd, sweep_stale, veth_pair},
};

pub const REALS: usize = 3;

pub struct DsrTopology {
    pub subnet: u8,
    pub client: Netns,
    pub lb: Netns,
    pub reals: Vec<Netns>,
}

/// Runs a command inside `ns`, panicking (a broken rig is a failed test) if it fails.
pub fn run_in(ns: &Netns, args: &[&str]) {
    let status = ns
        .command(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(status.success(), "{args:?} in {}", ns.name());
}

impl DsrTopology {
    pub fn build(subnet: u8) -> Self {
        sweep_stale(NETNS_PREFIX);
        let s = subnet;
        let client = Netns::new(NETNS_PREFIX, "cli").expect("netns");
        let lb = Netns::new(NETNS_PREFIX, "lb").expect("netns");
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &[&format!("10.{s}.0.1/24")],
            },
            VethEnd {
                ns: &lb,
                name: "l0",
                addrs: &[&format!("10.{s}.0.2/24")],
            },
        )
        .expect("veth");
        client
            .ip(&["route", "add", "default", "via", &format!("10.{s}.0.2")])
            .expect("route");
        // veth hands CHECKSUM_PARTIAL skbs to native XDP, which cannot finish them; real NICs
        // have checksummed before XDP runs (see ../shared/ebpf-toolchain.md).
        run_in(&client, &["ethtool", "-K", "c0", "tx", "off"]);
        run_in(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let vip = format!("10.{s}.100.100/32");
        let mut reals = Vec::new();
        for i in 1..=REALS as u8 {
            let real = Netns::new(NETNS_PREFIX, &format!("r{i}")).expect("netns");
            veth_pair(
                VethEnd {
                    ns: &lb,
                    name: &format!("t{i}"),
                    addrs: &[&format!("10.{s}.{i}.1/24")],
                },
                VethEnd {
                    ns: &real,
                    name: "e0",
                    addrs: &[&format!("10.{s}.{i}.2/24")],
                },
            )
            .expect("veth");
            real.ip(&["addr", "add", &vip, "dev", "lo"]).expect("vip");
            real.ip(&["route", "add", "default", "via", &format!("10.{s}.{i}.1")])
                .expect("route");
            for knob in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.e0.rp_filter=0",
            ] {
                run_in(&real, &["sysctl", "-qw", knob]);
            }
            reals.push(real);
        }
        Self {
            subnet,
            client,
            lb,
            reals,
        }
    }

    pub fn vip_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 100, 100])
    }

    pub fn client_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 0, 1])
    }

    /// Address of real `i` (0-based).
    pub fn real_ip(&self, i: usize) -> IpAddr {
        IpAddr::from([10, self.subnet, i as u8 + 1, 2])
    }
}
