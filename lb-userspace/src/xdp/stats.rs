//! Reading the datapath's per-CPU counters into one summed snapshot.
use std::{collections::BTreeMap, fmt};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    Malformed, PacketClass, PortKey, TrafficCounters, map_names,
    stats::{IPPROTO_TCP, IPPROTO_UDP},
};

use super::XdpError;

/// Counters summed over all CPUs at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpStats {
    pub ports: BTreeMap<PortKey, TrafficCounters>,
    pub classes: BTreeMap<&'static str, u64>,
    pub malformed: BTreeMap<&'static str, u64>,
}

impl XdpStats {
    /// Packets and bytes seen for (protocol, destination port); zero if never seen.
    pub fn port(&self, proto: u8, port: u16) -> TrafficCounters {
        self.ports
            .get(&PortKey::new(proto, port))
            .copied()
            .unwrap_or_default()
    }

    pub fn class(&self, class: PacketClass) -> u64 {
        self.classes.get(class.name()).copied().unwrap_or(0)
    }

    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.malformed.get(reason.name()).copied().unwrap_or(0)
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}

pub fn read_stats(ebpf: &Ebpf) -> Result<XdpStats, XdpError> {
    let map_err = |map| move |source| XdpError::Map { map, source };

    let ports_map: PerCpuHashMap<&MapData, PortKey, TrafficCounters> = ebpf
        .map(map_names::PORT_STATS)
        .ok_or(XdpError::MissingMap(map_names::PORT_STATS))?
        .try_into()
        .map_err(map_err(map_names::PORT_STATS))?;
    let mut ports = BTreeMap::new();
    for entry in ports_map.iter() {
        let (key, per_cpu) = entry.map_err(map_err(map_names::PORT_STATS))?;
        ports.insert(key, TrafficCounters::sum(per_cpu.iter()));
    }

    let classes = read_array(
        ebpf,
        map_names::PACKET_CLASSES,
        PacketClass::ALL.map(|c| c.name()),
    )?;
    let malformed = read_array(ebpf, map_names::MALFORMED, Malformed::ALL.map(|r| r.name()))?;
    Ok(XdpStats {
        ports,
        classes,
        malformed,
    })
}

/// Reads a per-CPU `u64` array whose index `i` is named `names[i]`.
fn read_array<const N: usize>(
    ebpf: &Ebpf,
    map: &'static str,
    names: [&'static str; N],
) -> Result<BTreeMap<&'static str, u64>, XdpError> {
    let array: PerCpuArray<&MapData, u64> = ebpf
        .map(map)
        .ok_or(XdpError::MissingMap(map))?
        .try_into()
        .map_err(|source| XdpError::Map { map, source })?;
    let mut out = BTreeMap::new();
    for (index, name) in (0u32..).zip(names) {
        match array.get(&index, 0) {
            Ok(per_cpu) => out.insert(name, per_cpu.iter().sum()),
            // A counter array pinned by an older lb may end before the newer counters.
            Err(aya::maps::MapError::KeyNotFound) => out.insert(name, 0),
            Err(source) => return Err(XdpError::Map { map, source }),
        };
    }
    Ok(out)
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}

/// The human-readable table `lb` prints.
impl fmt::Display for XdpStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:>6} {:>12} {:>14}",
            "proto", "port", "packets", "bytes"
        )?;
        for (key, counters) in &self.ports {
            writeln!(
                f,
                "{:<8} {:>6} {:>12} {:>14}",
                proto_name(key.proto),
                key.port,
                counters.packets,
                counters.bytes
            )?;
        }
        if self.ports.is_empty() {
            writeln!(f, "(no TCP/UDP packets yet)")?;
        }
        let nonzero = |map: &BTreeMap<&'static str, u64>| {
            map.iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(f, "classes:   {}", nonzero(&self.classes))?;
        write!(f, "malformed: {}", nonzero(&self.malformed))
    }
}
