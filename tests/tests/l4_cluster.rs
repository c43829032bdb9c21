//! Several lb nodes behind one ECMP router must agree on every flow (issue 17). First each
//! node is its own copy of the datapath (its own maps, loaded next to the others) run on
//! golden packets with BPF_PROG_TEST_RUN, in a namespace whose FIB reaches the reals: moving a
//! flow "to another node" is sending its next packet to another copy. Then the real thing
//! (`lb_tests::cluster`): a client namespace, a router with a multipath route to the VIP over
//! three node namespaces each running the datapath on its interface, and three reals running
//! `lb_decap`, with real TCP connections.
//!
//! What is proved: nodes given the same reals build the same tables (same ring hash, whatever
//! the order reals are listed in); a SYN that reuses an earlier 5-tuple goes where the current
//! ring says on every node, even on the node whose table remembers the earlier connection;
//! after a change of reals, segments of flows opened before it reach their old real on a
//! node that never saw them (second chance on the previous ring), unless the window is off;
//! an idle entry expires; a restart keeps the ring and the previous ring. Through the
//! topology: (a) connections reusing 5-tuples after a real was added go where the current ring
//! says through every node; (b) long connections opened before the change keep their real
//! when the router moves them to nodes that never saw them; (c) and when a node dies.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread,
};

use aya::maps::{Array, MapData};
use lb::{
    l4::{L4Config, L4Dataplane, Protocol, addr16, flow_key, read_l4_events, read_l4_stats},
    maglev::{self, Backend},
    xdp::{self, AttachMode, AttachedXdp},
};
use lb_common::{
    hash::flow_hash,
    l4::{CONNTRACK_IDLE_TICKS, FlowEntry, FlowKey, L4Event, PrevRing, conntrack_tick},
    map_names, program_names,
};
use lb_tests::{
    NETNS_PREFIX,
    cluster::{ClusterTopology, NODES, broken_flows},
    dsr::{connect_from, get_name, serve_name},
    fib,
    lb_run::http,
    lb_run_netns::PinDir,
    netns::{Netns, VethEnd, require_root, veth_pair},
    packets::*,
    xdp_run::{XDP_PASS, XDP_REDIRECT, XDP_TX, XdpRunner},
};

const REALS4: [&str; 3] = fib::REALS4;
const VIP4: &str = "10.100.0.100:80";
const VIP_IP: [u8; 4] = [10, 100, 0, 100];
/// Flows per scenario: enough that every real and every changed ring slot gets some.
const FLOWS: u16 = 400;

fn config(reals: &[&str], extra_l4: &str) -> L4Config {
    let mut text = format!("[l4]\n{extra_l4}\n[[vip]]\naddress = \"{VIP4}\"\nring_size = 1009\n");
    for addr in reals {
        text.push_str(&format!("[[vip.real]]\naddress = \"{addr}\"\n"));
    }
    L4Config::parse(&text, Path::new("cluster.toml")).expect("test config")
}

/// One lb node: its own datapath and maps.
struct Node {
    runner: XdpRunner,
    dp: L4Dataplane,
}

impl Node {
    fn new(config: &L4Config) -> Self {
        let mut runner = XdpRunner::load(program_names::LB_XDP).expect("load");
        let mut dp = L4Dataplane::new();
        dp.apply(runner.ebpf_mut(), config).expect("apply");
        Self { runner, dp }
    }

    fn apply(&mut self, config: &L4Config) {
        self.dp
            .apply(self.runner.ebpf_mut(), config)
            .expect("apply");
    }

    /// The real a client segment is sent to (outer IPv4 destination).
    fn send(&mut self, client: [u8; 4], sport: u16, flags: u8) -> [u8; 4] {
        self.send_frame(client, sport, flags).0
    }

    /// As `send`, with the frame sent.
    fn send_frame(&mut self, client: [u8; 4], sport: u16, flags: u8) -> ([u8; 4], Vec<u8>) {
        let (frame, _) = eth_ipv4(
            &[],
            &Ipv4Opts::new(client, VIP_IP),
            tcp(sport, 80, flags, &[], b"data"),
        );
        let res = self.runner.run(&frame).expect("run");
        assert_eq!(
            res.action, XDP_REDIRECT,
            "flow {client:?}:{sport} {flags:#x}"
        );
        (
            [res.frame[30], res.frame[31], res.frame[32], res.frame[33]],
            res.frame,
        )
    }

    fn event(&self, event: L4Event) -> u64 {
        read_l4_stats(self.runner.ebpf(), &self.dp)
            .expect("stats")
            .event(event)
    }

    fn ring_hash(&self) -> Option<u64> {
        self.dp.ring_hash(vip(), Protocol::Tcp)
    }
}

fn vip() -> SocketAddr {
    VIP4.parse().expect("vip")
}

/// Flow `i`'s client address and port (spread over addresses and ports).
fn client(i: u16) -> ([u8; 4], u16) {
    ([10, 0, (i / 200) as u8, (i % 200) as u8 + 1], 20000 + i)
}

fn run_in_fib_netns(test: &'static str, body: impl FnOnce() + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let ns = fib::fib_netns();
    ns.run(body).expect("test body");
}

