//! L4 tier map layouts: VIPs, reals, Maglev rings, connection table, flow tags, L4 stats.
//!
//! Addresses are always 16 bytes, held as four `u32` words in memory order (the word values
//! are the address bytes read natively, so the bytes in the map are the address bytes): an
//! IPv4 address is the first word with the rest zero, and `family` says which it is. One
//! layout for both families keeps one code path; words keep keys aligned, so the datapath
//! copies and hashes them a word at a time instead of a byte at a time.

/// `family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// How many VIPs the datapath holds.
pub const MAX_VIPS: u32 = 32;
/// Largest Maglev ring (a prime); each VIP may use a smaller prime.
pub const MAX_RING_SIZE: u32 = 65537;
/// Default Maglev ring size per VIP.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// How many reals (across all VIPs) the datapath holds. Real id 0 is never used.
pub const MAX_REALS: u32 = 4096;
/// Ring slot value meaning "no real" (a VIP with no healthy real drops new flows).
pub const NO_REAL: u32 = 0;
/// Connection-table size (LRU; split across per-CPU LRU lists).
pub const CONNTRACK_CAPACITY: u32 = 131072;
/// LRU flow-tag table size (local VIPs).
pub const FLOW_TAGS_CAPACITY: u32 = 65536;
/// Networks each allow/deny trie holds (per family and list, all scopes together).
pub const SOURCE_LIST_CAPACITY: u32 = 16384;
/// Sources whose new-flow rate is tracked at once (LRU: the least recently seen is forgotten,
/// which hands it a full burst again).
pub const SOURCE_BUCKETS_CAPACITY: u32 = 65536;
// `L4_EVENTS` has room beyond the events it counts (see `crate::COUNTER_ARRAY_CAPACITY`).
const _: () = assert!(L4Event::COUNT <= crate::COUNTER_ARRAY_CAPACITY);

/// `ListKey*::scope` of a list that applies to every VIP (a VIP's own lists use its index).
pub const LIST_SCOPE_ALL: u32 = u32::MAX;
/// Bit of `GuardConfig::{deny,allow}_scopes` for the lists of every VIP; bit `i` (below
/// `MAX_VIPS`) is VIP index `i`'s own lists.
pub const LIST_SCOPE_ALL_BIT: u64 = 1 << 63;
const _: () = assert!(MAX_VIPS <= 63);

/// The scope bits a packet to VIP index `vip_index` is checked against.
#[inline(always)]
pub const fn list_scopes(vip_index: u32) -> u64 {
    1u64.wrapping_shl(vip_index) | LIST_SCOPE_ALL_BIT
}

/// Index of a ring slot in the flat `MAGLEV_RINGS` array. Each VIP owns two halves of
/// `MAX_RING_SIZE` slots; userspace fills the inactive half, then flips `VipMeta::active_half`.
pub const fn ring_index(vip_index: u32, half: u32, slot: u32) -> u32 {
    (vip_index * 2 + half) * MAX_RING_SIZE + slot
}
/// Size of the `MAGLEV_RINGS` array.
pub const MAGLEV_RINGS_LEN: u32 = MAX_VIPS * 2 * MAX_RING_SIZE;

/// `VIPS` key: destination address, port (host order) and protocol. A key with port 0 is the
/// fragment alias of an (address, protocol): fragments carry no ports after the first, so all
/// fragments of a VIP address are matched and hashed without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Forwarding of a VIP: IPIP/IP6IP6 to the chosen real (direct server return).
pub const VIP_FORWARD_ENCAP: u32 = 0;
/// Forwarding of a VIP: pass to this host's stack (the local L7 tier), recording a flow tag.
pub const VIP_FORWARD_LOCAL: u32 = 1;
/// The bits of `VipMeta::forward` that hold the forwarding; the others are checks.
pub const VIP_FORWARD_MASK: u32 = 0xff;

