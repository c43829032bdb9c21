//! Flow tags: what the datapath recorded about each new flow to a `local` VIP, looked up by the
//! L7 tier when it accepts the connection (to send the true client, VIP and L4 flow id to
//! backends in a PROXY v2 header).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError},
};
use lb_common::{
    l4::{FAMILY_V4, FlowKey, FlowTag, addr_bytes, addr_words},
    map_names,
};

use super::{L4Error, Protocol, dataplane::addr16};

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