#[test]
fn nodes_with_the_same_reals_build_the_same_ring_in_any_order() {
    run_in_fib_netns(
        "nodes_with_the_same_reals_build_the_same_ring_in_any_order",
        || {
            let a = Node::new(&config(&REALS4, ""));
            let reversed: Vec<&str> = REALS4.iter().rev().copied().collect();
            let b = Node::new(&config(&reversed, ""));
            let fewer = Node::new(&config(&REALS4[..2], ""));
            assert!(a.ring_hash().is_some());
            assert_eq!(
                a.ring_hash(),
                b.ring_hash(),
                "order of reals does not matter"
            );
            assert_ne!(a.ring_hash(), fewer.ring_hash());
            // And the tables are the same in fact: every flow goes to the same real.
            let (mut a, mut b) = (a, b);
            for i in 0..FLOWS {
                let (c, p) = client(i);
                assert_eq!(a.send(c, p, TCP_SYN), b.send(c, p, TCP_SYN), "flow {i}");
            }
        },
    );
}

/// Issue 17's first broken case: after a real was added, a SYN reusing an earlier
/// connection's 5-tuple went to that connection's real on the node whose table still held it,
/// and by the new ring everywhere else.
#[test]
fn a_syn_reusing_a_5_tuple_takes_the_current_ring_on_every_node() {
    run_in_fib_netns(
        "a_syn_reusing_a_5_tuple_takes_the_current_ring_on_every_node",
        || {
            let before = config(&REALS4[..2], "");
            let after = config(&REALS4, "");
            let mut nodes: Vec<Node> = (0..3).map(|_| Node::new(&before)).collect();
            // Connections opened (and acknowledged) on node 0.
            let mut first = Vec::new();
            for i in 0..FLOWS {
                let (c, p) = client(i);
                let real = nodes[0].send(c, p, TCP_SYN);
                assert_eq!(nodes[0].send(c, p, TCP_ACK), real);
                first.push(real);
            }
            for node in &mut nodes {
                node.apply(&after);
            }
            let mut moved = 0;
            for (i, old) in (0..FLOWS).zip(&first) {
                let (c, p) = client(i);
                // Node 0 remembers the earlier connection; nodes 1 and 2 never saw it.
                let on_0 = nodes[0].send(c, p, TCP_SYN);
                let on_1 = nodes[1].send(c, p, TCP_SYN);
                let on_2 = nodes[2].send(c, p, TCP_SYN);
                assert_eq!((on_0, on_0), (on_1, on_2), "flow {i}: nodes disagree");
                // The new connection's entry replaced the old one on node 0.
                assert_eq!(nodes[0].send(c, p, TCP_ACK), on_0, "flow {i}");
                moved += usize::from(on_0 != *old);
            }
            // The added real took its share: about a third of the reused 5-tuples changed real
            // (a bound loose enough for any hash, tight enough to show the ring changed).
            assert!(
                moved > usize::from(FLOWS) / 6 && moved < usize::from(FLOWS) / 2,
                "{moved} of {FLOWS} reused 5-tuples moved to the new real"
            );
            assert_eq!(
                nodes[0].event(L4Event::ConntrackHit),
                2 * u64::from(FLOWS),
                "SYNs never read the table: only the ACKs hit"
            );
        },
    );
}

/// Issue 17's second broken case: flows opened before a change of reals and later moved by
/// ECMP to a node that never saw them were hashed on the new ring. With the previous ring
/// kept, each reaches its old real; with `previous_ring_window = "0s"` they do not.
#[test]
fn flows_moved_to_a_node_that_never_saw_them_keep_their_real_after_a_change() {
    run_in_fib_netns(
        "flows_moved_to_a_node_that_never_saw_them_keep_their_real_after_a_change",
        || {
            let mut origin = Node::new(&config(&REALS4[..2], ""));
            let mut opened = Vec::new();
            for i in 0..FLOWS {
                let (c, p) = client(i);
                opened.push(origin.send(c, p, TCP_SYN));
            }
            // The current ring's real of each flow, from a node that only knows the new reals.
            let mut reference = Node::new(&config(&REALS4, ""));
            let current: Vec<[u8; 4]> = (0..FLOWS)
                .map(|i| {
                    let (c, p) = client(i);
                    reference.send(c, p, TCP_SYN)
                })
                .collect();
            let differs = opened.iter().zip(&current).filter(|(o, c)| o != c).count() as u64;
            assert!(
                differs > 0,
                "the change moved some of the flows' ring slots"
            );
            for window in ["", "previous_ring_window = \"0s\""] {
                // Another node, present all along: it went through the same change.
                let mut other = Node::new(&config(&REALS4[..2], window));
                let before_hash = other.ring_hash();
                other.apply(&config(&REALS4, window));
                assert_ne!(other.ring_hash(), before_hash);
                assert_eq!(other.ring_hash(), reference.ring_hash());
                let mut kept = 0u64;
                for (i, (old, now)) in (0..FLOWS).zip(opened.iter().zip(&current)) {
                    let (c, p) = client(i);
                    let (got, frame) = other.send_frame(c, p, TCP_ACK);
                    kept += u64::from(got == *old);
                    if window.is_empty() && old != now {
                        // Wrapped twice: to the previous ring's real, and inside to the
                        // current ring's (which gets it if the previous one has no such
                        // connection).
                        assert_eq!(frame[23], 4, "flow {i}: IPIP");
                        assert_eq!(frame[14 + 20 + 9], 4, "flow {i}: IPIP inside");
                        assert_eq!(frame[14 + 20 + 16..14 + 20 + 20], now[..], "flow {i}");
                    }
                    // The flow's next segments go the same way (remembered, or not
                    // remembered and decided again the same way).
                    assert_eq!(other.send(c, p, TCP_ACK), got, "flow {i}");
                }
                let all = u64::from(FLOWS);
                if window.is_empty() {
                    assert_eq!(kept, all, "every moved flow kept its real");
                    assert_eq!(
                        other.event(L4Event::PreviousRing),
                        2 * differs,
                        "per packet: second chances are not remembered"
                    );
                    assert_eq!(other.event(L4Event::MidFlowRehash), all - differs);
                } else {
                    assert_eq!(kept, all - differs, "no second chance without a window");
                    assert_eq!(other.event(L4Event::PreviousRing), 0);
                    assert_eq!(other.event(L4Event::MidFlowRehash), all);
                }
            }
        },
    );
}

