//! Keeps the datapath's L4 maps in step with an [`L4Config`].
//!
//! Swaps are whole and atomic per VIP: each VIP owns two ring halves in `MAGLEV_RINGS`; a new
//! table is written into the half no packet reads, then one `VIPS` update flips
//! `active_half`. A packet sees the old ring or the new one, never a mix. The half that just
//! went idle is not rewritten until a grace period has passed, so a program run that read the
//! old `active_half` just before the flip has finished with it (XDP runs take microseconds).
//! `apply` waits out what is left of that grace by blocking its thread (for `lb l4` and
//! tests); `apply_async` (the manager, on its async runtime) awaits it with a tokio timer
//! first, so the runtime keeps serving meanwhile.
//!
//! The half that went idle is also the VIP's previous ring: `PREV_RINGS` points the datapath
//! at it for `[l4] previous_ring_window` after the flip (second chances, see
//! `lb-ebpf/src/second_chance.rs`). Before that half is rewritten, the pointer is cleared and
//! the grace period starts again from there.
//!
//! `VIP_INDEX` copies each `VIPS` key with its index and forwarding into a direct-mapped slot
//! (`write_index`, last in every apply), so a VIP packet usually needs no hash lookup. The
//! datapath never reads a ring from it, so the flip above stays one `VIPS` update.
//!
//! Tables are the same on every node given the same reals, weights and ring size (see
//! `maglev`); real ids are not (they are this node's), so the ring hash each VIP reports is
//! taken over the table of real addresses, not over the map's ids.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use ipnet::IpNet;
use lb_common::{
    l4::{
        EncapConfig, FAMILY_V4, FAMILY_V6, GuardConfig, LIST_SCOPE_ALL, LIST_SCOPE_ALL_BIT,
        ListKeyV4, ListKeyV6, MAX_REALS, MAX_VIPS, NO_REAL, NO_VIP, PrevRing, REAL_DOWN, Real,
        VIP_CHECK_SOURCE_LISTS, VIP_FORWARD_ENCAP, VIP_FORWARD_LOCAL, VIP_INDEX_SLOTS, VipKey,
        VipMeta, VipSlot, addr_bytes, addr_words, ring_index, vip_index_slot,
    },
    map_names,
};
use thiserror::Error;

use super::{Forward, GuardSettings, L4Config, Protocol, SourceLists, VipConfig};
use crate::maglev::{self, Backend, MaglevError};

/// How long a ring half stays untouched after it stopped being the active one.
const RING_GRACE: Duration = Duration::from_millis(50);
/// Added to a previous ring's window before its half is taken as unread: the datapath's
/// coarse clock and userspace's `Instant` need not agree to the millisecond.
const PREV_RING_SLACK: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum L4Error {
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("updating map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("vip {vip}: {source}")]
    Maglev {
        vip: SocketAddr,
        #[source]
        source: MaglevError,
    },
    #[error("no free VIP slot (at most {MAX_VIPS})")]
    TooManyVips,
    #[error("no free real id (at most {} reals, ids are not reused yet)", MAX_REALS - 1)]
    TooManyReals,
}

/// What one [`L4Dataplane::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub rings_rebuilt: usize,
}

type VipIdent = (SocketAddr, Protocol);

struct InstalledVip {
    key: VipKey,
    meta: VipMeta,
    /// (real address, effective weight) the active ring was built from; `None` when the
    /// ring was found in pinned maps (the next apply rebuilds it).
    ring_input: Option<Vec<(IpAddr, u32)>>,
    reals: HashSet<IpAddr>,
    flipped_at: Option<Instant>,
    /// Until when the datapath may read the idle half as the previous ring (`PREV_RINGS`).
    prev_until: Option<Instant>,
    /// Hash of the active table by real address ([`maglev::table_hash`]); `None` for a ring
    /// found in pinned maps until the first apply.
    ring_hash: Option<u64>,
}

/// Userspace owner of the L4 maps. Ids are stable across applies: a VIP keeps its index and a
/// (VIP, real) pair its real id, so counters and connection-table entries stay meaningful.
#[derive(Default)]
pub struct L4Dataplane {
    vips: HashMap<VipIdent, InstalledVip>,
    real_ids: HashMap<(VipIdent, IpAddr), u32>,
    real_addrs: HashMap<u32, (VipIdent, IpAddr)>,
    next_real_id: u32,
    aliases: HashSet<VipKey>,
    /// What `write_guard` last wrote (settings, lists by scope): applies that change neither
    /// (health events, L7-only reloads) skip reading the tries back.
    guard_written: Option<(GuardConfig, Vec<(u32, SourceLists)>)>,
    /// The `VIP_INDEX` slots in use, as last written (`None`: not written yet by this
    /// process, so every slot is).
    index_written: Option<HashMap<u32, VipSlot>>,
}

