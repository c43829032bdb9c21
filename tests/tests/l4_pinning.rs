//! Pinned maps and link, taken over by a second load: the program behind the pinned link is
//! replaced in place, the maps keep their contents (a connection-table entry survives), and
//! `L4Dataplane::recover` rebuilds exactly the ids the first owner had, including down reals,
//! reals removed from a VIP, and ids of a removed VIP (reserved, never handed out again).
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::HashMap as BpfHashMap;
use lb::{
    l4::{L4Config, L4Dataplane, Protocol, flow_key},
    xdp::{self, AttachMode, AttachedXdp, XdpError},
};
use lb_common::{
    l4::{FlowEntry, FlowKey},
    map_names,
};
use lb_tests::{
    NETNS_PREFIX,
    lb_maps::attached_prog_id,
    lb_run_netns::PinDir,
    netns::{Netns, VethEnd, require_root, veth_pair},
};

fn config(text: &str) -> L4Config {
    L4Config::parse(text, Path::new("pin.toml")).expect("config")
}

const VIP1: &str = "10.9.0.1:80";
const VIP2: &str = "10.9.0.2:53";
const VIP3: &str = "10.9.0.3:443";
const VIP4: &str = "10.9.0.4:443";

fn vip(addr: &str, protocol: &str, reals: &[(&str, bool)]) -> String {
    let mut text =
        format!("[[vip]]\naddress = \"{addr}\"\nprotocol = \"{protocol}\"\nring_size = 1009\n");
    for (real, down) in reals {
        text += &format!("[[vip.real]]\naddress = \"{real}\"\ndown = {down}\n");
    }
    text
}

fn attach(ns: &Netns, dir: &Path, mode: AttachMode) -> Result<AttachedXdp, XdpError> {
    let dir = dir.to_owned();
    ns.run(move || xdp::attach_pinned("a0", mode, &dir))
        .expect("thread in netns")
}

/// A VIP, its index, and its reals' ids.
type VipIds = (SocketAddr, u32, Vec<(IpAddr, u32)>);

/// Every (VIP, real) id and VIP index a dataplane knows for `config`.
fn ids(dp: &L4Dataplane, config: &L4Config) -> Vec<VipIds> {
    config
        .vips
        .iter()
        .map(|v| {
            let index = dp.vip_index(v.addr, v.protocol).expect("vip installed");
            let reals = v
                .reals
                .iter()
                .map(|r| {
                    let id = dp.real_id(v.addr, v.protocol, r.addr).expect("real id");
                    (r.addr, id)
                })
                .collect();
            (v.addr, index, reals)
        })
        .collect()
}

fn conntrack(
    attached: &mut AttachedXdp,
) -> BpfHashMap<&mut aya::maps::MapData, FlowKey, FlowEntry> {
    attached
        .ebpf_mut()
        .map_mut(map_names::CONNTRACK)
        .expect("CONNTRACK")
        .try_into()
        .expect("hash map")
}