/// Every flow, not a sample: all flows opened before the change keep their real on a node that
/// never saw them, and SYNs on that node still follow the current ring.
#[test]
fn second_chance_covers_every_moved_flow_and_never_a_syn() {
    run_in_fib_netns(
        "second_chance_covers_every_moved_flow_and_never_a_syn",
        || {
            let before = config(&REALS4[..2], "");
            let after = config(&REALS4, "");
            let mut origin = Node::new(&before);
            let mut other = Node::new(&before);
            let mut reference = Node::new(&after);
            other.apply(&after);
            let mut differs = 0;
            for i in 0..FLOWS {
                let (c, p) = client(i);
                let old = origin.send(c, p, TCP_SYN);
                let current = reference.send(c, p, TCP_SYN);
                differs += u64::from(old != current);
                assert_eq!(other.send(c, p, TCP_ACK), old, "flow {i} kept its real");
                // A new connection on the same 5-tuple: the current ring, and it replaces the
                // second-chance entry.
                assert_eq!(other.send(c, p, TCP_SYN), current, "flow {i}'s SYN");
                assert_eq!(other.send(c, p, TCP_ACK), current, "flow {i}'s next ACK");
            }
            assert!(differs > 0);
            assert_eq!(other.event(L4Event::PreviousRing), differs);
        },
    );
}

/// The same over IPv6 (IP6IP6): flows opened when the VIP had one real keep it on a node that
/// never saw them after a second real joined; SYNs take the current ring.
#[test]
fn second_chance_works_for_ipv6_flows() {
    run_in_fib_netns("second_chance_works_for_ipv6_flows", || {
        let v6_config = |reals: &[&str]| {
            let mut text = "[[vip]]\naddress = \"[fd64::100]:443\"\nring_size = 1009\n".to_owned();
            for addr in reals {
                text.push_str(&format!("[[vip.real]]\naddress = \"{addr}\"\n"));
            }
            L4Config::parse(&text, Path::new("cluster6.toml")).expect("config")
        };
        let vip6: std::net::Ipv6Addr = "fd64::100".parse().expect("vip");
        let send = |node: &mut Node, port: u16, flags: u8| -> [u8; 16] {
            let (frame, _) = eth_ipv6(
                &[],
                V6_CLIENT,
                vip6.octets(),
                &[],
                tcp(port, 443, flags, &[], b"data"),
            );
            let res = node.runner.run(&frame).expect("run");
            assert_eq!(res.action, XDP_REDIRECT, "port {port} {flags:#x}");
            res.frame[38..54].try_into().expect("outer dst")
        };
        let old_real: [u8; 16] = fib::REALS6[0]
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets();
        let mut other = Node::new(&v6_config(&fib::REALS6[..1]));
        other.apply(&v6_config(&fib::REALS6));
        let mut reference = Node::new(&v6_config(&fib::REALS6));
        let mut moved = 0;
        for i in 0..FLOWS {
            let port = 20000 + i;
            let current = send(&mut reference, port, TCP_SYN);
            moved += u64::from(current != old_real);
            assert_eq!(
                send(&mut other, port, TCP_ACK),
                old_real,
                "flow {i} kept its real"
            );
        }
        assert!(moved > 0);
        assert_eq!(other.event(L4Event::PreviousRing), moved);
        // A new connection on one of those 5-tuples takes the current ring.
        let port = (0..FLOWS)
            .map(|i| 20000 + i)
            .find(|&p| send(&mut reference, p, TCP_SYN) != old_real)
            .expect("a flow the new real owns");
        let current = send(&mut reference, port, TCP_SYN);
        assert_eq!(send(&mut other, port, TCP_SYN), current);
        assert_eq!(send(&mut other, port, TCP_ACK), current);
    });
}

