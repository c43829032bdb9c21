//! Every map the datapath uses. Names match `lb_common::map_names`; userspace finds them by name.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use lb_common::{Malformed, PORT_STATS_CAPACITY, PacketClass, PortKey, TrafficCounters};

#[map(name = "PORT_STATS")]
pub static PORT_STATS: PerCpuHashMap<PortKey, TrafficCounters> =
    PerCpuHashMap::with_max_entries(PORT_STATS_CAPACITY, 0);

#[map(name = "PACKET_CLASSES")]
pub static PACKET_CLASSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

#[map(name = "MALFORMED")]
pub static MALFORMED: PerCpuArray<u64> = PerCpuArray::with_max_entries(Malformed::COUNT, 0);