/// A check bit of `VipMeta::forward`: an allow or deny list (the VIP's own or every VIP's) is
/// in force, so each packet's source is looked up. Without it a VIP packet reads no list
/// state at all: the flag rides in the `VIPS` value (or its `VIP_INDEX` slot's copy) the packet
/// has already fetched. (A bit of
/// `forward`, not a field of its own: `VIPS` values pinned by an older `lb` hold 0 or 1 there,
/// which read as no checks; and splitting the word into byte fields measured ~8 ns slower on
/// the established-flow path.)
pub const VIP_CHECK_SOURCE_LISTS: u32 = 1 << 8;

/// `VIPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS` and into `MAGLEV_RINGS` (see [`ring_index`]).
    pub index: u32,
    /// [`VIP_FORWARD_ENCAP`] or [`VIP_FORWARD_LOCAL`] (low byte), and the checks in force
    /// for the VIP's packets: [`VIP_CHECK_SOURCE_LISTS`].
    pub forward: u32,
    /// Prime number of ring slots in use (<= [`MAX_RING_SIZE`]).
    pub ring_size: u32,
    /// Which half of the VIP's ring space is live (0 or 1).
    pub active_half: u32,
}

/// Slots of `VIP_INDEX` (a power of two), the direct-mapped copy of `VIPS`' keys.
pub const VIP_INDEX_SLOTS: u32 = 1 << VIP_INDEX_BITS;
const VIP_INDEX_BITS: u32 = 10;
// Every `VIPS` key (VIPs and their fragment aliases) could have a slot of its own.
const _: () = assert!(VIP_INDEX_SLOTS >= MAX_VIPS * 4);

/// `VIP_INDEX` value: a `VIPS` key with the parts of its value that do not flip with the
/// ring (`VipMeta::index` and `forward`), in the slot [`vip_index_slot`] gives the key. A
/// packet whose key equals the slot's is a VIP packet without a hash lookup; any other packet
/// (an empty slot has `family` 0, two keys may share a slot) asks `VIPS`, which stays the
/// authority: the ring (`ring_size`, `active_half`) is only ever read from there, whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub index: u32,
    pub forward: u32,
}

/// The `VIP_INDEX` slot of `key` (a multiplicative hash of its words), in kernel and userspace.
#[inline(always)]
pub const fn vip_index_slot(key: &VipKey) -> u32 {
    let mix = key.addr[0]
        ^ key.addr[1]
        ^ key.addr[2]
        ^ key.addr[3]
        ^ ((key.port as u32) << 16 | (key.proto as u32) << 8 | key.family as u32);
    mix.wrapping_mul(0x9e37_79b1) >> (32 - VIP_INDEX_BITS)
}

/// Whether two `VIPS` keys are equal, word by word (no `memcmp` in the datapath).
#[inline(always)]
pub const fn vip_key_eq(a: &VipKey, b: &VipKey) -> bool {
    (a.addr[0] ^ b.addr[0])
        | (a.addr[1] ^ b.addr[1])
        | (a.addr[2] ^ b.addr[2])
        | (a.addr[3] ^ b.addr[3])
        | ((a.port ^ b.port) as u32)
        | ((a.proto ^ b.proto) as u32)
        | ((a.family ^ b.family) as u32)
        == 0
}

/// `Real::flags`: the real takes no flows; established flows to it are re-hashed.
pub const REAL_DOWN: u8 = 1;

/// `Real::vip` of an id whose VIP was removed: the id stays reserved, nothing uses it.
pub const NO_VIP: u16 = u16::MAX;

/// `REALS` array value, indexed by real id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub addr: [u32; 4],
    pub family: u8,
    pub flags: u8,
    /// Index of the VIP this id belongs to (ids are per (VIP, real)), or [`NO_VIP`]. The
    /// datapath ignores it; a restarted `lb` reading pinned maps rebuilds its ids from it.
    pub vip: u16,
}

/// A flow as the client sent it: connection-table and flow-tag key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Connection-table value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub real: u32,
    /// The VIP's index. (A `u32` in pins of earlier builds, always below [`MAX_VIPS`]: on a
    /// little-endian host its low half is this field and its high half, 0, is `seen`.)
    pub vip: u16,
    /// When the flow last had a packet, in [`conntrack_tick`]s (wrapping); 0 = not known
    /// (an entry written by an earlier build), taken as fresh and stamped on its next packet.
    pub seen: u16,
    /// The flow's hash, kept so established packets need not hash again (it also picks the
    /// outer source address).
    pub hash: u32,
}

