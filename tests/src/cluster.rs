//! Several lb nodes behind one ECMP router, the topology of issue 17 (and docs/SCALE-OUT.md):
//!
//! ```text
//! client ns --- router ns --- lb node ns 1..3 (XDP on i0; encapsulated packets go back out
//!  c0 10.S.0.1   r0 10.S.0.2                     i0 to the router)
//!                nK 10.S.1K.1 -- i0 10.S.1K.2
//!                tK 10.S.2K.1 -- real ns 1..3: e0 10.S.2K.2, VIP 10.S.100.100 on lo
//! ```
//! The router's route to the VIP is a multipath route over the nodes, hashed on the 5-tuple
//! (`fib_multipath_hash_policy=3`, fields 0x37: deterministic, unlike policy 1, which uses the
//! client socket's random hash). Reals answer the client directly through the router. Callers
//! attach programs and start servers; this module builds the network and edits the route.
use std::net::IpAddr;

use crate::{
    NETNS_PREFIX,
    dsr::run_in,
    netns::{Netns, VethEnd, sweep_stale, veth_pair},
};

pub const NODES: usize = 3;
pub const REALS: usize = 3;

pub struct ClusterTopology {
    pub subnet: u8,
    pub client: Netns,
    pub router: Netns,
    pub nodes: Vec<Netns>,
    pub reals: Vec<Netns>,
}

impl ClusterTopology {
    pub fn build(subnet: u8) -> Self {
        sweep_stale(NETNS_PREFIX);
        let s = subnet;
        let client = Netns::new(NETNS_PREFIX, "ccli").expect("netns");
        let router = Netns::new(NETNS_PREFIX, "crtr").expect("netns");
        veth_pair(
            VethEnd {
                ns: &client,
                name: "c0",
                addrs: &[&format!("10.{s}.0.1/24")],
            },
            VethEnd {
                ns: &router,
                name: "r0",
                addrs: &[&format!("10.{s}.0.2/24")],
            },
        )
        .expect("veth");
        client
            .ip(&["route", "add", "default", "via", &format!("10.{s}.0.2")])
            .expect("route");
        // veth hands CHECKSUM_PARTIAL skbs on, which XDP cannot finish; real NICs have
        // checksummed before XDP runs (see ../shared/ebpf-toolchain.md).
        run_in(&client, &["ethtool", "-K", "c0", "tx", "off"]);
        for knob in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.fib_multipath_hash_policy=3",
            "net.ipv4.fib_multipath_hash_fields=0x37",
        ] {
            run_in(&router, &["sysctl", "-qw", knob]);
        }
        let mut nodes = Vec::new();
        for k in 1..=NODES as u8 {
            let node = Netns::new(NETNS_PREFIX, &format!("cn{k}")).expect("netns");
            veth_pair(
                VethEnd {
                    ns: &router,
                    name: &format!("n{k}"),
                    addrs: &[&format!("10.{s}.1{k}.1/24")],
                },
                VethEnd {
                    ns: &node,
                    name: "i0",
                    addrs: &[&format!("10.{s}.1{k}.2/24")],
                },
            )
            .expect("veth");
            node.ip(&["route", "add", "default", "via", &format!("10.{s}.1{k}.1")])
                .expect("route");
            // A packet XDP passes (its next hop not yet resolved) is routed by the stack.
            for knob in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"] {
                run_in(&node, &["sysctl", "-qw", knob]);
            }
            nodes.push(node);
        }
        let vip = format!("10.{s}.100.100/32");
        let mut reals = Vec::new();
        for k in 1..=REALS as u8 {
            let real = Netns::new(NETNS_PREFIX, &format!("cr{k}")).expect("netns");
            veth_pair(
                VethEnd {
                    ns: &router,
                    name: &format!("t{k}"),
                    addrs: &[&format!("10.{s}.2{k}.1/24")],
                },
                VethEnd {
                    ns: &real,
                    name: "e0",
                    addrs: &[&format!("10.{s}.2{k}.2/24")],
                },
            )
            .expect("veth");
            real.ip(&["addr", "add", &vip, "dev", "lo"]).expect("vip");
            real.ip(&["route", "add", "default", "via", &format!("10.{s}.2{k}.1")])
                .expect("route");
            for knob in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.e0.rp_filter=0",
            ] {
                run_in(&real, &["sysctl", "-qw", knob]);
            }
            reals.push(real);
        }
        let topo = Self {
            subnet,
            client,
            router,
            nodes,
            reals,
        };
        topo.route_vip(&(0..NODES).collect::<Vec<_>>());
        topo
    }

    /// Points the router's VIP route at nodes `nodes` (0-based; a plain multipath route, so
    /// removing a node also remaps some flows between the others, as routers without resilient
    /// groups do).
    pub fn route_vip(&self, nodes: &[usize]) {
        let vip = format!("{}/32", self.vip_ip());
        let mut args: Vec<String> = ["route", "replace", &vip]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for &k in nodes {
            args.extend([
                "nexthop".to_owned(),
                "via".to_owned(),
                self.node_ip(k).to_string(),
                "dev".to_owned(),
                format!("n{}", k + 1),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.router.ip(&args).expect("VIP route");
    }

    /// As [`Self::route_vip`], through a resilient nexthop group (`ip nexthop ... type
    /// resilient`): removing a node moves only its own flows, as good routers do. Node `k`'s
    /// nexthop is id `k + 1`, the group id 100.
    pub fn route_vip_resilient(&self, nodes: &[usize]) {
        for &k in nodes {
            let id = (k + 1).to_string();
            let via = self.node_ip(k).to_string();
            let dev = format!("n{}", k + 1);
            self.router
                .ip(&["nexthop", "replace", "id", &id, "via", &via, "dev", &dev])
                .expect("nexthop");
        }
        let group = nodes
            .iter()
            .map(|k| (k + 1).to_string())
            .collect::<Vec<_>>()
            .join("/");
        self.router
            .ip(&[
                "nexthop",
                "replace",
                "id",
                "100",
                "group",
                &group,
                "type",
                "resilient",
                "buckets",
                "128",
                "idle_timer",
                "0",
            ])
            .expect("resilient group");
        let vip = format!("{}/32", self.vip_ip());
        self.router
            .ip(&["route", "replace", &vip, "nhid", "100"])
            .expect("VIP route");
    }

    pub fn vip_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 100, 100])
    }

    pub fn client_ip(&self) -> IpAddr {
        IpAddr::from([10, self.subnet, 0, 1])
    }

    /// Address of node `k`'s interface toward the router (0-based).
    pub fn node_ip(&self, k: usize) -> IpAddr {
        IpAddr::from([10, self.subnet, 11 + k as u8, 2])
    }

    /// Address of real `i` (0-based).
    pub fn real_ip(&self, i: usize) -> IpAddr {
        IpAddr::from([10, self.subnet, 21 + i as u8, 2])
    }
}
