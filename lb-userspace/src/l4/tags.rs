//! Flow tags: what the datapath recorded about each new flow to a `local` VIP, looked up by the
//! L7 tier when it accepts the connection (to send the true client, VIP and L4 flow id to
//! backends in a PROXY v2 header).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError},
};
use lb_common::{
    l4::{FAMILY_V4, FlowKey, FlowTag, addr_bytes, addr_words},
    map_names,
};

use super::{Forward, L4Config, L4Error, Protocol, dataplane::addr16};

/// A flow tag in Rust terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTagInfo {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// The target the datapath's Maglev ring picked for this flow.
    pub target: IpAddr,
    /// Random 64-bit id shared by the L4 and L7 logs of this flow.
    pub flow_id: u64,
}

fn ip(words: [u32; 4], family: u8) -> IpAddr {
    let bytes = addr_bytes(words);
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// The flow key of a connection from `client` to `vip`, as the datapath builds it.
pub fn flow_key(client: SocketAddr, vip: SocketAddr, protocol: Protocol) -> FlowKey {
    let (src, family) = addr16(client.ip());
    let (dst, _) = addr16(vip.ip());
    FlowKey {
        src: addr_words(src),
        dst: addr_words(dst),
        src_port: client.port(),
        dst_port: vip.port(),
        proto: protocol.number(),
        family,
        _pad: [0; 2],
    }
}

/// Looks up the tag of the flow `client -> vip`; `None` if the datapath recorded none (not a
/// local VIP, or evicted from the LRU table).
pub fn lookup_flow_tag(
    ebpf: &Ebpf,
    client: SocketAddr,
    vip: SocketAddr,
    protocol: Protocol,
) -> Result<Option<FlowTagInfo>, L4Error> {
    let name = map_names::FLOW_TAGS;
    let map: BpfHashMap<&MapData, FlowKey, FlowTag> = ebpf
        .map(name)
        .ok_or(L4Error::MissingMap(name))?
        .try_into()
        .map_err(|source| L4Error::Map { map: name, source })?;
    match map.get(&flow_key(client, vip, protocol), 0) {
        Ok(tag) => Ok(Some(FlowTagInfo {
            client: SocketAddr::new(ip(tag.client, tag.family), tag.client_port),
            vip: SocketAddr::new(ip(tag.vip, tag.family), tag.vip_port),
            target: ip(tag.target, tag.target_family),
            flow_id: tag.flow_id,
        })),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(L4Error::Map { map: name, source }),
    }
}

/// A handle of its own on the datapath's flow-tag map, for the L7 tier's accept paths: opened
/// by map id, so it needs neither the `Ebpf` object (which the manager keeps for updates) nor
/// pinning, and lookups (`&self`, one syscall) may run on any thread.
///
/// Only flows to `local` VIPs are tagged, so only connections accepted on one of those
/// addresses are looked up: the others (listeners on plain addresses, or reached without the
/// XDP tier) cost no syscall. The set is replaced whole when the L4 configuration is applied
/// and read without a lock by every accept.
pub struct FlowTags {
    map: BpfHashMap<MapData, FlowKey, FlowTag>,
    /// The TCP `local` VIPs (address and port), as [`FlowTags::set_local_vips`] last set them.
    local_vips: ArcSwap<Vec<SocketAddr>>,
    /// Map lookups made (see [`FlowTags::lookups`]).
    lookups: AtomicU64,
}

impl FlowTags {
    /// Opens the FLOW_TAGS map of the loaded object `ebpf`. No address is looked up until
    /// [`FlowTags::set_local_vips`] names the local VIPs.
    pub fn open(ebpf: &Ebpf) -> Result<Self, L4Error> {
        let name = map_names::FLOW_TAGS;
        let map_error = |source| L4Error::Map { map: name, source };
        let id = match ebpf.map(name).ok_or(L4Error::MissingMap(name))? {
            aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) => {
                data.info().map_err(map_error)?.id()
            }
            _ => return Err(L4Error::MissingMap(name)),
        };
        let data = MapData::from_id(id).map_err(map_error)?;
        let map = BpfHashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_error)?;
        Ok(Self {
            map,
            local_vips: ArcSwap::from_pointee(Vec::new()),
            lookups: AtomicU64::new(0),
        })
    }

    /// Looks up, from now on, connections to the TCP VIPs `config` forwards `local` (the only
    /// flows the datapath tags), and no others.
    pub fn set_local_vips(&self, config: &L4Config) {
        let vips: Vec<SocketAddr> = config
            .vips
            .iter()
            .filter(|v| v.forward == Forward::Local && v.protocol == Protocol::Tcp)
            .map(|v| unmapped(v.addr))
            .collect();
        self.local_vips.store(std::sync::Arc::new(vips));
    }

    /// The flow id the datapath gave the TCP connection `client -> local` (`local` being the
    /// VIP); `None` when it recorded none (not a local VIP's flow, or evicted). A `local`
    /// address that is no local VIP is answered without a lookup.
    pub fn tcp_flow_id(&self, client: SocketAddr, local: SocketAddr) -> Option<u64> {
        let local = unmapped(local);
        if !self.local_vips.load().contains(&local) {
            return None;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let key = flow_key(unmapped(client), local, Protocol::Tcp);
        self.map.get(&key, 0).ok().map(|tag| tag.flow_id)
    }

    /// How many map lookups (syscalls) [`FlowTags::tcp_flow_id`] has made.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

/// IPv4 clients of a dual-stack socket show up as `::ffff:a.b.c.d`; the datapath keys them as
/// IPv4.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}