/// `lb_decap` on the previous ring's real settles a second chance: with no socket for the
/// client's connection, or only the VIP's listener, it sends the packet on, one header less,
/// to the inner header's real (through the FIB here; the topology tests cover the way back
/// to the sender, on reals that do not forward); with the connection established on this
/// host it strips both headers and delivers.
#[test]
fn a_real_keeps_a_second_chance_only_when_the_connection_is_its_own() {
    run_in_fib_netns(
        "a_real_keeps_a_second_chance_only_when_the_connection_is_its_own",
        || {
            let mut other = Node::new(&config(&REALS4[..2], ""));
            other.apply(&config(&REALS4, ""));
            let mut reference = Node::new(&config(&REALS4, ""));
            let mut origin = Node::new(&config(&REALS4[..2], ""));
            // A client port whose flow changed real with the change (so it is wrapped twice).
            let client_ip = [10, 0, 0, 1];
            let port = (20000..30000)
                .find(|&p| {
                    origin.send(client_ip, p, TCP_SYN) != reference.send(client_ip, p, TCP_SYN)
                })
                .expect("a flow whose slot changed");
            let (original, _) = eth_ipv4(
                &[],
                &Ipv4Opts::new(client_ip, VIP_IP),
                tcp(port, 80, TCP_ACK, &[], b"data"),
            );
            let (_, wrapped) = other.send_frame(client_ip, port, TCP_ACK);
            assert_eq!(wrapped.len(), original.len() + 40, "two headers");
            let mut decap = XdpRunner::load(program_names::DECAP).expect("load decap");
            // The current ring's real, named by the header inside.
            let inner_real =
                std::net::IpAddr::from([wrapped[50], wrapped[51], wrapped[52], wrapped[53]]);
            let sent_on = |res: &lb_tests::xdp_run::RunResult| {
                // This namespace's FIB reaches the reals: the packet goes to the inner
                // header's real's MAC.
                assert!(
                    [XDP_TX, XDP_REDIRECT].contains(&res.action),
                    "{}",
                    res.action
                );
                assert_eq!(
                    res.frame[..6],
                    fib::real_mac(inner_real),
                    "to the other real"
                );
                assert_eq!(res.frame[6..12], fib::LB_MAC);
                assert_eq!(res.frame[12..14], [0x08, 0x00]);
                assert_eq!(res.frame[14..], wrapped[34..], "one header less");
            };
            // No socket at all.
            sent_on(&decap.run(&wrapped).expect("decap"));
            // The VIP's listener only: not this connection.
            let sh = |args: &[&str]| {
                let status = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .expect("ip");
                assert!(status.success(), "ip {args:?}");
            };
            sh(&["link", "set", "lo", "up"]);
            sh(&["addr", "add", "10.100.0.100/32", "dev", "lo"]);
            sh(&["addr", "add", "10.0.0.1/32", "dev", "lo"]);
            let listener = TcpListener::bind("10.100.0.100:80").expect("listen");
            sent_on(&decap.run(&wrapped).expect("decap"));
            // The connection itself, established here.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket
                .bind(&SocketAddr::from((client_ip, port)).into())
                .expect("bind client");
            socket
                .connect(&SocketAddr::from((VIP_IP, 80)).into())
                .expect("connect");
            let (_accepted, _) = listener.accept().expect("accept");
            let res = decap.run(&wrapped).expect("decap");
            assert_eq!(res.action, XDP_PASS, "delivered");
            assert_eq!(res.frame[14..], original[14..], "both headers gone");
            assert_eq!(res.frame[12..14], [0x08, 0x00]);
            let events = read_l4_events(decap.ebpf()).expect("events");
            assert_eq!(events.get(L4Event::SecondChanceForwarded.name()), Some(&2));
        },
    );
}

/// A real removed takes no flows, old or new: the previous ring's word for it is ignored (its
/// flows take the current ring), while flows of the reals that stay keep theirs (Maglev moves
/// a few slots between remaining reals too).
#[test]
fn the_previous_ring_never_sends_to_a_removed_real() {
    run_in_fib_netns("the_previous_ring_never_sends_to_a_removed_real", || {
        let mut origin = Node::new(&config(&REALS4, ""));
        let mut other = Node::new(&config(&REALS4, ""));
        other.apply(&config(&REALS4[..2], ""));
        let mut reference = Node::new(&config(&REALS4[..2], ""));
        let gone: [u8; 4] = REALS4[2]
            .parse::<std::net::Ipv4Addr>()
            .expect("ip")
            .octets();
        let (mut on_gone, mut second_chances) = (0, 0);
        for i in 0..FLOWS {
            let (c, p) = client(i);
            let old = origin.send(c, p, TCP_SYN);
            let current = reference.send(c, p, TCP_SYN);
            let got = other.send(c, p, TCP_ACK);
            if old == gone {
                on_gone += 1;
                assert_eq!(got, current, "flow {i} of the removed real");
            } else {
                assert_eq!(got, old, "flow {i} kept its real");
                second_chances += u64::from(old != current);
            }
        }
        assert!(on_gone > 0);
        assert_eq!(other.event(L4Event::PreviousRing), second_chances);
    });
}