/// How long a connection-table entry stays valid without packets: 900 s, IPVS's timeout for
/// established TCP. An expired entry is a miss, so its flow's next packet is hashed again
/// (the previous ring still gets a say: see [`PrevRing`]); the LRU reclaims the slot.
pub const CONNTRACK_IDLE_TIMEOUT_S: u64 = 900;
/// One tick of `FlowEntry::seen`: 2^30 ns (about 1.07 s), a shift of the coarse clock.
pub const CONNTRACK_TICK_SHIFT: u32 = 30;
/// [`CONNTRACK_IDLE_TIMEOUT_S`] in ticks, rounded up.
pub const CONNTRACK_IDLE_TICKS: u16 =
    ((CONNTRACK_IDLE_TIMEOUT_S * 1_000_000_000).div_ceil(1 << CONNTRACK_TICK_SHIFT)) as u16;
const _: () = assert!((CONNTRACK_IDLE_TICKS as u32) < u16::MAX as u32 / 2);

/// The `FlowEntry::seen` stamp for monotonic time `now_ns`: never 0 (which means unknown).
#[inline(always)]
pub const fn conntrack_tick(now_ns: u64) -> u16 {
    let tick = (now_ns >> CONNTRACK_TICK_SHIFT) as u16;
    if tick == 0 { 1 } else { tick }
}

/// Ticks a stamp may be ahead of a reader's clock: another CPU may stamp the entry with a
/// later tick between this packet's clock reading and its lookup. Such an entry is fresh, not
/// 65535 ticks old.
pub const CONNTRACK_TICK_SKEW: u16 = 16;

/// Whether an entry stamped `seen` has gone idle longer than the timeout at tick `now`.
/// (Ticks wrap after ~19.5 h: an entry idle that long, within the skew, reads as fresh; the
/// LRU has long reclaimed such entries on a busy table.)
#[inline(always)]
pub const fn conntrack_expired(seen: u16, now: u16) -> bool {
    let age = now.wrapping_sub(seen);
    seen != 0 && age > CONNTRACK_IDLE_TICKS && age <= u16::MAX - CONNTRACK_TICK_SKEW
}

/// `PREV_RINGS` value, by VIP index: the ring the VIP had before its last change, for
/// second chances (a TCP segment without SYN whose flow is not in this node's table is sent
/// where that ring says, when it says another real than the current ring: the flow most
/// likely opened before the change, on this node or on another one behind the same ECMP).
/// All zero = none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrevRing {
    /// Monotonic time (`CLOCK_MONOTONIC`, ns) after which the previous ring is no longer used.
    pub until_ns: u64,
    /// Its prime size (0 = no previous ring).
    pub ring_size: u32,
    /// The VIP's ring half that holds it (the one not live).
    pub half: u32,
}

/// What the datapath records for each new flow to a `local` VIP, for the L7 tier's PROXY
/// header: the true client, the VIP it reached, the target Maglev chose, and a flow id that
/// ties L4 and L7 logs together. Keyed by the flow's [`FlowKey`] (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTag {
    pub client: [u32; 4],
    pub vip: [u32; 4],
    pub target: [u32; 4],
    pub flow_id: u64,
    pub client_port: u16,
    pub vip_port: u16,
    pub family: u8,
    pub target_family: u8,
    pub proto: u8,
    pub _pad: u8,
}

/// Per-VIP and per-real counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Source addresses of encapsulated packets: the prefix, with the low bits taken from the
/// flow hash so receivers spread flows over RX queues (RSS hashes the outer header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapConfig {
    /// IPv4 outer source: first two bytes from here, last two from the flow hash (a /16).
    pub src_v4: [u8; 4],
    /// IPv6 outer source: first twelve bytes from here, last four from the flow hash (a /96).
    pub src_v6: [u8; 16],
}

impl Default for EncapConfig {
    fn default() -> Self {
        Self {
            src_v4: [172, 16, 0, 0],
            src_v6: [
                0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0,
            ],
        }
    }
}

