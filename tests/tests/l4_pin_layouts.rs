//! Pinned maps of earlier layouts, taken over by this build (`lb run --keep-fast-path` and an
//! upgrade). The fixtures in `tests/fixtures/pins/` describe each layout map by map (type, key
//! and value size, capacity, flags), as read from that build's object; the test creates and
//! pins maps exactly like them, fills some state, and has this build take them over.
//!
//! Why a layout description and not the pins themselves: pins live in bpffs (kernel memory),
//! nothing on disk can hold them; and the old object file would only recreate the same maps
//! (what decides a takeover is `check_pinned_maps` comparing exactly these five numbers).
//!
//! `layout-current.txt` is this build's layout: a change to a pinned map fails
//! `this_builds_pinned_layout_is_the_golden_one`, because it breaks takeover of running fast
//! paths (counters grow within `COUNTER_ARRAY_CAPACITY` without a change there).
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::maps::{MapData, MapInfo, PerCpuArray, PerCpuValues};
use lb::{
    l4::{L4Config, L4Dataplane, Protocol, read_l4_events},
    xdp::{self, AttachMode, XdpError, pin::PINNED_MAPS},
};
use lb_common::{
    l4::{FlowEntry, FlowKey, L4Event, PrevRing},
    map_names,
};
use lb_tests::{
    NETNS_PREFIX,
    lb_run_netns::PinDir,
    netns::{Netns, VethEnd, require_root, veth_pair},
};

/// (type, key size, value size, max entries, flags) by map name.
type Layout = BTreeMap<String, [u32; 5]>;

fn fixture(name: &str) -> Layout {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pins")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next().expect("name").to_owned();
            let numbers: Vec<u32> = fields.map(|f| f.parse().expect("number")).collect();
            (name, numbers.try_into().expect("five numbers"))
        })
        .collect()
}

/// Creates a map of `shape` and pins it at `dir/name` (BPF_MAP_CREATE, BPF_OBJ_PIN).
fn create_pinned(dir: &Path, name: &str, shape: [u32; 5]) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    // union bpf_attr, map-create part: type, key, value, max entries, flags, inner fd, numa
    // node, name[16]; the rest zero.
    let mut attr = [0u8; 128];
    for (i, v) in shape.iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let short = &name.as_bytes()[..name.len().min(15)];
    attr[28..28 + short.len()].copy_from_slice(short);
    // SAFETY: bpf(2) reads `attr.len()` bytes of the buffer we own.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "creating {name} {shape:?}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = CString::new(dir.join(name).display().to_string()).expect("path");
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    // SAFETY: as above; `path` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    assert_eq!(rc, 0, "pinning {name}: {}", std::io::Error::last_os_error());
}

fn pinned_shape(path: &Path) -> [u32; 5] {
    let info = MapInfo::from_pin(path).expect("map info");
    [
        info.map_type().map_or(u32::MAX, |t| t as u32),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
        info.map_flags(),
    ]
}

fn rig(tag: &str) -> (Netns, Netns, PinDir) {
    let a = Netns::new(NETNS_PREFIX, &format!("{tag}a")).expect("netns");
    let b = Netns::new(NETNS_PREFIX, &format!("{tag}b")).expect("netns");
    veth_pair(
        VethEnd {
            ns: &a,
            name: "a0",
            addrs: &["10.8.0.1/24"],
        },
        VethEnd {
            ns: &b,
            name: "b0",
            addrs: &["10.8.0.2/24"],
        },
    )
    .expect("veth");
    (a, b, PinDir::new(tag))
}