/// A connection-table entry idle past the timeout is a miss (its flow is hashed again), one
/// used recently is a hit. The entry's stamp is set back rather than waited out.
#[test]
fn idle_entries_expire() {
    run_in_fib_netns("idle_entries_expire", || {
        let mut node = Node::new(&config(&REALS4, ""));
        let (c, p) = client(1);
        let real = node.send(c, p, TCP_SYN);
        let flow: FlowKey = flow_key(SocketAddr::from((c, p)), vip(), Protocol::Tcp);
        let mut table: aya::maps::HashMap<&mut aya::maps::MapData, FlowKey, FlowEntry> = node
            .runner
            .ebpf_mut()
            .map_mut(map_names::CONNTRACK)
            .expect("CONNTRACK")
            .try_into()
            .expect("hash map");
        let entry = table.get(&flow, 0).expect("entry");
        assert_eq!(entry.vip, 0);
        assert_eq!(
            entry.hash,
            lb_common::hash::flow_hash(&flow, lb_common::hash::FLOW_HASH_SEED)
        );
        let now = conntrack_tick(monotonic_ns());
        let stale = FlowEntry {
            seen: now.wrapping_sub(CONNTRACK_IDLE_TICKS + 2),
            ..entry
        };
        table.insert(flow, stale, 0).expect("insert");
        assert_eq!(node.send(c, p, TCP_ACK), real);
        assert_eq!(node.event(L4Event::ConntrackExpired), 1);
        assert_eq!(node.event(L4Event::MidFlowRehash), 1);
        // Re-stamped on the re-hash: the next segment hits.
        let hits = node.event(L4Event::ConntrackHit);
        assert_eq!(node.send(c, p, TCP_ACK), real);
        assert_eq!(node.event(L4Event::ConntrackHit), hits + 1);
    });
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A restarted `lb` (pins kept) finds each VIP's pinned ring equal to what its config builds:
/// it writes no ring and flips nothing, so the previous ring and its window survive; a
/// real change after the restart then makes the ring it replaces the previous one, as usual.
#[test]
fn a_restart_keeps_the_ring_and_the_previous_ring() {
    if !require_root("a_restart_keeps_the_ring_and_the_previous_ring") {
        return;
    }
    let a = Netns::new(NETNS_PREFIX, "cra").expect("netns");
    let b = Netns::new(NETNS_PREFIX, "crb").expect("netns");
    veth_pair(
        VethEnd {
            ns: &a,
            name: "a0",
            addrs: &["10.8.0.1/24"],
        },
        VethEnd {
            ns: &b,
            name: "b0",
            addrs: &["10.8.0.2/24"],
        },
    )
    .expect("veth");
    let pins = PinDir::new("cluster-restart");
    let dir = pins.path.clone();
    let attach = |dir: &Path| {
        let dir = dir.to_owned();
        a.run(move || xdp::attach_pinned("a0", AttachMode::Skb, &dir))
            .expect("thread in netns")
            .expect("attach with pins")
    };
    let prev = |attached: &AttachedXdp| -> PrevRing {
        let map: Array<&MapData, PrevRing> = attached
            .ebpf()
            .map(map_names::PREV_RINGS)
            .expect("PREV_RINGS")
            .try_into()
            .expect("array");
        map.get(&0, 0).expect("entry")
    };

    let mut first = attach(&dir);
    let mut dp = L4Dataplane::new();
    dp.apply(first.ebpf_mut(), &config(&REALS4[..2], ""))
        .expect("apply");
    assert_eq!(
        prev(&first),
        PrevRing::default(),
        "no change yet: no previous ring"
    );
    let report = dp
        .apply(first.ebpf_mut(), &config(&REALS4, ""))
        .expect("apply");
    assert_eq!(report.rings_rebuilt, 1);
    let kept = prev(&first);
    assert_eq!(kept.ring_size, 1009);
    assert!(kept.until_ns > monotonic_ns(), "window open: {kept:?}");
    let hash = dp.ring_hash(vip(), Protocol::Tcp);
    first.leave_pinned();

    let mut second = attach(&dir);
    assert!(second.reused_maps());
    let mut dp = L4Dataplane::recover(second.ebpf_mut()).expect("recover");
    assert_eq!(dp.ring_hash(vip(), Protocol::Tcp), None, "not checked yet");
    // As `lb run` applies: asynchronously (which retires changing VIPs' previous rings first).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let report = runtime
        .block_on(dp.apply_async(second.ebpf_mut(), &config(&REALS4, "")))
        .expect("apply");
    assert_eq!(
        report.rings_rebuilt, 0,
        "the pinned ring already holds the table"
    );
    assert_eq!(dp.ring_hash(vip(), Protocol::Tcp), hash);
    assert_eq!(
        prev(&second),
        kept,
        "the previous ring and its window survive"
    );

    // The next change retires the kept previous ring and makes the live one previous.
    let report = runtime
        .block_on(dp.apply_async(second.ebpf_mut(), &config(&REALS4[1..], "")))
        .expect("apply");
    assert_eq!(report.rings_rebuilt, 1);
    let next = prev(&second);
    assert_eq!(next.half, 1 - kept.half);
    assert!(next.until_ns > kept.until_ns);
    second.detach().expect("detach");
}

// ---- The topology: client -> ECMP router -> 3 lb nodes (XDP) -> 3 reals (lb_decap) ----

/// Connections per topology scenario.
const TCP_FLOWS: u16 = 300;
/// Long-lived connections through node failures (the count).
const LONG_FLOWS: u16 = 1000;

/// The ECMP topology with a datapath attached on each node and `lb_decap` plus an HTTP server
/// naming itself on each real. A node is `None` once killed.
struct Cluster {
    topo: ClusterTopology,
    _decaps: Vec<AttachedXdp>,
    nodes: Vec<Option<(AttachedXdp, L4Dataplane)>>,
}

impl Cluster {
    fn build(subnet: u8) -> Self {
        let topo = ClusterTopology::build(subnet);
        let vip_ip = topo.vip_ip();
        let mut decaps = Vec::new();
        for (i, real) in topo.reals.iter().enumerate() {
            decaps.push(
                real.run(|| {
                    xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb).expect("decap")
                })
                .expect("decap in real netns"),
            );
            let listener = real
                .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
                .expect("listener");
            let name = format!("real{}", i + 1);
            thread::spawn(move || serve_name(listener, name));
        }
        let nodes = topo
            .nodes
            .iter()
            .map(|node| {
                let attached = node
                    .run(|| xdp::attach("i0", AttachMode::Skb).expect("attach lb_xdp"))
                    .expect("attach in node netns");
                Some((attached, L4Dataplane::new()))
            })
            .collect();
        Self {
            topo,
            _decaps: decaps,
            nodes,
        }
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::new(self.topo.vip_ip(), 80)
    }

    fn config(&self, reals: &[usize]) -> L4Config {
        let mut text = format!("[[vip]]\naddress = \"{}\"\nring_size = 65537\n", self.vip());
        for &i in reals {
            text.push_str(&format!(
                "[[vip.real]]\naddress = \"{}\"\n",
                self.topo.real_ip(i)
            ));
        }
        L4Config::parse(&text, Path::new("cluster.toml")).expect("config")
    }

    /// The same reals on every live node (as one config pushed to all of them).
    fn apply(&mut self, reals: &[usize]) {
        let config = self.config(reals);
        let mut hashes = Vec::new();
        for (attached, dp) in self.nodes.iter_mut().flatten() {
            dp.apply(attached.ebpf_mut(), &config).expect("apply");
            hashes.push(dp.ring_hash(config.vips[0].addr, Protocol::Tcp));
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    }

    /// Which real the current ring gives each of `ports`' flows ("realN").
    fn predicted(&self, reals: &[usize], ports: &[u16]) -> Vec<String> {
        let backends: Vec<Backend> = reals
            .iter()
            .map(|&i| Backend {
                key: addr16(self.topo.real_ip(i)).0,
                weight: 1,
            })
            .collect();
        let table = maglev::build(&backends, 65537).expect("maglev");
        ports
            .iter()
            .map(|&port| {
                let flow = flow_key(
                    SocketAddr::new(self.topo.client_ip(), port),
                    self.vip(),
                    Protocol::Tcp,
                );
                let slot = flow_hash(&flow, lb_common::hash::FLOW_HASH_SEED) % 65537;
                format!("real{}", reals[table[slot as usize].expect("owned")] + 1)
            })
            .collect()
    }

    /// Opens a connection from each port and makes one request on it: (connection, real).
    fn open(&self, ports: &[u16]) -> Vec<(TcpStream, String)> {
        self.topo.open_flows(ports)
    }

    /// A request on each connection: the flows whose answer did not come from their real.
    fn broken(conns: &mut [(TcpStream, String)]) -> Vec<String> {
        broken_flows(conns)
    }

    fn event(&self, node: usize, event: L4Event) -> u64 {
        let (attached, dp) = self.nodes[node].as_ref().expect("live node");
        read_l4_stats(attached.ebpf(), dp)
            .expect("stats")
            .event(event)
    }

    /// Node `k` dies: the router stops sending to it (`route_to` are the nodes left), its
    /// link goes down and its program is gone.
    fn kill(&mut self, k: usize, route_to: &[usize], resilient: bool) {
        if resilient {
            self.topo.route_vip_resilient(route_to);
        } else {
            self.topo.route_vip(route_to);
        }
        self.topo.nodes[k]
            .ip(&["link", "set", "i0", "down"])
            .expect("link down");
        if let Some((attached, _)) = self.nodes[k].take() {
            attached.detach().expect("detach");
        }
    }
}

/// Closes with a RST (SO_LINGER 0), so the client keeps no TIME_WAIT and may reuse the 5-tuple
/// at once, as a client behind a NAT or one reusing ports does.
fn reset(conn: TcpStream) {
    let socket = socket2::Socket::from(conn);
    socket
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("linger");
}

/// (a) After a real was added, new connections reusing the 5-tuples of earlier ones go where
/// the current ring says, through every node, although the node each lands on (ECMP is
/// deterministic on the 5-tuple) still holds the earlier connection's entry.
#[test]
fn reused_5_tuples_follow_the_current_ring_through_every_node() {
    if !require_root("reused_5_tuples_follow_the_current_ring_through_every_node") {
        return;
    }
    let mut cluster = Cluster::build(95);
    cluster.apply(&[0, 1]);
    let ports: Vec<u16> = (0..TCP_FLOWS).map(|n| 30000 + n).collect();
    let first = cluster.open(&ports);
    let first_reals: Vec<String> = first.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(first_reals, cluster.predicted(&[0, 1], &ports));
    for (conn, _) in first {
        reset(conn);
    }
    cluster.apply(&[0, 1, 2]);
    let again = cluster.open(&ports);
    let again_reals: Vec<String> = again.iter().map(|(_, r)| r.clone()).collect();
    let predicted = cluster.predicted(&[0, 1, 2], &ports);
    let wrong: Vec<String> = (0..ports.len())
        .filter(|&i| again_reals[i] != predicted[i])
        .map(|i| format!("port {}: {} not {}", ports[i], again_reals[i], predicted[i]))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {TCP_FLOWS}: {wrong:?}",
        wrong.len()
    );
    let moved = (0..ports.len())
        .filter(|&i| again_reals[i] != first_reals[i])
        .count();
    assert!(moved > 0, "the added real took some reused 5-tuples");
    for k in 0..NODES {
        assert!(
            cluster.event(k, L4Event::NewFlow) > 0,
            "ECMP used node {k}: every node took part"
        );
    }
}

