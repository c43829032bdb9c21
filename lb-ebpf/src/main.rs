//! lb's XDP datapath.
//!
//! Reads top-down like the packet's journey: `lb_xdp` (below) parses the frame (`parse`), counts
//! it (`counters`), logs connection attempts, and returns the verdict. For now every verdict is
//! `XDP_PASS`; the L4 tier adds VIP lookup, target selection and encapsulation between parse and
//! verdict.
//!
//! On the host (clippy, `cargo build --workspace`) this crate is an empty binary: the real
//! object is built for `bpfel-unknown-none` by `lb-userspace/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod datapath {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use aya_log_ebpf::info;
    use lb_common::PacketClass;

    use crate::{
        counters::{count_class, count_malformed, count_port},
        parse::{Addrs, Frame, Packet, parse},
    };

    /// The datapath entry point, attached to the ingress interface.
    #[xdp]
    pub fn lb_xdp(ctx: XdpContext) -> u32 {
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        match parse(&ctx) {
            Ok(Frame::NonIp) => count_class(PacketClass::NonIp),
            Ok(Frame::Ip(pkt)) => account(&ctx, &pkt, frame_len),
            // Drop policy for malformed frames belongs to the L4 tier; until it decides, we
            // count them and let the kernel's own checks have them.
            Err(reason) => count_malformed(reason),
        }
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn account(ctx: &XdpContext, pkt: &Packet, frame_len: u64) {
        count_class(pkt.class());
        if pkt.fragment {
            count_class(match pkt.addrs {
                Addrs::V4 { .. } => PacketClass::Ipv4Fragment,
                Addrs::V6 { .. } => PacketClass::Ipv6Fragment,
            });
        }
        let Some(ports) = pkt.ports else {
            return;
        };
        count_port(pkt.proto, ports.dst, frame_len);
        if pkt.is_tcp_syn() {
            count_class(PacketClass::TcpSyn);
            match pkt.addrs {
                Addrs::V4 { src, dst } => info!(
                    ctx,
                    "new TCP connection {:i}:{} -> {:i}:{}", src, ports.src, dst, ports.dst
                ),
                Addrs::V6 { src, dst } => info!(
                    ctx,
                    "new TCP connection [{:i}]:{} -> [{:i}]:{}", src, ports.src, dst, ports.dst
                ),
            }
        }
    }

    /// Returns `XDP_PASS` and does nothing else: benchmarks measure it next to `lb_xdp` so the
    /// kernel's per-run overhead can be subtracted.
    #[xdp]
    pub fn lb_xdp_baseline_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable in a verified program: the verifier rejects code that could get here.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
