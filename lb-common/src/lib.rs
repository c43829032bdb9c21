//! Types shared by lb's XDP program (`lb-ebpf`) and userspace (`lb-userspace`).
//!
//! Everything here is `no_std` and `#[repr(C)]`: these are the exact bytes of BPF map keys and
//! values, so both sides must agree on layout. Padding is always explicit so the kernel never sees
//! uninitialised bytes in a key (hash maps compare keys bytewise).
#![no_std]

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
}

/// Names of the XDP programs in the object file.
pub mod program_names {
    /// The datapath: parses, counts, decides.
    pub const LB_XDP: &str = "lb_xdp";
    /// Returns `XDP_PASS` and nothing else: the baseline that benchmarks subtract.
    pub const BASELINE_PASS: &str = "lb_xdp_baseline_pass";
}

/// Capacity of [`map_names::PORT_STATS`]. When full, new keys are not counted per port (they are
/// still counted in [`PacketClass::PortStatsFull`]); existing keys keep counting.
pub const PORT_STATS_CAPACITY: u32 = 4096;
