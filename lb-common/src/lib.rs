//! Types shared by lb's XDP program (`lb-ebpf`) and userspace (`lb-userspace`).
//!
//! Everything here is `no_std` and `#[repr(C)]`: these are the exact bytes of BPF map keys and
//! values, so both sides must agree on layout. Padding is always explicit so the kernel never sees
//! uninitialised bytes in a key (hash maps compare keys bytewise).
#![no_std]

pub mod hash;
pub mod l4;
pub mod stats;

pub use stats::{Malformed, PacketClass, PortKey, TrafficCounters};

/// Names of the maps the XDP program defines; userspace looks them up by these names.
pub mod map_names {
    /// Per-CPU hash: [`crate::PortKey`] -> [`crate::TrafficCounters`].
    pub const PORT_STATS: &str = "PORT_STATS";
    /// Per-CPU array indexed by [`crate::PacketClass`]: packet counts.
    pub const PACKET_CLASSES: &str = "PACKET_CLASSES";
    /// Per-CPU array indexed by [`crate::Malformed`]: packet counts.
    pub const MALFORMED: &str = "MALFORMED";
    /// Hash: [`crate::l4::VipKey`] -> [`crate::l4::VipMeta`].
    pub const VIPS: &str = "VIPS";
    /// Array of [`crate::l4::VipSlot`], direct-mapped by [`crate::l4::vip_index_slot`]: the
    /// datapath's first look for a VIP (`VIPS` answers what it misses). Not pinned.
    pub const VIP_INDEX: &str = "VIP_INDEX";
    /// Array indexed by real id: [`crate::l4::Real`].
    pub const REALS: &str = "REALS";
    /// Array of real ids, `MAX_VIPS * 2` rings of `MAX_RING_SIZE` slots.
    pub const MAGLEV_RINGS: &str = "MAGLEV_RINGS";
    /// LRU hash with per-CPU LRU lists: [`crate::l4::FlowKey`] -> [`crate::l4::FlowEntry`].
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Array indexed by VIP index: [`crate::l4::PrevRing`], the ring before the last change.
    pub const PREV_RINGS: &str = "PREV_RINGS";
    /// LRU hash: [`crate::l4::FlowKey`] -> [`crate::l4::FlowTag`] (local VIPs).
    pub const FLOW_TAGS: &str = "FLOW_TAGS";
    /// Array with one [`crate::l4::EncapConfig`].
    pub const ENCAP_CONFIG: &str = "ENCAP_CONFIG";
    /// Per-CPU arrays of [`crate::l4::FlowCounters`], by VIP index and by real id.
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    /// Per-CPU array indexed by [`crate::l4::L4Event`].
    pub const L4_EVENTS: &str = "L4_EVENTS";
    /// Array with one [`crate::l4::GuardConfig`]: flood guard, per-source limit, which lists
    /// are in force.
    pub const L4_GUARD: &str = "L4_GUARD";
    /// LPM tries of client networks, keyed by [`crate::l4::ListKeyV4`] /
    /// [`crate::l4::ListKeyV6`] after the prefix length; the value (one byte) is unused.
    pub const DENY_V4: &str = "DENY_V4";
    pub const DENY_V6: &str = "DENY_V6";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// LRU hash: [`crate::l4::SourceKey`] -> the source's GCRA theoretical arrival time (ns).
    pub const SOURCE_BUCKETS: &str = "SOURCE_BUCKETS";
    /// Per-CPU array with one flood-guard window (start, new flows in it).
    pub const FLOOD_WINDOWS: &str = "FLOOD_WINDOWS";
}

/// Names of the XDP programs in the object file.
pub mod program_names {
    /// The datapath: parses, counts, decides.
    pub const LB_XDP: &str = "lb_xdp";
    /// Returns `XDP_PASS` and nothing else: the baseline that benchmarks subtract.
    pub const BASELINE_PASS: &str = "lb_xdp_baseline_pass";
    /// Runs on real servers: strips IPIP / IP6IP6 so the inner packet reaches the VIP socket.
    pub const DECAP: &str = "lb_decap";
    /// Returns `XDP_TX`: the benchmarks' traffic generator (live-frames test runs).
    pub const TX: &str = "lb_xdp_tx";
}

/// Capacity of the counter arrays indexed by an enum (`PACKET_CLASSES`, `MALFORMED`,
/// `L4_EVENTS`). Larger than the enums need: a pinned map is reused only with its exact
/// capacity, so sizing by the enum's length would make every new counter invalidate the pins
/// of a running fast path. Raising this constant is such a layout change; avoid it.
pub const COUNTER_ARRAY_CAPACITY: u32 = 64;
const _: () = assert!(PacketClass::COUNT <= COUNTER_ARRAY_CAPACITY);
const _: () = assert!(Malformed::COUNT <= COUNTER_ARRAY_CAPACITY);

/// Capacity of [`map_names::PORT_STATS`]. When full, new keys are not counted per port (they are
/// still counted in [`PacketClass::PortStatsFull`]); existing keys keep counting.
pub const PORT_STATS_CAPACITY: u32 = 4096;