#[test]
fn pinned_state_is_taken_over_with_the_same_ids() {
    if !require_root("pinned_state_is_taken_over_with_the_same_ids") {
        return;
    }
    let a = Netns::new(NETNS_PREFIX, "pa").expect("netns");
    let b = Netns::new(NETNS_PREFIX, "pb").expect("netns");
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
    let pins = PinDir::new("takeover");
    let dir = pins.path.clone();

    // First owner: fresh pins.
    let mut first = attach(&a, &dir, AttachMode::Skb).expect("attach with pins");
    assert!(!first.reused_link() && !first.reused_maps());
    assert!(dir.join("link_skb").exists() && dir.join(map_names::CONNTRACK).exists());
    let first_prog = attached_prog_id(&a, "a0").expect("attached");
    let mut dp = L4Dataplane::new();
    // History: VIP3 is removed later (its index and ids must not be confused with VIP4's),
    // 10.1.0.2 leaves VIP1, 10.1.0.3 is down.
    let history = [
        vip(
            VIP1,
            "tcp",
            &[("10.1.0.1", false), ("10.1.0.2", false), ("10.1.0.3", true)],
        ) + &vip(VIP2, "udp", &[("10.1.0.1", false)])
            + &vip(VIP3, "tcp", &[("10.1.0.4", false)]),
        vip(VIP1, "tcp", &[("10.1.0.1", false), ("10.1.0.3", true)])
            + &vip(VIP2, "udp", &[("10.1.0.1", false)]),
    ];
    for text in &history {
        dp.apply(first.ebpf_mut(), &config(text)).expect("apply");
    }
    let current = config(
        &(vip(VIP1, "tcp", &[("10.1.0.1", false), ("10.1.0.3", true)])
            + &vip(VIP2, "udp", &[("10.1.0.1", false)])
            + &vip(VIP4, "tcp", &[("10.1.0.4", false)])),
    );
    dp.apply(first.ebpf_mut(), &current).expect("apply");
    let before = ids(&dp, &current);
    let vip1: SocketAddr = VIP1.parse().expect("addr");
    let vip4: SocketAddr = VIP4.parse().expect("addr");
    let vip3: SocketAddr = VIP3.parse().expect("addr");
    let old_vip3_real = dp
        .real_id(vip3, Protocol::Tcp, "10.1.0.4".parse().expect("ip"))
        .expect("VIP3's real had an id");
    let vip4_real = dp
        .real_id(vip4, Protocol::Tcp, "10.1.0.4".parse().expect("ip"))
        .expect("id");
    assert_ne!(old_vip3_real, vip4_real, "ids are per (VIP, real)");
    let real1 = dp
        .real_id(vip1, Protocol::Tcp, "10.1.0.1".parse().expect("ip"))
        .expect("id");
    // An established flow, as the datapath records it.
    let flow = flow_key("10.7.0.9:40000".parse().expect("addr"), vip1, Protocol::Tcp);
    let entry = FlowEntry {
        real: real1,
        vip: dp.vip_index(vip1, Protocol::Tcp).expect("index") as u16,
        seen: 0,
        hash: 0x1234_5678,
    };
    conntrack(&mut first)
        .insert(flow, entry, 0)
        .expect("insert flow");

    // The first owner goes away leaving the fast path: still attached, still pinned.
    first.leave_pinned();
    assert_eq!(
        attached_prog_id(&a, "a0"),
        Some(first_prog),
        "left attached"
    );

    // Asking for another mode than the pinned link's is refused, and changes nothing.
    let refused = attach(&a, &dir, AttachMode::Native);
    assert!(
        matches!(refused, Err(XdpError::PinnedMode { pinned: "skb", .. })),
        "{:?}",
        refused.err()
    );
    assert_eq!(attached_prog_id(&a, "a0"), Some(first_prog));

    // Second owner: same pins, new program in place of the old one.
    let mut second = attach(&a, &dir, AttachMode::Auto).expect("take over");
    assert!(second.reused_link() && second.reused_maps());
    assert_eq!(second.mode(), "skb", "mode comes from the pinned link");
    let second_prog = attached_prog_id(&a, "a0").expect("still attached");
    assert_ne!(second_prog, first_prog, "program replaced behind the link");
    assert_eq!(
        conntrack(&mut second).get(&flow, 0).expect("flow survived"),
        entry
    );

    let mut recovered = L4Dataplane::recover(second.ebpf_mut()).expect("recover");
    assert_eq!(
        ids(&recovered, &current),
        before,
        "same ids before any apply"
    );
    recovered
        .apply(second.ebpf_mut(), &current)
        .expect("apply after recovery");
    assert_eq!(ids(&recovered, &current), before, "same ids after apply");
    assert_eq!(
        recovered.real_id(vip3, Protocol::Tcp, "10.1.0.4".parse().expect("ip")),
        None,
        "a removed VIP's ids are not attributed to anyone"
    );

    // A new real gets an id no one ever had (the removed VIP's id stays reserved).
    let grown = config(
        &(vip(
            VIP1,
            "tcp",
            &[("10.1.0.1", false), ("10.1.0.3", true), ("10.1.0.5", false)],
        ) + &vip(VIP2, "udp", &[("10.1.0.1", false)])
            + &vip(VIP4, "tcp", &[("10.1.0.4", false)])),
    );
    recovered.apply(second.ebpf_mut(), &grown).expect("apply");
    let new_id = recovered
        .real_id(vip1, Protocol::Tcp, "10.1.0.5".parse().expect("ip"))
        .expect("id");
    let highest_before = before
        .iter()
        .flat_map(|(_, _, reals)| reals.iter().map(|(_, id)| *id))
        .chain([old_vip3_real])
        .max()
        .expect("ids");
    assert_eq!(new_id, highest_before + 1);

    // Detaching removes the pins and the program.
    second.detach().expect("detach");
    assert!(!dir.exists(), "pins removed");
    assert_eq!(attached_prog_id(&a, "a0"), None, "detached");
}