pub fn addr16(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn vip_key(addr: SocketAddr, protocol: Protocol, port: u16) -> VipKey {
    let (bytes, family) = addr16(addr.ip());
    VipKey {
        addr: addr_words(bytes),
        port,
        proto: protocol.number(),
        family,
    }
}

/// A VIP index as `Real::vip` holds it (indices are below `MAX_VIPS`, far below `NO_VIP`).
fn vip_tag(index: u32) -> u16 {
    u16::try_from(index).unwrap_or(NO_VIP)
}

/// The VIP a `VIPS` key stands for (port 0 keys are fragment aliases, not VIPs).
fn vip_ident(key: &VipKey) -> Option<VipIdent> {
    let protocol = match key.proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let ip = key_addr(key.family, key.addr)?;
    Some((SocketAddr::new(ip, key.port), protocol))
}

/// A used `REALS` slot's address (unused slots are all zero).
fn real_addr(real: &Real) -> Option<IpAddr> {
    key_addr(real.family, real.addr)
}

fn key_addr(family: u8, words: [u32; 4]) -> Option<IpAddr> {
    let bytes = addr_bytes(words);
    match family {
        FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_V6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of the datapath's `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What a VIP's ring is built from: (real address, effective weight; 0 when down).
fn ring_input(vip: &VipConfig) -> Vec<(IpAddr, u32)> {
    vip.reals
        .iter()
        .map(|r| (r.addr, if r.down { 0 } else { r.weight }))
        .collect()
}

/// The datapath's form of the `[l4]` knobs (lists' scope bits are added by the caller).
pub fn guard_config(settings: &GuardSettings) -> GuardConfig {
    let (source_interval_ns, source_tolerance_ns) = match settings.source_new_flows {
        Some((per_second, burst)) => {
            let interval = 1_000_000_000 / per_second.max(1);
            (interval, interval.saturating_mul(burst.saturating_sub(1)))
        }
        None => (0, 0),
    };
    GuardConfig {
        flood_new_flows_per_cpu: settings.flood_guard_new_flows_per_cpu.unwrap_or(0),
        source_interval_ns,
        source_tolerance_ns,
        ..GuardConfig::default()
    }
}

/// A list's trie key: the scope's 32 bits, then the network.
fn split_keys(
    scope: u32,
    nets: &[IpNet],
    v4: &mut HashSet<TrieKey<ListKeyV4>>,
    v6: &mut HashSet<TrieKey<ListKeyV6>>,
) {
    let scope_bytes = scope.to_be_bytes();
    for net in nets {
        let bits = 32 + u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => {
                v4.insert(TrieKey {
                    bits,
                    data: ListKeyV4 {
                        scope: scope_bytes,
                        addr: n.network().octets(),
                    },
                });
            }
            IpNet::V6(n) => {
                v6.insert(TrieKey {
                    bits,
                    data: ListKeyV6 {
                        scope: scope_bytes,
                        addr: n.network().octets(),
                    },
                });
            }
        }
    }
}

/// An LPM key as userspace compares them (aya's key is packed and not `Eq`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct TrieKey<K> {
    bits: u32,
    data: K,
}

/// Inserts the `wanted` keys missing from trie `name`; returns the keys it holds that are not
/// wanted (for [`remove_keys`] once the new state is in force).
fn sync_trie<K: aya::Pod + Eq + std::hash::Hash>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &HashSet<TrieKey<K>>,
) -> Result<Vec<TrieKey<K>>, L4Error> {
    let mut trie: LpmTrie<&mut MapData, K, u8> = typed_map_mut(ebpf, name)?;
    let present: HashSet<TrieKey<K>> = trie
        .keys()
        .map(|k| {
            k.map(|k| TrieKey {
                bits: k.prefix_len(),
                data: k.data(),
            })
        })
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for key in wanted.difference(&present) {
        trie.insert(&LpmKey::new(key.bits, key.data), 0, 0)
            .map_err(map_err(name))?;
    }
    Ok(present.difference(wanted).copied().collect())
}

fn remove_keys<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    keys: &[TrieKey<K>],
) -> Result<(), L4Error> {
    let mut trie: LpmTrie<&mut MapData, K, u8> = typed_map_mut(ebpf, name)?;
    for key in keys {
        match trie.remove(&LpmKey::new(key.bits, key.data)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(L4Error::Map { map: name, source }),
        }
    }
    Ok(())
}

