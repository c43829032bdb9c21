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
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Child,
};

use crate::{
    NETNS_PREFIX,
    dsr::{connect_from, get_name, run_in},
    lb_run_netns::{LbRun, PinDir},
    netns::{Netns, VethEnd, sweep_stale, veth_pair},
};

/// The admin address of each node's `lb run` (inside its namespace).
pub const NODE_ADMIN: &str = "127.0.0.1:9900";

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

    /// `lb run` on node `k` (0-based) with backend file `file`: XDP (generic mode) on its
    /// interface toward the router, pins in `pin`, admin on [`NODE_ADMIN`] in its namespace.
    pub fn start_lb(&self, k: usize, file: &Path, pin: &PinDir) -> LbRun {
        LbRun::start(
            &self.nodes[k],
            [
                "--iface",
                "i0",
                "--xdp-mode",
                "skb",
                "--backends",
                &file.display().to_string(),
                "--admin",
                NODE_ADMIN,
                "--pin-dir",
                &pin.arg(),
            ],
        )
    }

    /// Removes the router's VIP route (a BGP daemon will install it).
    pub fn unroute_vip(&self) {
        let vip = format!("{}/32", self.vip_ip());
        self.router
            .ip(&["route", "del", &vip])
            .expect("delete VIP route");
    }

    /// The nodes (0-based) the router's VIP route leads to now, in order.
    pub fn vip_nexthops(&self) -> Vec<usize> {
        let vip = format!("{}/32", self.vip_ip());
        let routes = self.router.ip(&["route", "show", &vip]).unwrap_or_default();
        let mut nodes: Vec<usize> = (0..NODES)
            .filter(|&k| {
                let via = format!("via {} ", self.node_ip(k));
                routes.contains(&via)
            })
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Opens a connection from each of the client's `ports` to the VIP's port 80 and makes
    /// one request on it: (connection, the real that answered).
    pub fn open_flows(&self, ports: &[u16]) -> Vec<(TcpStream, String)> {
        let (client_ip, vip) = (self.client_ip(), SocketAddr::new(self.vip_ip(), 80));
        let ports = ports.to_vec();
        self.client
            .run(move || {
                ports
                    .iter()
                    .map(|&port| {
                        let mut conn = connect_from(client_ip, port, vip)
                            .unwrap_or_else(|e| panic!("connect from port {port}: {e}"));
                        let name = get_name(&mut conn)
                            .unwrap_or_else(|e| panic!("first request from port {port}: {e}"));
                        (conn, name)
                    })
                    .collect()
            })
            .expect("client")
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

/// A request on each connection: the flows whose answer did not come from their real.
pub fn broken_flows(conns: &mut [(TcpStream, String)]) -> Vec<String> {
    conns
        .iter_mut()
        .filter_map(|(conn, real)| match get_name(conn) {
            Ok(name) if name == *real => None,
            other => Some(format!(
                "{:?} (was on {real}): {other:?}",
                conn.local_addr()
            )),
        })
        .collect()
}

/// The router's BGP side: BIRD 2 in the router namespace, a passive session to each node
/// (AS 65000 to the nodes' AS 65001), installing multipath routes (`merge paths`) so the
/// kernel's ECMP spreads the VIP over the nodes announcing it. Killed on drop.
pub struct RouterBird {
    child: Child,
    dir: PathBuf,
}

/// Hold time of the test's BGP sessions (keepalive 1 s): a node that goes silent is
/// withdrawn after this long, one whose BIRD stops at once.
pub const HOLD_TIME_SECS: u32 = 3;

impl RouterBird {
    pub fn start(topo: &ClusterTopology, dir: &Path) -> Self {
        let s = topo.subnet;
        let mut conf = format!(
            "router id 10.{s}.0.2;\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n"
        );
        for k in 0..NODES {
            conf += &format!(
                "protocol bgp node{} {{ local 10.{s}.1{}.1 as 65000; neighbor {} as 65001; \
                 hold time {HOLD_TIME_SECS}; keepalive time 1; connect retry time 1; \
                 ipv4 {{ import all; export none; }}; }}\n",
                k + 1,
                k + 1,
                topo.node_ip(k)
            );
        }
        let path = dir.join("router-bird.conf");
        std::fs::write(&path, conf).expect("write router BIRD config");
        let child = topo
            .router
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(dir.join("router-bird.ctl"))
            .spawn()
            .expect("start BIRD in the router namespace");
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    /// The BIRD configuration for lb node `k` (0-based): a session to the router exporting the
    /// routes lb writes to `routes_file`. Written to the test's directory; returns its path.
    pub fn node_config(&self, topo: &ClusterTopology, k: usize, routes_file: &Path) -> PathBuf {
        let s = topo.subnet;
        let conf = format!(
            "router id {node};\ninclude \"{routes}\";\nprotocol device {{}}\n\
             protocol bgp uplink {{ local {node} as 65001; neighbor 10.{s}.1{n}.1 as 65000; \
             hold time {HOLD_TIME_SECS}; keepalive time 1; connect retry time 1; \
             ipv4 {{ import none; export where proto = \"lb_vips4\"; }}; }}\n",
            node = topo.node_ip(k),
            routes = routes_file.display(),
            n = k + 1,
        );
        let path = self.dir.join(format!("node{}-bird.conf", k + 1));
        std::fs::write(&path, conf).expect("write node BIRD config");
        path
    }
}

impl Drop for RouterBird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
