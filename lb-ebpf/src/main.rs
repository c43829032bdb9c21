//! lb's XDP datapath.
//!
//! Reads top-down like the packet's journey, in `lb_xdp` below:
//! parse (`parse`) -> count (`counters`) -> VIP? (`vip`) -> source allowed? (`policy`: deny and
//! allow lists) -> pick a real (`select`: connection table, never for a TCP SYN; on a miss,
//! the per-source new-flow limit (`source_limit`), the Maglev ring, for a TCP segment without
//! SYN the VIP's previous ring (`second_chance`), and the flood guard (`flood_guard`)
//! deciding whether the flow enters the table) -> `local`: pass to the stack with a flow tag
//! (`local`), or `encap`: IPIP/IP6IP6 to the real (`encap`) and out via the kernel FIB
//! (`forward`).
//! ICMP "fragmentation needed" / "packet too big" about a VIP flow follows the flow (`icmp`).
//! `lb_decap` (`decap`) is the program real servers run to undo the encapsulation.
//!
//! On the host (clippy, `cargo build --workspace`) this crate is an empty binary: the real
//! object is built for `bpfel-unknown-none` by `lb-userspace/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod decap;
#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod flood_guard;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod local;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod second_chance;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod source_limit;
#[cfg(target_arch = "bpf")]
mod vip;

#[cfg(target_arch = "bpf")]
mod datapath {
    use aya_ebpf::{
        bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
    };
    use aya_log_ebpf::info;
    use lb_common::{
        PacketClass,
        l4::{
            FlowKey, GuardConfig, L4Event, VIP_CHECK_SOURCE_LISTS, VIP_FORWARD_LOCAL,
            VIP_FORWARD_MASK, VipMeta, addr_bytes,
        },
        stats::IPPROTO_TCP,
    };

    use crate::{
        clock::coarse_now,
        counters::{count_class, count_event, count_flow, count_malformed, count_port},
        decap::decapsulate,
        encap::{encapsulate, wrap_again},
        flood_guard,
        forward::send,
        icmp,
        local::record_flow_tag,
        maps::L4_GUARD,
        parse::{Addrs, Frame, Packet, parse},
        policy, second_chance,
        select::{self, Selected},
        source_limit, vip,
    };

    /// The datapath entry point, attached to the ingress interface.
    #[xdp]
    pub fn lb_xdp(ctx: XdpContext) -> u32 {
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        let pkt = match parse(&ctx) {
            Ok(Frame::NonIp) => {
                count_class(PacketClass::NonIp);
                return xdp_action::XDP_PASS;
            }
            Ok(Frame::Ip(pkt)) => pkt,
            Err(reason) => {
                // Nothing downstream could use a frame whose headers lie about themselves.
                count_malformed(reason);
                count_event(L4Event::MalformedDropped);
                return xdp_action::XDP_DROP;
            }
        };
        count_class(pkt.class());
        if pkt.fragment {
            count_class(match pkt.addrs {
                Addrs::V4 { .. } => PacketClass::Ipv4Fragment,
                Addrs::V6 { .. } => PacketClass::Ipv6Fragment,
            });
        }
        if pkt.is_tcp_syn() {
            count_class(PacketClass::TcpSyn);
        }

        let hit = match vip::lookup(&pkt) {
            Some(hit) => hit,
            None => {
                // A PMTU error about a VIP flow goes to that flow's real (see icmp.rs).
                if let Some((meta, flow)) = icmp::ptb_flow(&ctx, &pkt) {
                    return forward_ptb(&ctx, &pkt, &meta, &flow);
                }
                account_host_traffic(&ctx, &pkt, frame_len);
                return xdp_action::XDP_PASS;
            }
        };
        if pkt.fragment {
            count_event(L4Event::VipFragment);
        }
        if hit.forward & VIP_CHECK_SOURCE_LISTS != 0
            && let Some(guard) = L4_GUARD.get(0)
            && let Some(refused) = policy::refusal(&hit.flow, hit.index, guard)
        {
            count_event(refused);
            return xdp_action::XDP_DROP;
        }
        // One clock value per VIP packet (a helper call at most once a jiffy per CPU, see
        // clock.rs): entry stamps, the previous ring's window and the next-hop cache use it.
        let now = coarse_now();
        // A SYN opens a new connection even when its 5-tuple has an entry (a reused port):
        // it takes the current ring, like on every other node, and replaces the entry.
        let known = if pkt.is_tcp_syn() {
            None
        } else {
            select::established(&hit.flow, hit.index, now)
        };
        let selected = match known {
            Some(selected) => selected,
            None => {
                // The ring comes from `VIPS`, whole (see vip.rs); a VIP removed since the
                // index answered is host traffic again.
                let Some(meta) = hit.meta() else {
                    return xdp_action::XDP_PASS;
                };
                match new_flow(&pkt, &hit.flow, &meta, now) {
                    Ok(selected) => selected,
                    Err(refused) => {
                        count_event(refused);
                        return xdp_action::XDP_DROP;
                    }
                }
            }
        };
        count_flow(hit.index, selected.real_id, frame_len, selected.new_flow);

        if hit.forward & VIP_FORWARD_MASK == VIP_FORWARD_LOCAL {
            // Only where a flow opens: a flow the flood guard kept out of the table misses
            // on every packet, and its tag (flow id) must not change under the L7 tier.
            if selected.new_flow && opens_flow(&pkt) {
                record_flow_tag(&hit.flow, &selected);
            }
            count_event(L4Event::LocalPassed);
            return xdp_action::XDP_PASS;
        }
        // A second chance goes to the previous ring's real wrapped around the packet for the
        // current ring's real (see second_chance.rs).
        let outer = match selected.fallback {
            Some(fallback) => encapsulate(&ctx, &pkt, &fallback, selected.hash)
                .and_then(|inner| wrap_again(&ctx, &inner, &selected.real, selected.hash)),
            None => encapsulate(&ctx, &pkt, &selected.real, selected.hash),
        };
        match outer {
            Some(outer) => send(&ctx, &outer, selected.real_id, now),
            None => {
                count_event(L4Event::EncapFailedDropped);
                xdp_action::XDP_DROP
            }
        }
    }