#[test]
fn pins_of_the_layout_before_counter_headroom_are_taken_over() {
    if !require_root("pins_of_the_layout_before_counter_headroom_are_taken_over") {
        return;
    }
    let (a, _b, pins) = rig("old");
    let dir = pins.path.clone();
    std::fs::create_dir_all(&dir).expect("pin dir");
    let layout = fixture("layout-85967dc.txt");
    for (name, shape) in &layout {
        create_pinned(&dir, name, *shape);
    }
    // State the old datapath had counted: 7 conntrack hits per CPU.
    let cpus = aya::util::nr_cpus().expect("cpus");
    {
        let map = MapData::from_pin(dir.join(map_names::L4_EVENTS)).expect("L4_EVENTS");
        let mut events: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).expect("per-cpu array");
        events
            .set(
                L4Event::ConntrackHit as u32,
                PerCpuValues::try_from(vec![7u64; cpus]).expect("values"),
                0,
            )
            .expect("set");
    }

    let taken = a
        .run({
            let dir = dir.clone();
            move || -> Result<_, XdpError> {
                let mut attached = xdp::attach_pinned("a0", AttachMode::Skb, &dir)?;
                let mut dp = L4Dataplane::recover(attached.ebpf_mut()).expect("recover");
                // The new maps (lists, guard) were created and pinned next to the old ones, and
                // a config using them applies.
                let config = L4Config::parse(
                    "[l4]\ndeny = [\"192.0.2.0/24\"]\nflood_guard_new_flows_per_cpu = 10\n\
                     [[vip]]\naddress = \"10.9.0.1:80\"\nring_size = 1009\n\
                     [[vip.real]]\naddress = \"10.1.0.1\"\n",
                    Path::new("pin.toml"),
                )
                .expect("config");
                dp.apply(attached.ebpf_mut(), &config).expect("apply");
                let events = read_l4_events(attached.ebpf()).expect("events");
                Ok((attached.reused_maps(), events, attached))
            }
        })
        .expect("thread in netns");
    let (reused, events, attached) = taken.expect("this build takes over the old layout's pins");
    assert!(reused);
    assert_eq!(events.get("conntrack_hit"), Some(&(7 * cpus as u64)));
    assert_eq!(
        events.get(L4Event::FloodGuardNotInserted.name()),
        Some(&0),
        "past the old array's end: reads 0"
    );
    // The old maps are still the pinned ones (reused as they are), the new ones joined them.
    for (name, shape) in &layout {
        assert_eq!(pinned_shape(&dir.join(name)), *shape, "{name} kept");
    }
    for name in PINNED_MAPS {
        assert!(dir.join(name).exists(), "{name} pinned");
    }
    attached.detach().expect("detach");
}

/// The layout before issue 17 (no `PREV_RINGS`; connection-table values with a `u32` VIP
/// index where the idle stamp now is): taken over, `PREV_RINGS` joins the old pins, an entry
/// the old datapath wrote reads as this build's (its stamp 0: not known, fresh), and a change
/// of reals on the taken-over maps keeps the previous ring.
#[test]
fn pins_of_the_layout_before_previous_rings_are_taken_over() {
    if !require_root("pins_of_the_layout_before_previous_rings_are_taken_over") {
        return;
    }
    let (a, _b, pins) = rig("prev");
    let dir = pins.path.clone();
    std::fs::create_dir_all(&dir).expect("pin dir");
    let layout = fixture("layout-eb3b8ad.txt");
    assert!(!layout.contains_key(map_names::PREV_RINGS));
    for (name, shape) in &layout {
        create_pinned(&dir, name, *shape);
    }
    let flow = FlowKey {
        src: [u32::from_ne_bytes([10, 7, 0, 9]), 0, 0, 0],
        dst: [u32::from_ne_bytes([10, 9, 0, 1]), 0, 0, 0],
        src_port: 40000,
        dst_port: 80,
        proto: 6,
        family: 4,
        _pad: [0; 2],
    };
    {
        // The old value: real 1, VIP index 3 as a u32, hash.
        let mut old = [0u8; 12];
        old[..4].copy_from_slice(&1u32.to_ne_bytes());
        old[4..8].copy_from_slice(&3u32.to_ne_bytes());
        old[8..].copy_from_slice(&0x1234_5678u32.to_ne_bytes());
        let map = MapData::from_pin(dir.join(map_names::CONNTRACK)).expect("CONNTRACK");
        let mut table: aya::maps::HashMap<MapData, FlowKey, [u8; 12]> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("lru hash");
        table.insert(flow, old, 0).expect("insert");
    }
    let taken = a
        .run({
            let dir = dir.clone();
            move || -> Result<_, XdpError> {
                let mut attached = xdp::attach_pinned("a0", AttachMode::Skb, &dir)?;
                let mut dp = L4Dataplane::recover(attached.ebpf_mut()).expect("recover");
                let vip = |reals: &str| {
                    L4Config::parse(
                        &format!("[[vip]]\naddress = \"10.9.0.1:80\"\nring_size = 1009\n{reals}"),
                        Path::new("pin.toml"),
                    )
                    .expect("config")
                };
                let one = "[[vip.real]]\naddress = \"10.1.0.1\"\n";
                dp.apply(attached.ebpf_mut(), &vip(one)).expect("apply");
                dp.apply(
                    attached.ebpf_mut(),
                    &vip(&format!("{one}[[vip.real]]\naddress = \"10.1.0.2\"\n")),
                )
                .expect("apply");
                let index = dp
                    .vip_index("10.9.0.1:80".parse().expect("vip"), Protocol::Tcp)
                    .expect("index");
                let prev: aya::maps::Array<&MapData, PrevRing> = attached
                    .ebpf()
                    .map(map_names::PREV_RINGS)
                    .expect("PREV_RINGS")
                    .try_into()
                    .expect("array");
                let prev = prev.get(&index, 0).expect("entry");
                let table: aya::maps::HashMap<&MapData, FlowKey, FlowEntry> = attached
                    .ebpf()
                    .map(map_names::CONNTRACK)
                    .expect("CONNTRACK")
                    .try_into()
                    .expect("hash map");
                let entry = table.get(&flow, 0).expect("old entry");
                Ok((attached.reused_maps(), prev, entry, attached))
            }
        })
        .expect("thread in netns");
    let (reused, prev, entry, attached) = taken.expect("this build takes over the layout's pins");
    assert!(reused);
    assert_eq!(
        entry,
        FlowEntry {
            real: 1,
            vip: 3,
            seen: 0,
            hash: 0x1234_5678
        }
    );
    assert_eq!(
        prev.ring_size, 1009,
        "the ring before the change is kept: {prev:?}"
    );
    for (name, shape) in &layout {
        assert_eq!(pinned_shape(&dir.join(name)), *shape, "{name} kept");
    }
    assert!(
        dir.join(map_names::PREV_RINGS).exists(),
        "PREV_RINGS pinned"
    );
    attached.detach().expect("detach");
}