/// Moves a `VIP_INDEX` slot from `had` to `want` (`None`: empty), writing it with `set`, so
/// that no packet pairs a key with another key's index or forwarding, although each write
/// lands in place and a packet may read a slot while it is written: a key and the words
/// beside it never change in the same write. The key that leaves goes first (its words stay), then the words change
/// under the empty key, then the new key comes: a mixed read needs a program run that
/// outlasts two map updates. (A key that stays may have its words rewritten in place: a
/// packet then sees its old or its new settings.)
fn rewrite_slot(
    had: Option<VipSlot>,
    want: Option<VipSlot>,
    mut set: impl FnMut(VipSlot) -> Result<(), MapError>,
) -> Result<(), MapError> {
    let empty = VipKey::default();
    let keyless = |s: VipSlot| VipSlot { key: empty, ..s };
    match (had, want) {
        (Some(had), Some(want)) if had.key == want.key => set(want),
        (had, want) => {
            if let Some(had) = had {
                set(keyless(had))?;
            }
            let want = want.unwrap_or_default();
            set(keyless(want))?;
            if want.key != empty {
                set(want)?;
            }
            Ok(())
        }
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> L4Error {
    move |source| L4Error::Map { map, source }
}

/// Map `name` of `ebpf` as the typed map `M` (`Array`, `HashMap`, `LpmTrie`...), to read.
fn typed_map<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, L4Error>
where
    M: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    ebpf.map(name)
        .ok_or(L4Error::MissingMap(name))?
        .try_into()
        .map_err(map_err(name))
}

/// As [`typed_map`], to write.
fn typed_map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, L4Error>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    ebpf.map_mut(name)
        .ok_or(L4Error::MissingMap(name))?
        .try_into()
        .map_err(map_err(name))
}

impl L4Dataplane {
    pub fn new() -> Self {
        Self {
            next_real_id: NO_REAL + 1,
            ..Self::default()
        }
    }