    /// A VIP packet whose flow is not in the connection table (or a SYN): the per-source
    /// limit (for packets that open a flow), the Maglev pick (the previous ring's for a
    /// segment of a flow already open, when it differs), and the flood guard's say on whether
    /// the flow enters the table. `Err` is the drop counter.
    #[inline(always)]
    fn new_flow(
        pkt: &Packet,
        flow: &FlowKey,
        meta: &VipMeta,
        now: u64,
    ) -> Result<Selected, L4Event> {
        let guard: GuardConfig = L4_GUARD.get(0).copied().unwrap_or_default();
        let opens = opens_flow(pkt);
        if opens && !source_limit::admit(flow, &guard) {
            return Err(L4Event::SourceRateDropped);
        }
        let current = select::by_hash(flow, meta);
        let second_chance = match &current {
            Some(current) if !opens => second_chance::previous_real(meta, current, now),
            _ => None,
        };
        let used_previous = second_chance.is_some();
        let mut selected = second_chance.or(current).ok_or(L4Event::NoRealDropped)?;
        if used_previous {
            // Which of the two reals has the connection is decided on the real: nothing to
            // remember here.
        } else if flood_guard::allows_insert(guard.flood_new_flows_per_cpu) {
            select::remember(flow, meta, &selected, now);
        } else {
            count_event(L4Event::FloodGuardNotInserted);
            if pkt.is_tcp_syn() {
                select::forget(flow);
            }
        }
        // A segment of a flow already open is hashed again, not counted as a new flow (the
        // VIP's and real's new-flow counters stay a count of flows that opened).
        if opens {
            count_event(L4Event::NewFlow);
        } else {
            count_event(if used_previous {
                L4Event::PreviousRing
            } else {
                L4Event::MidFlowRehash
            });
            selected.new_flow = false;
        }
        Ok(selected)
    }

    /// A packet that starts a flow: a TCP SYN, or any UDP (or other) packet whose flow is not
    /// in the table. A TCP segment without SYN that misses belongs to a flow already open
    /// (evicted, kept out by the flood guard, or from before a restart): never rate limited.
    #[inline(always)]
    fn opens_flow(pkt: &Packet) -> bool {
        pkt.proto != IPPROTO_TCP || pkt.is_tcp_syn()
    }

    #[inline(always)]
    fn forward_ptb(ctx: &XdpContext, pkt: &Packet, meta: &VipMeta, flow: &FlowKey) -> u32 {
        // The error follows the flow's real (from the table, else as a segment of an open
        // flow: the previous ring's word first); it never creates a connection-table entry (a
        // spoofed ICMP error must not take a slot). A rare packet: the clock is read directly
        // (the per-CPU cache's code would not fit the stack next to the main path's).
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let Some(selected) = select::established(flow, meta.index, now).or_else(|| {
            let current = select::by_hash(flow, meta)?;
            Some(second_chance::previous_real(meta, &current, now).unwrap_or(current))
        }) else {
            return xdp_action::XDP_PASS;
        };
        if meta.forward & VIP_FORWARD_MASK == VIP_FORWARD_LOCAL {
            // The local stack owns the flow's socket and handles the error itself.
            return xdp_action::XDP_PASS;
        }
        count_event(L4Event::IcmpPtbForwarded);
        match encapsulate(ctx, pkt, &selected.real, selected.hash) {
            Some(outer) => send(ctx, &outer, selected.real_id, now),
            None => {
                count_event(L4Event::EncapFailedDropped);
                xdp_action::XDP_DROP
            }
        }
    }

    /// Per-port counters and connection logs for traffic this host's stack receives. VIP
    /// traffic is counted per VIP and real instead: a hash update and a log record per packet
    /// would cost more than the forwarding itself.
    #[inline(always)]
    fn account_host_traffic(ctx: &XdpContext, pkt: &Packet, frame_len: u64) {
        let Some(ports) = pkt.ports else {
            return;
        };
        count_port(pkt.proto, ports.dst, frame_len);
        if pkt.is_tcp_syn() {
            match pkt.addrs {
                Addrs::V4 { src, dst } => info!(
                    ctx,
                    "new TCP connection {:i}:{} -> {:i}:{}",
                    u32::from_be(src),
                    ports.src,
                    u32::from_be(dst),
                    ports.dst
                ),
                Addrs::V6 { src, dst } => info!(
                    ctx,
                    "new TCP connection [{:i}]:{} -> [{:i}]:{}",
                    addr_bytes(src),
                    ports.src,
                    addr_bytes(dst),
                    ports.dst
                ),
            }
        }
    }

    /// Real servers: strips IPIP / IP6IP6 so the inner packet reaches the VIP's socket.
    #[xdp]
    pub fn lb_decap(ctx: XdpContext) -> u32 {
        decapsulate(&ctx)
    }

    /// Returns `XDP_PASS` and does nothing else: benchmarks measure it next to `lb_xdp` so the
    /// kernel's per-run overhead can be subtracted.
    #[xdp]
    pub fn lb_xdp_baseline_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Sends every frame back out of the interface it arrived on. Benchmarks drive it with
    /// BPF_PROG_TEST_RUN in live-frames mode as a traffic generator that costs no skb.
    #[xdp]
    pub fn lb_xdp_tx(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
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
