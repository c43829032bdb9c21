//! Every map the datapath uses. Names match `lb_common::map_names`; userspace finds them by name.
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    COUNTER_ARRAY_CAPACITY, PORT_STATS_CAPACITY, PortKey, TrafficCounters,
    l4::{
        CONNTRACK_CAPACITY, EncapConfig, FLOW_TAGS_CAPACITY, FlowCounters, FlowEntry, FlowKey,
        FlowTag, GuardConfig, ListKeyV4, ListKeyV6, MAGLEV_RINGS_LEN, MAX_REALS, MAX_VIPS,
        PrevRing, Real, SOURCE_BUCKETS_CAPACITY, SOURCE_LIST_CAPACITY, SourceKey, VIP_INDEX_SLOTS,
        VipKey, VipMeta, VipSlot,
    },
};

#[map(name = "PORT_STATS")]
pub static PORT_STATS: PerCpuHashMap<PortKey, TrafficCounters> =
    PerCpuHashMap::with_max_entries(PORT_STATS_CAPACITY, 0);

#[map(name = "PACKET_CLASSES")]
pub static PACKET_CLASSES: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(COUNTER_ARRAY_CAPACITY, 0);

#[map(name = "MALFORMED")]
pub static MALFORMED: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ARRAY_CAPACITY, 0);

// ---- L4 tier (written by userspace's l4 module, read per packet) ----

#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

/// The direct-mapped copy of `VIPS`' keys, asked first (see `vip.rs`).
#[map(name = "VIP_INDEX")]
pub static VIP_INDEX: Array<VipSlot> = Array::with_max_entries(VIP_INDEX_SLOTS, 0);

#[map(name = "REALS")]
pub static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

#[map(name = "MAGLEV_RINGS")]
pub static MAGLEV_RINGS: Array<u32> = Array::with_max_entries(MAGLEV_RINGS_LEN, 0);

/// Each VIP's ring before its last change, for second chances (see `second_chance.rs`); the
/// ring itself is the VIP's idle half of `MAGLEV_RINGS`.
#[map(name = "PREV_RINGS")]
pub static PREV_RINGS: Array<PrevRing> = Array::with_max_entries(MAX_VIPS, 0);

/// One table seen by every CPU, with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): eviction and
/// insertion stay CPU-local like a per-CPU map, but a flow is found whichever CPU its next
/// packet lands on (RSS reconfiguration, RPS, veth), so it never silently changes real.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(CONNTRACK_CAPACITY, BPF_F_NO_COMMON_LRU);

#[map(name = "FLOW_TAGS")]
pub static FLOW_TAGS: LruHashMap<FlowKey, FlowTag> =
    LruHashMap::with_max_entries(FLOW_TAGS_CAPACITY, 0);

#[map(name = "ENCAP_CONFIG")]
pub static ENCAP_CONFIG: Array<EncapConfig> = Array::with_max_entries(1, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "REAL_STATS")]
pub static REAL_STATS: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

#[map(name = "L4_EVENTS")]
pub static L4_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ARRAY_CAPACITY, 0);

// ---- Hardening (issue 16): source lists, per-source new-flow limit, flood guard ----

#[map(name = "L4_GUARD")]
pub static L4_GUARD: Array<GuardConfig> = Array::with_max_entries(1, 0);

/// Client networks per scope (see `policy.rs`); the value byte is unused.
#[map(name = "DENY_V4")]
pub static DENY_V4: LpmTrie<ListKeyV4, u8> = LpmTrie::with_max_entries(SOURCE_LIST_CAPACITY, 0);
#[map(name = "DENY_V6")]
pub static DENY_V6: LpmTrie<ListKeyV6, u8> = LpmTrie::with_max_entries(SOURCE_LIST_CAPACITY, 0);
#[map(name = "ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<ListKeyV4, u8> = LpmTrie::with_max_entries(SOURCE_LIST_CAPACITY, 0);
#[map(name = "ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<ListKeyV6, u8> = LpmTrie::with_max_entries(SOURCE_LIST_CAPACITY, 0);

/// Each source's GCRA theoretical arrival time (see `source_limit.rs`). One table for all
/// CPUs, so a source's rate is its rate whichever CPU its packets land on.
#[map(name = "SOURCE_BUCKETS")]
pub static SOURCE_BUCKETS: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(SOURCE_BUCKETS_CAPACITY, 0);

/// Each CPU's flood-guard window (see `flood_guard.rs`).
#[map(name = "FLOOD_WINDOWS")]
pub static FLOOD_WINDOWS: PerCpuArray<FloodWindow> = PerCpuArray::with_max_entries(1, 0);

/// New flows one CPU saw since `start_ns` (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FloodWindow {
    pub start_ns: u64,
    pub new_flows: u64,
}

/// Each CPU's last coarse clock reading and the jiffy it was taken in (see `clock.rs`).
#[map(name = "COARSE_CLOCK")]
pub static COARSE_CLOCK: PerCpuArray<CoarseClock> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CoarseClock {
    pub jiffies: u64,
    pub ns: u64,
}

/// Per-CPU cache of `bpf_fib_lookup` answers per real (see `forward.rs`).
#[map(name = "NEXTHOPS")]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// A FIB answer for one real, valid until `expires_ns` (coarse monotonic clock) for packets
/// arriving on `ingress` no longer than `max_len` (the longest the FIB accepted).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    pub expires_ns: u64,
    pub ingress: u32,
    pub egress: u32,
    pub max_len: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 2],
}