/// (b) and (c): 1000 long-lived connections opened before a real was added keep their real
/// when the router drops one node (flows move to nodes that never saw them: second chance)
/// and when another node is then killed. With a plain multipath route (removing a node also
/// moves flows between the others) and with a resilient nexthop group (only its own move).
#[test]
fn long_flows_keep_their_real_through_a_change_of_reals_and_node_failures() {
    if !require_root("long_flows_keep_their_real_through_a_change_of_reals_and_node_failures") {
        return;
    }
    long_flows_through_changes(96, false);
}

#[test]
fn long_flows_keep_their_real_behind_a_resilient_nexthop_group() {
    if !require_root("long_flows_keep_their_real_behind_a_resilient_nexthop_group") {
        return;
    }
    long_flows_through_changes(98, true);
}

fn long_flows_through_changes(subnet: u8, resilient: bool) {
    let mut cluster = Cluster::build(subnet);
    let route = |cluster: &Cluster, nodes: &[usize]| {
        if resilient {
            cluster.topo.route_vip_resilient(nodes);
        } else {
            cluster.topo.route_vip(nodes);
        }
    };
    route(&cluster, &[0, 1, 2]);
    cluster.apply(&[0, 1]);
    let ports: Vec<u16> = (0..LONG_FLOWS).map(|n| 40000 + n).collect();
    let mut conns = cluster.open(&ports);
    let reals: Vec<String> = conns.iter().map(|(_, r)| r.clone()).collect();
    let on_new_ring = cluster.predicted(&[0, 1, 2], &ports);
    let would_move = (0..ports.len())
        .filter(|&i| reals[i] != on_new_ring[i])
        .count();
    assert!(
        would_move > 0,
        "the added real takes some of these flows' slots"
    );

    cluster.apply(&[0, 1, 2]);
    assert_eq!(
        Cluster::broken(&mut conns),
        Vec::<String>::new(),
        "after the change"
    );

    // Node 3 leaves the route (drained): its flows (and, plain, some others) move.
    route(&cluster, &[0, 1]);
    let broken = Cluster::broken(&mut conns);
    assert!(
        broken.is_empty(),
        "node 3 left: {} broke: {broken:?}",
        broken.len()
    );

    // Node 1 dies: everything goes through node 2.
    let second_chances_on_1 = cluster.event(0, L4Event::PreviousRing);
    cluster.kill(0, &[1], resilient);
    let broken = Cluster::broken(&mut conns);
    assert!(
        broken.is_empty(),
        "node 1 died: {} broke: {broken:?}",
        broken.len()
    );
    let second_chances = second_chances_on_1 + cluster.event(1, L4Event::PreviousRing);
    assert!(
        second_chances > 0,
        "flows reached nodes that never saw them and were sent by the previous ring"
    );
}