    /// Rebuilds the ids from maps a previous `lb` left pinned: `VIPS` gives each VIP's
    /// index, ring size, forwarding and live half (and the fragment aliases); `REALS` each
    /// real id's address and VIP. Ids are then kept exactly, so connection-table entries
    /// (which name real ids) stay valid across the restart. Rings are not read back: the
    /// first `apply` rebuilds each VIP's ring into its idle half and flips (Maglev is
    /// deterministic: the same config gives the same table).
    pub fn recover(ebpf: &mut Ebpf) -> Result<Self, L4Error> {
        let mut dp = Self::new();
        let entries: Vec<(VipKey, VipMeta)> = Self::vips_map(ebpf)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::VIPS))?;
        let mut by_index: HashMap<u32, VipIdent> = HashMap::new();
        for (key, meta) in entries {
            if key.port == 0 {
                dp.aliases.insert(key);
                continue;
            }
            let Some(ident) = vip_ident(&key) else {
                tracing::warn!(?key, "pinned VIPS entry not understood; ignored");
                continue;
            };
            by_index.insert(meta.index, ident);
            let prev = Self::read_prev(ebpf, meta.index)?;
            let left = Duration::from_nanos(prev.until_ns.saturating_sub(monotonic_ns()));
            dp.vips.insert(
                ident,
                InstalledVip {
                    key,
                    meta,
                    ring_input: None,
                    reals: HashSet::new(),
                    flipped_at: None,
                    prev_until: (prev.ring_size != 0 && !left.is_zero())
                        .then(|| Instant::now() + left + PREV_RING_SLACK),
                    ring_hash: None,
                },
            );
        }
        let name = map_names::REALS;
        let reals: Array<&MapData, Real> = typed_map(ebpf, name)?;
        let mut highest = NO_REAL;
        for id in NO_REAL + 1..reals.len().min(MAX_REALS) {
            let real = reals.get(&id, 0).map_err(map_err(name))?;
            let Some(addr) = real_addr(&real) else {
                continue;
            };
            // Every used id stays reserved, even one whose VIP is gone.
            highest = id;
            let Some(&ident) = by_index.get(&u32::from(real.vip)) else {
                continue;
            };
            // Ids only grow, so a later id for the same (VIP, address) is the live one.
            if let Some(older) = dp.real_ids.insert((ident, addr), id) {
                dp.real_addrs.remove(&older);
            }
            dp.real_addrs.insert(id, (ident, addr));
            if let Some(vip) = dp.vips.get_mut(&ident) {
                vip.reals.insert(addr);
            }
        }
        dp.next_real_id = highest + 1;
        Ok(dp)
    }

    /// The (VIP, real address) a real id stands for.
    pub fn real(&self, id: u32) -> Option<(SocketAddr, Protocol, IpAddr)> {
        self.real_addrs
            .get(&id)
            .map(|((vip, proto), addr)| (*vip, *proto, *addr))
    }

    /// The index of a VIP in `VIP_STATS`, if installed.
    pub fn vip_index(&self, addr: SocketAddr, protocol: Protocol) -> Option<u32> {
        self.vips.get(&(addr, protocol)).map(|v| v.meta.index)
    }

    /// The real id of `real` under a VIP, if it was ever configured there.
    pub fn real_id(&self, vip: SocketAddr, protocol: Protocol, real: IpAddr) -> Option<u32> {
        self.real_ids.get(&((vip, protocol), real)).copied()
    }

    /// The hash of a VIP's live table by real address (equal on nodes that agree), once this
    /// process has built or checked it.
    pub fn ring_hash(&self, addr: SocketAddr, protocol: Protocol) -> Option<u64> {
        self.vips.get(&(addr, protocol)).and_then(|v| v.ring_hash)
    }

    /// Installed VIPs with their stats index, for reporting.
    pub fn installed_vips(&self) -> Vec<(SocketAddr, Protocol, u32)> {
        let mut out: Vec<_> = self
            .vips
            .iter()
            .map(|((addr, proto), v)| (*addr, *proto, v.meta.index))
            .collect();
        out.sort_by_key(|v| v.2);
        out
    }

    /// As `apply`, but waits for the ring grace periods without blocking the thread: first
    /// awaits what is left of the grace of every VIP whose ring this apply rebuilds, then
    /// applies (which then has nothing left to wait for).
    pub async fn apply_async(
        &mut self,
        ebpf: &mut Ebpf,
        config: &L4Config,
    ) -> Result<ApplyReport, L4Error> {
        let wait = self.grace_remaining(config);
        self.retire_previous_rings(ebpf, config)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.apply(ebpf, config)
    }

    /// How long `apply(config)` would wait: the longest rest of a grace period among the
    /// VIPs whose ring it would rebuild.
    pub fn grace_remaining(&self, config: &L4Config) -> Duration {
        config
            .vips
            .iter()
            .filter_map(|vip| {
                let installed = self.vips.get(&(vip.addr, vip.protocol))?;
                let unchanged = installed.ring_input.as_ref() == Some(&ring_input(vip))
                    && installed.meta.ring_size == vip.ring_size;
                // A ring found in pins usually holds the table already (see `apply_vip`).
                if unchanged || installed.ring_input.is_none() {
                    return None;
                }
                // A previous ring still in use is cleared first; its half is then idle for
                // a whole grace period.
                if installed.prev_until.is_some_and(|t| t > Instant::now()) {
                    return Some(RING_GRACE);
                }
                let at = installed.flipped_at?;
                Some(RING_GRACE.saturating_sub(at.elapsed()))
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Stops the datapath reading, as a previous ring, the idle half of every VIP whose ring
    /// `config` changes (that half is about to be rewritten); the grace period of each starts
    /// now.
    fn retire_previous_rings(&mut self, ebpf: &mut Ebpf, config: &L4Config) -> Result<(), L4Error> {
        let now = Instant::now();
        for vip in &config.vips {
            let Some(installed) = self.vips.get_mut(&(vip.addr, vip.protocol)) else {
                continue;
            };
            let unchanged = installed.ring_input.as_ref() == Some(&ring_input(vip))
                && installed.meta.ring_size == vip.ring_size;
            // A ring found in pins (after a restart) is left to `apply_vip`: it usually holds
            // the table already, and then its previous ring must keep its window; when it does
            // not, `apply_vip` retires the previous ring itself (waiting out the grace).
            if unchanged
                || installed.ring_input.is_none()
                || installed.prev_until.is_none_or(|t| t <= now)
            {
                continue;
            }
            Self::write_prev(ebpf, installed.meta.index, PrevRing::default())?;
            installed.prev_until = None;
            installed.flipped_at = Some(now);
        }
        Ok(())
    }

    fn read_prev(ebpf: &Ebpf, index: u32) -> Result<PrevRing, L4Error> {
        let name = map_names::PREV_RINGS;
        let map: Array<&MapData, PrevRing> = typed_map(ebpf, name)?;
        map.get(&index, 0).map_err(map_err(name))
    }

    fn write_prev(ebpf: &mut Ebpf, index: u32, prev: PrevRing) -> Result<(), L4Error> {
        let name = map_names::PREV_RINGS;
        let mut map: Array<&mut MapData, PrevRing> = typed_map_mut(ebpf, name)?;
        map.set(index, prev, 0).map_err(map_err(name))
    }

    /// Makes the maps say what `config` says. On error the maps may hold part of the change,
    /// but every VIP is always either on its old ring or its new one (never a half-written one).
    pub fn apply(&mut self, ebpf: &mut Ebpf, config: &L4Config) -> Result<ApplyReport, L4Error> {
        let mut report = ApplyReport::default();
        self.write_encap(ebpf, &config.encap)?;

        let wanted: HashSet<VipIdent> = config.vips.iter().map(|v| (v.addr, v.protocol)).collect();
        let removed: Vec<VipIdent> = self
            .vips
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for ident in removed {
            self.remove_vip(ebpf, ident)?;
            report.vips_removed += 1;
        }
        let window = config.guard.previous_ring_window;
        let global_lists =
            !config.guard.lists.deny.is_empty() || !config.guard.lists.allow.is_empty();
        for vip in &config.vips {
            let lists = global_lists || !vip.lists.deny.is_empty() || !vip.lists.allow.is_empty();
            let checks = if lists { VIP_CHECK_SOURCE_LISTS } else { 0 };
            let (added, rebuilt) = self.apply_vip(ebpf, vip, checks, window)?;
            report.vips_added += usize::from(added);
            report.rings_rebuilt += usize::from(rebuilt);
        }
        self.write_aliases(ebpf, config)?;
        self.write_index(ebpf, config)?;
        self.write_guard(ebpf, config)?;
        Ok(report)
    }

    /// Copies the `VIPS` keys (VIPs in file order, then fragment aliases) into the slots of
    /// `VIP_INDEX`, with their index and forwarding; a key whose slot is taken stays with
    /// `VIPS` alone. Runs after `VIPS` is written, and a removed VIP leaves its slot before
    /// its key leaves `VIPS` (`remove_vip`): the index never names what `VIPS` lacks for
    /// longer than an apply, and the datapath reads the ring from `VIPS` anyway.
    fn write_index(&mut self, ebpf: &mut Ebpf, config: &L4Config) -> Result<(), L4Error> {
        let installed: Vec<(VipKey, VipMeta)> = config
            .vips
            .iter()
            .filter_map(|v| self.vips.get(&(v.addr, v.protocol)))
            .map(|v| (v.key, v.meta))
            .collect();
        let aliases = config.vips.iter().filter_map(|v| {
            let meta = self.vips.get(&(v.addr, v.protocol))?.meta;
            Some((vip_key(v.addr, v.protocol, 0), meta))
        });
        let mut wanted: HashMap<u32, VipSlot> = HashMap::new();
        for (key, meta) in installed.into_iter().chain(aliases) {
            wanted.entry(vip_index_slot(&key)).or_insert(VipSlot {
                key,
                index: meta.index,
                forward: meta.forward,
            });
        }
        let name = map_names::VIP_INDEX;
        let mut map: Array<&mut MapData, VipSlot> = typed_map_mut(ebpf, name)?;
        // A map this process has not written yet is the fresh one of its program (the index
        // is not pinned): every slot empty, each written once here.
        let written = self.index_written.take();
        for slot in 0..VIP_INDEX_SLOTS {
            let want = wanted.get(&slot).copied();
            let had = written.as_ref().and_then(|w| w.get(&slot).copied());
            if written.is_some() && had == want {
                continue;
            }
            rewrite_slot(had, want, |value| map.set(slot, value, 0)).map_err(map_err(name))?;
        }
        self.index_written = Some(wanted);
        Ok(())
    }

    /// Empties `key`'s `VIP_INDEX` slot if it holds `key`.
    fn unindex(&mut self, ebpf: &mut Ebpf, key: &VipKey) -> Result<(), L4Error> {
        let slot = vip_index_slot(key);
        let Some(written) = self.index_written.as_mut() else {
            return Ok(());
        };
        if written.get(&slot).is_none_or(|s| s.key != *key) {
            return Ok(());
        }
        let name = map_names::VIP_INDEX;
        let mut map: Array<&mut MapData, VipSlot> = typed_map_mut(ebpf, name)?;
        let had = written.remove(&slot);
        rewrite_slot(had, None, |value| map.set(slot, value, 0)).map_err(map_err(name))
    }

    /// Writes the `[l4]` knobs and every scope's allow/deny lists. Order keeps each packet's
    /// verdict sound: new list entries go in first, then `L4_GUARD` says which scopes have
    /// lists (so an allow list is complete before it is enforced), then stale entries go.
    /// (`VIP_CHECK_SOURCE_LISTS` in `VipMeta::forward`, written before, only makes a VIP's packets read `L4_GUARD`; its
    /// scope bits decide.)
    fn write_guard(&mut self, ebpf: &mut Ebpf, config: &L4Config) -> Result<(), L4Error> {
        let mut scoped: Vec<(u32, SourceLists)> =
            vec![(LIST_SCOPE_ALL, config.guard.lists.clone())];
        for vip in &config.vips {
            if let Some(installed) = self.vips.get(&(vip.addr, vip.protocol)) {
                scoped.push((installed.meta.index, vip.lists.clone()));
            }
        }
        let scope_bit = |scope: u32| {
            if scope == LIST_SCOPE_ALL {
                LIST_SCOPE_ALL_BIT
            } else {
                1u64 << scope
            }
        };
        let mut guard = guard_config(&config.guard);
        for (scope, lists) in &scoped {
            if !lists.deny.is_empty() {
                guard.deny_scopes |= scope_bit(*scope);
            }
            if !lists.allow.is_empty() {
                guard.allow_scopes |= scope_bit(*scope);
            }
        }
        if self
            .guard_written
            .as_ref()
            .is_some_and(|(g, s)| *g == guard && *s == scoped)
        {
            return Ok(());
        }
        let mut deny_v4 = HashSet::new();
        let mut deny_v6 = HashSet::new();
        let mut allow_v4 = HashSet::new();
        let mut allow_v6 = HashSet::new();
        for (scope, lists) in &scoped {
            split_keys(*scope, &lists.deny, &mut deny_v4, &mut deny_v6);
            split_keys(*scope, &lists.allow, &mut allow_v4, &mut allow_v6);
        }
        let mut stale_v4 = Vec::new();
        let mut stale_v6 = Vec::new();
        for (name, wanted) in [
            (map_names::DENY_V4, &deny_v4),
            (map_names::ALLOW_V4, &allow_v4),
        ] {
            stale_v4.push((name, sync_trie(ebpf, name, wanted)?));
        }
        for (name, wanted) in [
            (map_names::DENY_V6, &deny_v6),
            (map_names::ALLOW_V6, &allow_v6),
        ] {
            stale_v6.push((name, sync_trie(ebpf, name, wanted)?));
        }
        let name = map_names::L4_GUARD;
        let mut map: Array<&mut MapData, GuardConfig> = typed_map_mut(ebpf, name)?;
        map.set(0, guard, 0).map_err(map_err(name))?;
        for (name, stale) in stale_v4 {
            remove_keys(ebpf, name, &stale)?;
        }
        for (name, stale) in stale_v6 {
            remove_keys(ebpf, name, &stale)?;
        }
        self.guard_written = Some((guard, scoped));
        Ok(())
    }

    fn write_encap(&self, ebpf: &mut Ebpf, encap: &EncapConfig) -> Result<(), L4Error> {
        let name = map_names::ENCAP_CONFIG;
        let mut map: Array<&mut MapData, EncapConfig> = typed_map_mut(ebpf, name)?;
        map.set(0, *encap, 0).map_err(map_err(name))
    }

    fn vips_map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, VipKey, VipMeta>, L4Error> {
        let name = map_names::VIPS;
        typed_map_mut(ebpf, name)
    }

    fn write_real(
        ebpf: &mut Ebpf,
        id: u32,
        addr: IpAddr,
        down: bool,
        vip: u16,
    ) -> Result<(), L4Error> {
        let name = map_names::REALS;
        let mut map: Array<&mut MapData, Real> = typed_map_mut(ebpf, name)?;
        let (bytes, family) = addr16(addr);
        let real = Real {
            addr: addr_words(bytes),
            family,
            flags: if down { REAL_DOWN } else { 0 },
            vip,
        };
        map.set(id, real, 0).map_err(map_err(name))
    }

    fn real_id_for(&mut self, ident: VipIdent, addr: IpAddr) -> Result<u32, L4Error> {
        if let Some(id) = self.real_ids.get(&(ident, addr)) {
            return Ok(*id);
        }
        if self.next_real_id >= MAX_REALS {
            return Err(L4Error::TooManyReals);
        }
        let id = self.next_real_id;
        self.next_real_id += 1;
        self.real_ids.insert((ident, addr), id);
        self.real_addrs.insert(id, (ident, addr));
        Ok(id)
    }

    fn free_index(&self) -> Result<u32, L4Error> {
        let used: HashSet<u32> = self.vips.values().map(|v| v.meta.index).collect();
        (0..MAX_VIPS)
            .find(|i| !used.contains(i))
            .ok_or(L4Error::TooManyVips)
    }

    fn remove_vip(&mut self, ebpf: &mut Ebpf, ident: VipIdent) -> Result<(), L4Error> {
        let Some(vip) = self.vips.remove(&ident) else {
            return Ok(());
        };
        // The index may go to another VIP, which must not inherit this one's previous ring.
        Self::write_prev(ebpf, vip.meta.index, PrevRing::default())?;
        self.unindex(ebpf, &vip.key)?;
        match Self::vips_map(ebpf)?.remove(&vip.key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(L4Error::Map {
                    map: map_names::VIPS,
                    source,
                });
            }
        }
        // Established flows of a removed VIP stop matching it; mark its reals down anyway so
        // nothing that still holds their ids keeps using them.
        for addr in vip.reals {
            if let Some(&id) = self.real_ids.get(&(ident, addr)) {
                Self::write_real(ebpf, id, addr, true, NO_VIP)?;
            }
        }
        Ok(())
    }

    /// Returns (added, ring rebuilt). `checks`: the check bits of the VIP's `VipMeta::forward`;
    /// `window`: how long the ring it replaces stays the previous ring.
    fn apply_vip(
        &mut self,
        ebpf: &mut Ebpf,
        vip: &VipConfig,
        checks: u32,
        window: Duration,
    ) -> Result<(bool, bool), L4Error> {
        let ident = (vip.addr, vip.protocol);
        let added = !self.vips.contains_key(&ident);
        let index = match self.vips.get(&ident) {
            Some(installed) => installed.meta.index,
            None => self.free_index()?,
        };

        let ring_input = ring_input(vip);
        let mut ids = Vec::with_capacity(vip.reals.len());
        for real in &vip.reals {
            let id = self.real_id_for(ident, real.addr)?;
            Self::write_real(ebpf, id, real.addr, real.down, vip_tag(index))?;
            ids.push(id);
        }
        let now_reals: HashSet<IpAddr> = vip.reals.iter().map(|r| r.addr).collect();
        if let Some(installed) = self.vips.get(&ident) {
            for gone in installed.reals.difference(&now_reals) {
                if let Some(&id) = self.real_ids.get(&(ident, *gone)) {
                    // Removed from the config: its established flows are re-hashed.
                    Self::write_real(ebpf, id, *gone, true, vip_tag(index))?;
                }
            }
        }

        let forward = match vip.forward {
            Forward::Encap => VIP_FORWARD_ENCAP,
            Forward::Local => VIP_FORWARD_LOCAL,
        };
        let previous = self.vips.get(&ident);
        let unchanged_ring = previous.is_some_and(|p| {
            p.ring_input.as_ref() == Some(&ring_input) && p.meta.ring_size == vip.ring_size
        });
        let mut prev_until = previous.and_then(|p| p.prev_until);
        let mut ring_hash = previous.and_then(|p| p.ring_hash);
        let (active_half, flipped_at, rebuilt) = if unchanged_ring {
            let p = previous.expect("checked above");
            (p.meta.active_half, p.flipped_at, false)
        } else {
            let backends: Vec<Backend> = ring_input
                .iter()
                .map(|(addr, weight)| Backend {
                    key: addr16(*addr).0,
                    weight: *weight,
                })
                .collect();
            let table =
                maglev::build(&backends, vip.ring_size).map_err(|source| L4Error::Maglev {
                    vip: vip.addr,
                    source,
                })?;
            let slots: Vec<u32> = table
                .iter()
                .map(|owner| owner.map_or(NO_REAL, |i| ids[i]))
                .collect();
            ring_hash = Some(maglev::table_hash(
                &table,
                &backends.iter().map(|b| b.key).collect::<Vec<_>>(),
            ));
            // A ring found in pinned maps (after a restart) that already holds this table
            // stays live: no flip, and its previous ring keeps its window.
            let same_as_pinned = match previous {
                Some(p) if p.ring_input.is_none() && p.meta.ring_size == vip.ring_size => {
                    Self::ring_holds(ebpf, index, p.meta.active_half, &slots)?
                }
                _ => false,
            };
            if same_as_pinned {
                let p = previous.expect("matched above");
                (p.meta.active_half, p.flipped_at, false)
            } else {
                let half = previous.map_or(0, |p| 1 - p.meta.active_half);
                let mut idle_since = previous.and_then(|p| p.flipped_at);
                if prev_until.is_some_and(|t| t > Instant::now()) || previous.is_none() {
                    // The half about to be written is the previous ring the datapath may be
                    // reading (or, for a new VIP, the index's last owner's): unhook it first.
                    Self::write_prev(ebpf, index, PrevRing::default())?;
                    if previous.is_some() {
                        idle_since = Some(Instant::now());
                    }
                }
                prev_until = None;
                if let Some(at) = idle_since {
                    let since = at.elapsed();
                    if since < RING_GRACE {
                        std::thread::sleep(RING_GRACE - since);
                    }
                }
                let name = map_names::MAGLEV_RINGS;
                let mut rings: Array<&mut MapData, u32> = typed_map_mut(ebpf, name)?;
                for (slot, real_id) in (0u32..).zip(&slots) {
                    rings
                        .set(ring_index(index, half, slot), *real_id, 0)
                        .map_err(map_err(name))?;
                }
                (half, Some(Instant::now()), true)
            }
        };

        let key = vip_key(vip.addr, vip.protocol, vip.addr.port());
        let meta = VipMeta {
            index,
            forward: forward | checks,
            ring_size: vip.ring_size,
            active_half,
        };
        // The flip: one map update makes the new ring live.
        Self::vips_map(ebpf)?
            .insert(key, meta, 0)
            .map_err(map_err(map_names::VIPS))?;
        // The ring just replaced becomes the previous ring, for its window.
        if let Some(p) = previous.filter(|_| rebuilt && !window.is_zero()) {
            let prev = PrevRing {
                until_ns: monotonic_ns()
                    .saturating_add(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)),
                ring_size: p.meta.ring_size,
                half: p.meta.active_half,
            };
            Self::write_prev(ebpf, index, prev)?;
            prev_until = Some(Instant::now() + window + PREV_RING_SLACK);
        }
        self.vips.insert(
            ident,
            InstalledVip {
                key,
                meta,
                ring_input: Some(ring_input),
                reals: now_reals,
                flipped_at,
                prev_until,
                ring_hash,
            },
        );
        Ok((added, rebuilt))
    }

    /// Whether ring half `half` of VIP `index` holds exactly `slots`.
    fn ring_holds(ebpf: &Ebpf, index: u32, half: u32, slots: &[u32]) -> Result<bool, L4Error> {
        let name = map_names::MAGLEV_RINGS;
        let rings: Array<&MapData, u32> = typed_map(ebpf, name)?;
        for (slot, want) in (0u32..).zip(slots) {
            if rings
                .get(&ring_index(index, half & 1, slot), 0)
                .map_err(map_err(name))?
                != *want
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Fragments carry no ports after the first, so each (address, protocol) with VIPs gets an
    /// alias key with port 0 pointing at its first VIP in file order; every fragment of that
    /// address is hashed without ports onto that VIP's ring.
    fn write_aliases(&mut self, ebpf: &mut Ebpf, config: &L4Config) -> Result<(), L4Error> {
        let mut wanted: HashMap<VipKey, VipMeta> = HashMap::new();
        for vip in &config.vips {
            let alias = vip_key(vip.addr, vip.protocol, 0);
            if let Some(installed) = self.vips.get(&(vip.addr, vip.protocol)) {
                wanted.entry(alias).or_insert(installed.meta);
            }
        }
        let mut map = Self::vips_map(ebpf)?;
        for (key, meta) in &wanted {
            map.insert(*key, *meta, 0)
                .map_err(map_err(map_names::VIPS))?;
        }
        for stale in self.aliases.iter().filter(|k| !wanted.contains_key(*k)) {
            match map.remove(stale) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(L4Error::Map {
                        map: map_names::VIPS,
                        source,
                    });
                }
            }
        }
        self.aliases = wanted.into_keys().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(addr: u32, index: u32, forward: u32) -> VipSlot {
        VipSlot {
            key: VipKey {
                addr: [addr, 0, 0, 0],
                port: 80,
                proto: 6,
                family: FAMILY_V4,
            },
            index,
            forward,
        }
    }

    /// The states a slot goes through, from `had`, as `rewrite_slot` writes them.
    fn states(had: Option<VipSlot>, want: Option<VipSlot>) -> Vec<VipSlot> {
        let mut seen = vec![had.unwrap_or_default()];
        rewrite_slot(had, want, |s| {
            seen.push(s);
            Ok(())
        })
        .expect("writes");
        seen
    }

    /// No write changes a slot's key and its words together, so a packet reading the slot
    /// during one write never pairs a key with another key's index or forwarding; and the
    /// slot ends as wanted.
    #[test]
    fn a_slot_never_changes_key_and_words_in_one_write() {
        let (a, b) = (slot(1, 3, VIP_FORWARD_LOCAL), slot(2, 7, VIP_FORWARD_ENCAP));
        let a_reforwarded = VipSlot {
            forward: VIP_FORWARD_ENCAP | VIP_CHECK_SOURCE_LISTS,
            ..a
        };
        for (had, want) in [
            (None, Some(a)),
            (Some(a), None),
            (Some(a), Some(b)),
            (Some(a), Some(a_reforwarded)),
        ] {
            let seen = states(had, want);
            assert_eq!(*seen.last().expect("end"), want.unwrap_or_default());
            for pair in seen.windows(2) {
                let key_changed = pair[0].key != pair[1].key;
                let words_changed =
                    (pair[0].index, pair[0].forward) != (pair[1].index, pair[1].forward);
                assert!(
                    !(key_changed && words_changed),
                    "{had:?} -> {want:?}: {pair:?}"
                );
            }
        }
    }
}
