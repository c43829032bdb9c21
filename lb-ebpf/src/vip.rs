//! Is this packet for a VIP? Builds the VIP key and the flow key from the parsed packet.
//!
//! `VIP_INDEX` answers first: an array slot picked by a multiplicative hash of the key (an
//! inlined array access, no hash-table walk), holding the key it stands for and the VIP's
//! index and forwarding. Whatever it does not answer (empty slot, another key in it) is asked
//! of `VIPS`, the authority. The ring a new flow is hashed on is read from `VIPS` only
//! ([`VipHit::meta`]): one `VIPS` update flips it whole, while the index is written in place.
use lb_common::l4::{FlowKey, VipKey, VipMeta, vip_index_slot, vip_key_eq};

use crate::{
    maps::{VIP_INDEX, VIPS},
    parse::Packet,
};

/// A packet addressed to a VIP, with its flow key (client -> VIP).
pub struct VipHit {
    pub key: VipKey,
    /// `VipMeta::index` and `forward`.
    pub index: u32,
    pub forward: u32,
    /// The whole `VIPS` value, when the index did not answer.
    meta: Option<VipMeta>,
    pub flow: FlowKey,
}

impl VipHit {
    /// The VIP's `VIPS` value, ring included (new flows only: the established path needs
    /// none of it). `None` if the VIP went between the index and here (a config change).
    #[inline(always)]
    pub fn meta(&self) -> Option<VipMeta> {
        match self.meta {
            Some(meta) => Some(meta),
            // SAFETY: the value is copied out before any map update can free it.
            None => unsafe { VIPS.get(self.key) }.copied(),
        }
    }
}

/// Looks the packet up in `VIP_INDEX`, then `VIPS`. Fragments are matched on the (address,
/// protocol) alias with port 0 and keyed without ports, so every fragment of a datagram picks
/// the same real.
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
    let (index, forward, meta) = match VIP_INDEX.get(vip_index_slot(&key)) {
        Some(slot) if vip_key_eq(&slot.key, &key) => (slot.index, slot.forward, None),
        _ => {
            // SAFETY: the value is copied out before any map update can free it.
            let meta = *unsafe { VIPS.get(key) }?;
            (meta.index, meta.forward, Some(meta))
        }
    };
    Some(VipHit {
        key,
        index,
        forward,
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