/// Both kinds of flow the previous ring must tell apart, moved within its window: connections
/// opened before a real was added and connections opened after it, all moved to nodes that
/// never saw them when a node leaves the route. None breaks: the moved packets go to the
/// previous ring's real with the current ring's inside, and the reals settle it (the one
/// without the connection forwards the packet to the other).
#[test]
fn flows_opened_before_and_after_a_change_keep_their_real_when_moved_within_the_window() {
    if !require_root(
        "flows_opened_before_and_after_a_change_keep_their_real_when_moved_within_the_window",
    ) {
        return;
    }
    let mut cluster = Cluster::build(89);
    cluster.apply(&[0, 1]);
    let before: Vec<u16> = (0..TCP_FLOWS / 2).map(|n| 40000 + n).collect();
    let mut conns = cluster.open(&before);
    cluster.apply(&[0, 1, 2]);
    let after: Vec<u16> = (TCP_FLOWS / 2..TCP_FLOWS).map(|n| 40000 + n).collect();
    let opened_after = cluster.open(&after);
    let after_reals: Vec<String> = opened_after.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(after_reals, cluster.predicted(&[0, 1, 2], &after));
    conns.extend(opened_after);

    cluster.topo.route_vip(&[0, 1]);
    let broken = Cluster::broken(&mut conns);
    assert!(
        broken.is_empty(),
        "node 3 left: {} broke: {broken:?}",
        broken.len()
    );
    let second_chances: u64 = (0..2)
        .map(|k| cluster.event(k, L4Event::PreviousRing))
        .sum();
    let forwarded: u64 = cluster
        ._decaps
        .iter()
        .map(|d| {
            read_l4_events(d.ebpf())
                .expect("events")
                .get(L4Event::SecondChanceForwarded.name())
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(second_chances > 0, "moved flows took the second chance");
    assert!(
        forwarded > 0,
        "reals forwarded the flows opened after the change to the current ring's real"
    );
}

/// `lb run` on each node of the topology (its own namespace, XDP on its interface, its own
/// pins), from backend files listing the reals in different orders: every node reports the
/// same ring hash in `/api/status` and `/metrics`, and connections through the router reach
/// the real the shared table gives, whichever node ECMP picks.
#[test]
fn lb_run_nodes_report_the_same_ring_hash_and_agree_on_flows() {
    if !require_root("lb_run_nodes_report_the_same_ring_hash_and_agree_on_flows") {
        return;
    }
    let topo = ClusterTopology::build(97);
    let vip = SocketAddr::new(topo.vip_ip(), 80);
    let vip_ip = topo.vip_ip();
    let mut decaps = Vec::new();
    for (i, real) in topo.reals.iter().enumerate() {
        decaps.push(
            real.run(|| {
                xdp::attach_program(program_names::DECAP, "e0", AttachMode::Skb).expect("decap")
            })
            .expect("decap in real netns"),
        );
        let listener = real
            .run(move || TcpListener::bind((vip_ip, 80)).expect("bind VIP"))
            .expect("listener");
        let name = format!("real{}", i + 1);
        thread::spawn(move || serve_name(listener, name));
    }
    let mut runs = Vec::new();
    let mut files = Vec::new();
    let mut pins = Vec::new();
    for k in 0..NODES {
        let order: Vec<usize> = if k == 2 { vec![2, 1, 0] } else { vec![0, 1, 2] };
        let mut text = format!("[[vip]]\naddress = \"{vip}\"\nring_size = 65537\n");
        for i in order {
            text += &format!("[[vip.real]]\naddress = \"{}\"\n", topo.real_ip(i));
        }
        let file = TempFile(
            std::env::temp_dir().join(format!("lb-cluster-{}-{k}.toml", std::process::id())),
        );
        std::fs::write(&file.0, text).expect("write backend file");
        let pin = PinDir::new(&format!("cluster{k}"));
        runs.push(topo.start_lb(k, &file.0, &pin));
        files.push(file);
        pins.push(pin);
    }
    let admin: SocketAddr = "127.0.0.1:9900".parse().expect("addr");
    let mut hashes = Vec::new();
    for node in &topo.nodes {
        let (status, metrics) = node
            .run(move || {
                (
                    http("GET", admin, "/api/status"),
                    http("GET", admin, "/metrics"),
                )
            })
            .expect("admin in node netns");
        assert_eq!(status.0, 200, "{status:?}");
        let status: serde_json::Value = serde_json::from_str(&status.1).expect("status JSON");
        let hash = status["vips"][0]["ring_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("ring_hash in {status}"))
            .to_owned();
        assert_eq!(hash.len(), 16, "{hash}");
        let line =
            format!("lb_xdp_vip_ring_hash{{vip=\"{vip}\",protocol=\"tcp\",hash=\"{hash}\"}} 1");
        assert!(metrics.1.contains(&line), "{line} in\n{}", metrics.1);
        hashes.push(hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // The table the hash stands for is the one every node forwards by.
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend {
            key: addr16(topo.real_ip(i)).0,
            weight: 1,
        })
        .collect();
    let table = maglev::build(&backends, 65537).expect("maglev");
    let client_ip = topo.client_ip();
    let ports: Vec<u16> = (0..TCP_FLOWS).map(|n| 50000 + n).collect();
    let predicted: Vec<String> = ports
        .iter()
        .map(|&port| {
            let flow = flow_key(SocketAddr::new(client_ip, port), vip, Protocol::Tcp);
            let slot = flow_hash(&flow, lb_common::hash::FLOW_HASH_SEED) % 65537;
            format!("real{}", table[slot as usize].expect("owned") + 1)
        })
        .collect();
    let observed: Vec<String> = topo
        .client
        .run(move || {
            ports
                .iter()
                .map(|&port| {
                    let mut conn = connect_from(client_ip, port, vip).expect("connect");
                    get_name(&mut conn).unwrap_or_else(|e| format!("failed: {e}"))
                })
                .collect()
        })
        .expect("client");
    assert_eq!(observed, predicted);
    for run in runs {
        run.stop(std::time::Duration::from_secs(10));
    }
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
