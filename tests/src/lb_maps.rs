//! Reading a running `lb`'s L4 maps from outside the process: the maps of the XDP program
//! attached to an interface (found through `ip -j link`), or the maps pinned under a directory.
//! Tests use this to check what the datapath will actually do, not what userspace believes.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    os::fd::AsFd as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo},
    programs::loaded_programs,
};
use lb_common::{
    l4::{FAMILY_V4, FAMILY_V6, NO_REAL, Real, VipKey, VipMeta, addr_words, ring_index},
    map_names,
};

use crate::netns::Netns;

/// Id of the XDP program attached to `iface` in `ns` (any mode), if one is.
pub fn attached_prog_id(ns: &Netns, iface: &str) -> Option<u32> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&out).ok()?;
    let xdp = &json[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
}

/// The L4 maps of one datapath instance, by name.
pub struct LbMaps {
    maps: HashMap<String, MapData>,
}

const WANTED: [&str; 3] = [map_names::VIPS, map_names::REALS, map_names::MAGLEV_RINGS];

impl LbMaps {
    /// The maps program `prog_id` uses.
    pub fn of_program(prog_id: u32) -> Result<Self> {
        let info = loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == prog_id)
            .ok_or_else(|| anyhow!("no loaded program with id {prog_id}"))?;
        let ids = info
            .map_ids()
            .context("program map ids")?
            .ok_or_else(|| anyhow!("kernel does not report map ids"))?;
        let mut maps = HashMap::new();
        for id in ids {
            let name = MapInfo::from_id(id)
                .context("map info")?
                .name_as_str()
                .unwrap_or_default()
                .to_owned();
            if WANTED.contains(&name.as_str()) {
                maps.insert(name, MapData::from_id(id).context("open map by id")?);
            }
        }
        Self::complete(maps)
    }

    /// The maps pinned in `dir` (named as in `lb_common::map_names`).
    pub fn pinned(dir: &Path) -> Result<Self> {
        let mut maps = HashMap::new();
        for name in WANTED {
            let path = dir.join(name);
            let map = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
            maps.insert(name.to_owned(), map);
        }
        Self::complete(maps)
    }

    fn complete(maps: HashMap<String, MapData>) -> Result<Self> {
        for name in WANTED {
            anyhow::ensure!(maps.contains_key(name), "map {name} not found");
        }
        Ok(Self { maps })
    }

    fn map(&self, name: &str) -> Result<Map> {
        let data = self
            .maps
            .get(name)
            .ok_or_else(|| anyhow!("no map {name}"))?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("dup map fd")?;
        Map::from_map_data(MapData::from_fd(fd).context("map from fd")?).context("map type")
    }

    /// `VIPS[vip]` (TCP), if present.
    pub fn vip_meta(&self, vip: SocketAddr) -> Result<Option<VipMeta>> {
        let map = self.map(map_names::VIPS)?;
        let vips: BpfHashMap<_, VipKey, VipMeta> = BpfHashMap::try_from(map)?;
        let key = tcp_vip_key(vip);
        match vips.get(&key, 0) {
            Ok(meta) => Ok(Some(meta)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The real ids in the live half of a TCP VIP's ring, with their slot counts.
    pub fn ring(&self, vip: SocketAddr) -> Result<BTreeMap<u32, u32>> {
        let meta = self
            .vip_meta(vip)?
            .ok_or_else(|| anyhow!("vip {vip} not in VIPS"))?;
        let rings: Array<_, u32> = Array::try_from(self.map(map_names::MAGLEV_RINGS)?)?;
        let mut counts = BTreeMap::new();
        for slot in 0..meta.ring_size {
            let id = rings.get(&ring_index(meta.index, meta.active_half, slot), 0)?;
            if id != NO_REAL {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// The distinct real ids in a TCP VIP's live ring.
    pub fn ring_ids(&self, vip: SocketAddr) -> Result<BTreeSet<u32>> {
        Ok(self.ring(vip)?.into_keys().collect())
    }

    /// Every used `REALS` slot: id -> entry.
    pub fn reals(&self) -> Result<BTreeMap<u32, Real>> {
        let reals: Array<_, Real> = Array::try_from(self.map(map_names::REALS)?)?;
        let mut out = BTreeMap::new();
        for id in 0..reals.len() {
            let real = reals.get(&id, 0)?;
            if real.family == FAMILY_V4 || real.family == FAMILY_V6 {
                out.insert(id, real);
            }
        }
        Ok(out)
    }

    /// The id `REALS` holds for an IPv4 address (the first, if several VIPs use it).
    pub fn real_id_of(&self, addr: std::net::Ipv4Addr) -> Result<Option<u32>> {
        let words = v4_words(addr);
        Ok(self
            .reals()?
            .into_iter()
            .find(|(_, r)| r.family == FAMILY_V4 && r.addr == words)
            .map(|(id, _)| id))
    }
}

fn v4_words(addr: std::net::Ipv4Addr) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&addr.octets());
    addr_words(bytes)
}

fn tcp_vip_key(vip: SocketAddr) -> VipKey {
    let (bytes, family) = match vip.ip() {
        std::net::IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    };
    VipKey {
        addr: addr_words(bytes),
        port: vip.port(),
        proto: 6,
        family,
    }
}