/// `L4_GUARD` value (one entry): the hardening knobs userspace sets from the backend file.
/// Every field at 0 turns its check off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// Flood guard: past this many new flows in a second on one CPU, that CPU forwards further
    /// new flows by hash only (no connection-table entry) until the second is over.
    pub flood_new_flows_per_cpu: u64,
    /// Per-source limit (GCRA): nanoseconds one source's new flows are apart at the sustained
    /// rate (1e9 / rate).
    pub source_interval_ns: u64,
    /// How far ahead of the sustained rate a source may run: (burst - 1) * interval.
    pub source_tolerance_ns: u64,
    /// Which scopes have a deny list (bits as in [`list_scopes`]); a packet whose scopes have
    /// none skips the trie lookups.
    pub deny_scopes: u64,
    /// Which scopes have an allow list.
    pub allow_scopes: u64,
    /// Room for later knobs that keeps the pinned map's value size.
    pub _reserved: [u64; 3],
}

/// Data of an IPv4 allow/deny trie key (after the LPM prefix length): scope (a VIP index or
/// [`LIST_SCOPE_ALL`], big-endian so it is matched first), then the address bytes. The prefix
/// length of an entry is 32 + the network's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListKeyV4 {
    pub scope: [u8; 4],
    pub addr: [u8; 4],
}

/// As [`ListKeyV4`], for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListKeyV6 {
    pub scope: [u8; 4],
    pub addr: [u8; 16],
}

/// `SOURCE_BUCKETS` key: a client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Address bytes as the words the maps hold.
pub const fn addr_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// Map words back to address bytes.
pub const fn addr_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// L4 decisions and events. Index into the `L4_EVENTS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Event {
    /// VIP packet whose flow was in the connection table.
    ConntrackHit = 0,
    /// VIP packet that started a new flow: a TCP SYN or a UDP packet that missed the table.
    NewFlow = 1,
    /// Flow found in the table with a real that is down or removed: chosen again.
    RealDownRehash = 2,
    /// VIP with no real in its ring: dropped.
    NoRealDropped = 3,
    /// Encapsulated and sent back out of the ingress interface (XDP_TX).
    EncapTx = 4,
    /// Encapsulated and redirected to another interface.
    EncapRedirect = 5,
    /// Encapsulated, but the kernel had no neighbour entry yet: passed to the stack, which
    /// resolves it and forwards.
    EncapFibPassed = 6,
    /// Could not make room for the outer header: dropped.
    EncapFailedDropped = 7,
    /// Passed to the local stack for a `local` VIP.
    LocalPassed = 8,
    /// Fragment of a VIP datagram, matched and hashed without ports.
    VipFragment = 9,
    /// ICMP "fragmentation needed" / "packet too big" about a VIP flow, sent to its real.
    IcmpPtbForwarded = 10,
    /// Malformed frame dropped (the reason is in `MALFORMED`).
    MalformedDropped = 11,
    /// Conntrack insert failed (should not happen with LRU): forwarded by hash only.
    ConntrackInsertFailed = 12,
    /// `lb_decap`: outer IPIP / IP6IP6 header stripped.
    Decapsulated = 13,
    /// VIP packet from a source on a deny list: dropped.
    DenyListDropped = 14,
    /// VIP packet from a source outside the allow list in force: dropped.
    AllowListDropped = 15,
    /// New flow (TCP SYN, UDP table miss) from a source over its new-flow rate: dropped.
    SourceRateDropped = 16,
    /// New flow forwarded by hash without a connection-table entry: the flood guard's
    /// per-CPU rate was exceeded.
    FloodGuardNotInserted = 17,
    /// A TCP segment without SYN whose flow was not in the table (its entry evicted, its
    /// real drained or down, kept out by the flood guard, or from before a restart): hashed
    /// again and remembered, not counted as a new flow.
    MidFlowRehash = 18,
    /// A TCP segment without SYN whose flow was not in the table, sent to the real of the
    /// VIP's previous ring (which differs from the current ring's) wrapped around the packet
    /// for the current ring's real: a second chance (see `PrevRing`). Counted per packet
    /// (such flows are not remembered), instead of `MidFlowRehash`.
    PreviousRing = 19,
    /// A connection-table entry idle past `CONNTRACK_IDLE_TIMEOUT_S`: treated as a miss.
    ConntrackExpired = 20,
    /// `lb_decap`: a second chance (wrapped twice) whose connection this host does not have,
    /// sent on to the other real.
    SecondChanceForwarded = 21,
}

