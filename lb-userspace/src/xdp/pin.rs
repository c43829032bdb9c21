//! Where a datapath's state lives on bpffs so it outlasts the `lb` process: its maps and its
//! XDP link, pinned under one directory per interface (`/sys/fs/bpf/lb/<iface>/` unless told
//! otherwise). While the link pin exists the program stays attached; while the map pins exist
//! the tables, the connection table, the flow tags and the counters keep their contents.
use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use lb_common::map_names;

use super::{XdpError, object_bytes};

/// Parent of the per-interface pin directories.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/lb";
/// Where bpffs is mounted when it is missing.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The maps that are pinned (and so reused by the next `lb`): all state the datapath reads or
/// counts into. The next-hop cache, the log ring, the per-source rate cells and the flood
/// guard's windows are rebuilt from scratch (losing them costs a second of rate history).
pub const PINNED_MAPS: [&str; 18] = [
    map_names::VIPS,
    map_names::REALS,
    map_names::MAGLEV_RINGS,
    map_names::PREV_RINGS,
    map_names::CONNTRACK,
    map_names::FLOW_TAGS,
    map_names::ENCAP_CONFIG,
    map_names::VIP_STATS,
    map_names::REAL_STATS,
    map_names::L4_EVENTS,
    map_names::PACKET_CLASSES,
    map_names::MALFORMED,
    map_names::PORT_STATS,
    map_names::L4_GUARD,
    map_names::DENY_V4,
    map_names::DENY_V6,
    map_names::ALLOW_V4,
    map_names::ALLOW_V6,
];

/// Counter arrays indexed by an enum. Sized `COUNTER_ARRAY_CAPACITY` (with room for new
/// counters) since the pins had headroom; a pin from before that is smaller and still taken
/// over (see [`check_pinned_maps`]).
pub const COUNTER_ARRAYS: [&str; 3] = [
    map_names::L4_EVENTS,
    map_names::PACKET_CLASSES,
    map_names::MALFORMED,
];

/// The link pin's name carries the attach mode, which the kernel does not report for a link.
const LINK_PINS: [(&str, &str); 2] = [("native", "link_native"), ("skb", "link_skb")];

/// The pin directory of `iface` under the default root.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(iface)
}

/// Path of the link pin for an attach mode ("native" or "skb").
pub fn link_pin(dir: &Path, mode: &str) -> PathBuf {
    let name = LINK_PINS
        .iter()
        .find(|(m, _)| *m == mode)
        .map_or("link", |(_, name)| name);
    dir.join(name)
}

/// The link pin in `dir`, if any, with its attach mode.
pub fn find_link_pin(dir: &Path) -> Option<(PathBuf, &'static str)> {
    LINK_PINS
        .iter()
        .map(|(mode, name)| (dir.join(name), *mode))
        .find(|(path, _)| path.exists())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's integer type differs between libcs; the magic fits in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpf filesystem, mounting bpffs on `/sys/fs/bpf` first when
/// `dir` is below it and nothing is mounted there yet.
pub fn ensure_pin_dir(dir: &Path) -> Result<(), XdpError> {
    let pin_err = |source: io::Error| XdpError::PinDir {
        dir: dir.to_owned(),
        source,
    };
    let mount = Path::new(BPFFS_MOUNT);
    if dir.starts_with(mount) && !is_bpffs(mount).map_err(pin_err)? {
        let target = CString::new(BPFFS_MOUNT).map_err(|e| pin_err(io::Error::other(e)))?;
        let fstype = CString::new("bpf").map_err(|e| pin_err(io::Error::other(e)))?;
        let options = CString::new("mode=0700").map_err(|e| pin_err(io::Error::other(e)))?;
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(pin_err(io::Error::last_os_error()));
        }
        tracing::info!(mount = BPFFS_MOUNT, "mounted bpffs");
    }
    std::fs::create_dir_all(dir).map_err(pin_err)?;
    if !is_bpffs(dir).map_err(pin_err)? {
        return Err(pin_err(io::Error::other(
            "not on a bpf filesystem (mount -t bpf)",
        )));
    }
    Ok(())
}

/// Refuses map pins this build would misread: a pinned map is reused as it is, so its type,
/// key and value sizes, capacity and flags must be exactly what this build's object declares
/// (an older `lb` with another layout left them: remove the directory first).
///
/// One exception, so pins of the layout before counter arrays had headroom can be taken over:
/// a counter array (`COUNTER_ARRAYS`) may hold fewer entries than this build's. The datapath
/// then finds no slot for the counters past its end (the lookup fails, nothing is written)
/// and userspace reads them as 0; a warning names the map. Everything else must match.
pub fn check_pinned_maps(dir: &Path) -> Result<(), XdpError> {
    let object = aya_obj::Object::parse(object_bytes()).map_err(XdpError::Object)?;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = MapInfo::from_pin(&path).map_err(|source| XdpError::PinnedMap {
            path: path.clone(),
            source,
        })?;
        let wanted = object.maps.get(name).ok_or(XdpError::MissingMap(name))?;
        let pinned_type = pinned.map_type().map_or(u32::MAX, |t| t as u32);
        let got = (
            pinned_type,
            pinned.key_size(),
            pinned.value_size(),
            pinned.max_entries(),
            pinned.map_flags(),
        );
        let want = (
            wanted.map_type(),
            wanted.key_size(),
            wanted.value_size(),
            wanted.max_entries(),
            wanted.map_flags(),
        );
        if got != want && !is_smaller_counter_array(name, got, want) {
            return Err(XdpError::IncompatiblePin {
                path,
                detail: format!(
                    "pinned (type, key size, value size, max entries, flags) = {got:?}, this build wants {want:?}"
                ),
            });
        }
        if got != want {
            tracing::warn!(
                map = name,
                pinned_entries = got.3,
                entries = want.3,
                "pinned counter array from an older lb is smaller: the counters past its end read 0 until the pins are removed"
            );
        }
    }
    Ok(())
}

/// (type, key size, value size, max entries, flags) of a map.
type MapShape = (u32, u32, u32, u32, u32);

/// Whether `pinned` is counter array `name` as this build declares it (`wanted`), only with
/// fewer entries.
pub fn is_smaller_counter_array(name: &str, pinned: MapShape, wanted: MapShape) -> bool {
    let (pinned_type, pinned_key, pinned_value, pinned_len, pinned_flags) = pinned;
    let (wanted_type, wanted_key, wanted_value, wanted_len, wanted_flags) = wanted;
    COUNTER_ARRAYS.contains(&name)
        && (pinned_type, pinned_key, pinned_value, pinned_flags)
            == (wanted_type, wanted_key, wanted_value, wanted_flags)
        && pinned_len > 0
        && pinned_len < wanted_len
}

/// Removes the pins `lb` makes in `dir` (and `dir` itself when that leaves it empty). Removing
/// the link pin does not detach by itself: the link goes when its last fd closes too.
pub fn remove_pins(dir: &Path) -> Result<(), XdpError> {
    let names = LINK_PINS
        .iter()
        .map(|(_, name)| *name)
        .chain(PINNED_MAPS.iter().copied());
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(XdpError::PinDir {
                    dir: dir.join(name),
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "pin directory left in place");
            Ok(())
        }
    }
}
