//! Reading the L4 counters (per VIP, per real, events) into one summed snapshot.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lb_common::{
    l4::{FlowCounters, L4Event},
    map_names,
};

use super::{L4Dataplane, L4Error, Protocol};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipStat {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub counters: FlowCounters,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealStat {
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub counters: FlowCounters,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Stats {
    pub vips: Vec<VipStat>,
    pub reals: Vec<RealStat>,
    pub events: BTreeMap<&'static str, u64>,
}

impl L4Stats {
    pub fn event(&self, event: L4Event) -> u64 {
        self.events.get(event.name()).copied().unwrap_or(0)
    }

    /// Counters of `real` under the VIP at `vip`; zero if unknown.
    pub fn real(&self, vip: SocketAddr, real: IpAddr) -> FlowCounters {
        self.reals
            .iter()
            .find(|r| r.vip == vip && r.addr == real)
            .map(|r| r.counters)
            .unwrap_or_default()
    }

    pub fn vip(&self, vip: SocketAddr) -> FlowCounters {
        self.vips
            .iter()
            .find(|v| v.addr == vip)
            .map(|v| v.counters)
            .unwrap_or_default()
    }
}

fn per_cpu_array<'a, T: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<&'a MapData, T>, L4Error> {
    ebpf.map(name)
        .ok_or(L4Error::MissingMap(name))?
        .try_into()
        .map_err(|source| L4Error::Map { map: name, source })
}

fn sum_counters(values: &[FlowCounters]) -> FlowCounters {
    values
        .iter()
        .fold(FlowCounters::default(), |a, v| FlowCounters {
            packets: a.packets + v.packets,
            bytes: a.bytes + v.bytes,
            new_flows: a.new_flows + v.new_flows,
        })
}

/// The `L4_EVENTS` counters, by name.
pub fn read_l4_events(ebpf: &Ebpf) -> Result<BTreeMap<&'static str, u64>, L4Error> {
    let name = map_names::L4_EVENTS;
    let events: PerCpuArray<&MapData, u64> = per_cpu_array(ebpf, name)?;
    let mut out = BTreeMap::new();
    for event in L4Event::ALL {
        match events.get(&(event as u32), 0) {
            Ok(values) => out.insert(event.name(), values.iter().sum()),
            // An `L4_EVENTS` pinned by an older lb may end before the newer events.
            Err(aya::maps::MapError::KeyNotFound) => out.insert(event.name(), 0),
            Err(source) => return Err(L4Error::Map { map: name, source }),
        };
    }
    Ok(out)
}

pub fn read_l4_stats(ebpf: &Ebpf, dataplane: &L4Dataplane) -> Result<L4Stats, L4Error> {
    let vip_map: PerCpuArray<&MapData, FlowCounters> = per_cpu_array(ebpf, map_names::VIP_STATS)?;
    let real_map: PerCpuArray<&MapData, FlowCounters> = per_cpu_array(ebpf, map_names::REAL_STATS)?;
    let get = |map: &PerCpuArray<&MapData, FlowCounters>, name: &'static str, index: u32| {
        map.get(&index, 0)
            .map(|v| sum_counters(&v))
            .map_err(|source| L4Error::Map { map: name, source })
    };
    let mut vips = Vec::new();
    for (addr, protocol, index) in dataplane.installed_vips() {
        vips.push(VipStat {
            addr,
            protocol,
            counters: get(&vip_map, map_names::VIP_STATS, index)?,
        });
    }
    let mut reals = Vec::new();
    for id in 1..lb_common::l4::MAX_REALS {
        let Some((vip, protocol, addr)) = dataplane.real(id) else {
            break;
        };
        reals.push(RealStat {
            vip,
            protocol,
            addr,
            counters: get(&real_map, map_names::REAL_STATS, id)?,
        });
    }
    Ok(L4Stats {
        vips,
        reals,
        events: read_l4_events(ebpf)?,
    })
}

impl fmt::Display for L4Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<28} {:>10} {:>12} {:>10}",
            "vip", "real", "packets", "bytes", "new flows"
        )?;
        for v in &self.vips {
            let proto = format!("{:?}", v.protocol).to_lowercase();
            writeln!(
                f,
                "{:<28} {:<28} {:>10} {:>12} {:>10}",
                format!("{}/{proto}", v.addr),
                "*",
                v.counters.packets,
                v.counters.bytes,
                v.counters.new_flows
            )?;
            for r in self
                .reals
                .iter()
                .filter(|r| r.vip == v.addr && r.protocol == v.protocol)
            {
                writeln!(
                    f,
                    "{:<28} {:<28} {:>10} {:>12} {:>10}",
                    "", r.addr, r.counters.packets, r.counters.bytes, r.counters.new_flows
                )?;
            }
        }
        let events: Vec<String> = self
            .events
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        write!(f, "l4 events: {}", events.join(" "))
    }
}