impl L4Event {
    pub const COUNT: u32 = 22;
    pub const ALL: [L4Event; Self::COUNT as usize] = [
        Self::ConntrackHit,
        Self::NewFlow,
        Self::RealDownRehash,
        Self::NoRealDropped,
        Self::EncapTx,
        Self::EncapRedirect,
        Self::EncapFibPassed,
        Self::EncapFailedDropped,
        Self::LocalPassed,
        Self::VipFragment,
        Self::IcmpPtbForwarded,
        Self::MalformedDropped,
        Self::ConntrackInsertFailed,
        Self::Decapsulated,
        Self::DenyListDropped,
        Self::AllowListDropped,
        Self::SourceRateDropped,
        Self::FloodGuardNotInserted,
        Self::MidFlowRehash,
        Self::PreviousRing,
        Self::ConntrackExpired,
        Self::SecondChanceForwarded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::ConntrackHit => "conntrack_hit",
            Self::NewFlow => "new_flow",
            Self::RealDownRehash => "real_down_rehash",
            Self::NoRealDropped => "no_real_dropped",
            Self::EncapTx => "encap_tx",
            Self::EncapRedirect => "encap_redirect",
            Self::EncapFibPassed => "encap_fib_passed",
            Self::EncapFailedDropped => "encap_failed_dropped",
            Self::LocalPassed => "local_passed",
            Self::VipFragment => "vip_fragment",
            Self::IcmpPtbForwarded => "icmp_ptb_forwarded",
            Self::MalformedDropped => "malformed_dropped",
            Self::ConntrackInsertFailed => "conntrack_insert_failed",
            Self::Decapsulated => "decapsulated",
            Self::DenyListDropped => "deny_list_dropped",
            Self::AllowListDropped => "allow_list_dropped",
            Self::SourceRateDropped => "source_rate_dropped",
            Self::FloodGuardNotInserted => "flood_guard_not_inserted",
            Self::MidFlowRehash => "mid_flow_rehash",
            Self::PreviousRing => "previous_ring",
            Self::ConntrackExpired => "conntrack_expired",
            Self::SecondChanceForwarded => "second_chance_forwarded",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], padding explicit.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::Real {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::PrevRing {}
    unsafe impl aya::Pod for super::FlowTag {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::EncapConfig {}
    unsafe impl aya::Pod for super::GuardConfig {}
    unsafe impl aya::Pod for super::ListKeyV4 {}
    unsafe impl aya::Pod for super::ListKeyV6 {}
    unsafe impl aya::Pod for super::SourceKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_entries_expire_after_the_idle_timeout_only() {
        let now = conntrack_tick(5_000 * 1_000_000_000);
        assert!(!conntrack_expired(now, now));
        assert!(!conntrack_expired(
            now.wrapping_sub(CONNTRACK_IDLE_TICKS),
            now
        ));
        assert!(conntrack_expired(
            now.wrapping_sub(CONNTRACK_IDLE_TICKS + 1),
            now
        ));
        assert!(
            !conntrack_expired(0, now),
            "0: stamped by an earlier build, fresh"
        );
        // Stamped by another CPU a tick after this packet read the clock: fresh.
        assert!(!conntrack_expired(now.wrapping_add(1), now));
        assert!(!conntrack_expired(
            now.wrapping_add(CONNTRACK_TICK_SKEW),
            now
        ));
        // Ticks never stamp 0, even where the clock's tick is 0 modulo 2^16.
        assert_eq!(conntrack_tick(0), 1);
        assert_eq!(conntrack_tick(1 << (CONNTRACK_TICK_SHIFT + 16)), 1);
        // The timeout in ticks covers 900 s.
        assert!(u64::from(CONNTRACK_IDLE_TICKS) << CONNTRACK_TICK_SHIFT >= 900_000_000_000);
    }
}