#[test]
fn a_pin_of_another_shape_is_refused_except_a_smaller_counter_array() {
    if !require_root("a_pin_of_another_shape_is_refused_except_a_smaller_counter_array") {
        return;
    }
    let current = fixture("layout-current.txt");
    for (tag, name, change) in [
        ("cv", map_names::CONNTRACK, 2usize), // value size
        ("ce", map_names::L4_EVENTS, 3),      // more entries than this build has
        ("ck", map_names::DENY_V4, 1),        // key size
    ] {
        let (a, _b, pins) = rig(tag);
        let dir = pins.path.clone();
        std::fs::create_dir_all(&dir).expect("pin dir");
        let mut shape = current[name];
        shape[change] += 8;
        create_pinned(&dir, name, shape);
        let result = a
            .run({
                let dir = dir.clone();
                move || xdp::attach_pinned("a0", AttachMode::Skb, &dir).map(|_| ())
            })
            .expect("thread in netns");
        match result {
            Err(XdpError::IncompatiblePin { path, .. }) => assert_eq!(path, dir.join(name)),
            other => panic!("{name} {shape:?}: {other:?}"),
        }
    }
}

#[test]
fn this_builds_pinned_layout_is_the_golden_one() {
    if !require_root("this_builds_pinned_layout_is_the_golden_one") {
        return;
    }
    let (a, _b, pins) = rig("cur");
    let dir = pins.path.clone();
    let attached = a
        .run({
            let dir = dir.clone();
            move || xdp::attach_pinned("a0", AttachMode::Skb, &dir).expect("attach")
        })
        .expect("thread in netns");
    let made: Layout = PINNED_MAPS
        .iter()
        .map(|name| (name.to_string(), pinned_shape(&dir.join(name))))
        .collect();
    attached.detach().expect("detach");
    assert_eq!(
        made,
        fixture("layout-current.txt"),
        "a pinned map changed shape: running fast paths can no longer be taken over. If that \
         is intended, say so in docs/ARCHITECTURE.md and update tests/fixtures/pins/"
    );
}
