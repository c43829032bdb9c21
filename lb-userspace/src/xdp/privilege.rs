//! What the XDP tier needs of the process, checked before loading so a missing privilege is
//! named instead of surfacing as the kernel's bare "Operation not permitted".
//!
//! Loading programs and creating maps needs CAP_BPF (or, on kernels before 5.8 and as its
//! superset, CAP_SYS_ADMIN); attaching to an interface needs CAP_NET_ADMIN. Root has both.

/// The effective capability set of this process (`CapEff` in /proc/self/status); None when it
/// cannot be read (then nothing is claimed missing: the kernel will say).
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The capabilities the XDP tier needs that `effective` lacks.
pub fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The capabilities this process lacks for the XDP tier (empty: none, or unknown).
pub fn missing() -> Vec<&'static str> {
    effective().map_or_else(Vec::new, missing_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_NET_ADMIN"]);
        assert!(missing_from(u64::MAX).is_empty(), "root");
        assert_eq!(missing_from(1 << CAP_BPF), ["CAP_NET_ADMIN"]);
        assert!(missing_from(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN).is_empty());
    }
}
