//! Is this packet for a VIP? Builds the VIP key and the flow key from the parsed packet.
use lb_common::l4::{FlowKey, VipKey, VipMeta};

use crate::{maps::VIPS, parse::Packet};

/// A packet addressed to a VIP, with its flow key (client -> VIP).
pub struct VipHit {
    pub meta: VipMeta,
    pub flow: FlowKey,
}

/// Looks the packet up in `VIPS`. Fragments are matched on the (address, protocol) alias with
/// port 0 and keyed without ports, so every fragment of a datagram picks the same real.
#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<VipHit> {
    let (src, dst, family) = pkt.addrs16();
    let (src_port, dst_port) = if pkt.fragment {
        (0, 0)
    } else {
        let ports = pkt.ports?;
        (ports.src, ports.dst)
    };
    let key = VipKey {
        addr: dst,
        port: dst_port,
        proto: pkt.proto,
        family,
    };
    // SAFETY: the value is copied out before any map update can free it.
    let meta = *unsafe { VIPS.get(key) }?;
    Some(VipHit {
        meta,
        flow: FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto: pkt.proto,
            family,
            _pad: [0; 2],
        },
    })
}
