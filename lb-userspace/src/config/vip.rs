//! The L4 part of the backend file (TOML): VIPs, their reals, encapsulation sources.
//!
//! ```toml
//! [encap]                        # optional: outer source prefixes (low bits = flow hash)
//! source_v4 = "172.16.0.0"       # a /16
//! source_v6 = "fd00::1:0:0"      # a /96
//!
//! [l4]                           # optional: hardening, for every VIP
//! flood_guard_new_flows_per_cpu = 50000  # new flows/s per CPU past which new flows are
//!                                # forwarded by hash without a connection-table entry
//! source_new_flows_per_second = 100      # per client address; over it new flows are dropped
//! source_new_flows_burst = 200   # default: one second's worth
//! deny = ["192.0.2.0/24"]        # client networks dropped at every VIP
//! allow = ["0.0.0.0/0", "::/0"]  # when non-empty, only these clients reach any VIP
//! previous_ring_window = "5m"    # after a change of reals, TCP segments of flows no entry
//!                                # knows get a second chance on the previous ring's real
//!                                # ("0s": never)
//!
//! [[vip]]
//! address = "10.100.0.100:80"    # VIP address and port (port 0 is reserved)
//! deny = ["198.51.100.7"]        # per-VIP lists, on top of [l4]'s (an address is a /32, /128)
//! allow = ["10.0.0.0/8"]
//! protocol = "tcp"               # tcp (default) | udp
//! forward = "encap"              # encap (default): IPIP/IP6IP6 DSR | local: this host's stack
//! ring_size = 65537              # Maglev ring, a prime <= 65537 (default 65537)
//! pool = "web"                   # optional: the reals are this pool's backend addresses (ports
//!                                # ignored), and the pool's health checks take them out and in
//!
//!   [[vip.real]]
//!   address = "10.201.1.2"
//!   weight = 100                 # default 1; 0 = no new flows
//!   down = false                 # true: no flows; established ones are re-hashed
//! ```
//! Every error names the file, line and reason.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use lb_common::l4::{
    DEFAULT_RING_SIZE, EncapConfig, MAX_REALS, MAX_RING_SIZE, MAX_VIPS, SOURCE_LIST_CAPACITY,
};
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, RawFile, value::duration};
use crate::maglev::is_prime;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    #[default]
    Encap,
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealConfig {
    pub addr: IpAddr,
    pub weight: u32,
    pub down: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub forward: Forward,
    pub ring_size: u32,
    pub reals: Vec<RealConfig>,
    /// The L7 pool whose backends are this VIP's reals (and whose health decides `down`).
    pub pool: Option<String>,
    /// Client networks this VIP drops / alone accepts, on top of [`GuardSettings`]' lists.
    pub lists: SourceLists,
}

/// Allow and deny lists of client networks (host bits clear).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceLists {
    pub deny: Vec<IpNet>,
    /// When non-empty, clients outside it are dropped.
    pub allow: Vec<IpNet>,
}

/// The `[l4]` section: hardening and ring changes, for every VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSettings {
    /// New flows per second per CPU past which new flows skip the connection table.
    pub flood_guard_new_flows_per_cpu: Option<u64>,
    /// (sustained new flows per second, burst) per client address.
    pub source_new_flows: Option<(u64, u64)>,
    pub lists: SourceLists,
    /// How long a VIP's previous ring keeps sending TCP segments of flows that miss the
    /// connection table after its reals changed (zero: never).
    pub previous_ring_window: Duration,
}

/// Default of `[l4] previous_ring_window`: long enough for the flows that were open at a
/// change of reals and then move between nodes (a node failing, drained, or coming back
/// within minutes), short enough that the extra hop through the previous ring's real, which
/// such moved flows take while it lasts, does not linger.
pub const DEFAULT_PREVIOUS_RING_WINDOW: Duration = Duration::from_secs(300);

/// Longest `[l4] previous_ring_window`: past a day, the flows from before a change are long
/// gone, and every moved flow would still make the extra hop through the previous ring's real.
pub const MAX_PREVIOUS_RING_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            flood_guard_new_flows_per_cpu: None,
            source_new_flows: None,
            lists: SourceLists::default(),
            previous_ring_window: DEFAULT_PREVIOUS_RING_WINDOW,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Config {
    pub encap: EncapConfig,
    pub guard: GuardSettings,
    pub vips: Vec<VipConfig>,
}

/// The per-source rate's bound: its interval, 1e9 / rate ns, must be at least 1.
const MAX_SOURCE_RATE: u64 = 1_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawL4 {
    flood_guard_new_flows_per_cpu: Option<Spanned<u64>>,
    source_new_flows_per_second: Option<Spanned<u64>>,
    source_new_flows_burst: Option<Spanned<u64>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    previous_ring_window: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEncap {
    source_v4: Option<Spanned<String>>,
    source_v6: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVip {
    address: Spanned<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    forward: Forward,
    ring_size: Option<Spanned<u32>>,
    #[serde(default, rename = "real")]
    reals: Vec<Spanned<RawReal>>,
    pool: Option<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    address: Spanned<String>,
    weight: Option<u32>,
    #[serde(default)]
    down: bool,
}

impl L4Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = ConfigError::read_file(path)?;
        Self::parse(&text, path)
    }

    /// Parses `text` (the whole backend file; this takes its L4 sections); errors name `path`
    /// (only used for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = RawFile::parse(text, path)?;
        let pools = raw.pool_names();
        Self::from_raw(raw.encap, raw.l4, raw.vips, &pools, text, path)
    }

    /// `pool_names`: the `[[pool]]` names of the same file (a VIP may take its reals from one).
    pub(crate) fn from_raw(
        encap_section: Option<RawEncap>,
        l4_section: Option<RawL4>,
        raw_vips: Vec<Spanned<RawVip>>,
        pool_names: &HashSet<String>,
        text: &str,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);

        let mut encap = EncapConfig::default();
        if let Some(e) = encap_section {
            if let Some(v4) = e.source_v4 {
                let addr: Ipv4Addr = v4.get_ref().parse().map_err(|_| {
                    err(
                        v4.span(),
                        format!("source_v4: {:?} is not an IPv4 address", v4.get_ref()),
                    )
                })?;
                encap.src_v4 = addr.octets();
            }
            if let Some(v6) = e.source_v6 {
                let addr: Ipv6Addr = v6.get_ref().parse().map_err(|_| {
                    err(
                        v6.span(),
                        format!("source_v6: {:?} is not an IPv6 address", v6.get_ref()),
                    )
                })?;
                encap.src_v6 = addr.octets();
            }
        }

        let guard = match l4_section {
            Some(raw) => guard_settings(raw, &err)?,
            None => GuardSettings::default(),
        };
        // Each trie holds every scope's networks of its list and family.
        let mut list_entries = [0usize; 4];
        count_entries(&guard.lists, &mut list_entries);

        if raw_vips.len() > MAX_VIPS as usize {
            let span = raw_vips[MAX_VIPS as usize].span();
            return Err(err(span, format!("more than {MAX_VIPS} VIPs")));
        }
        let mut seen = HashSet::new();
        let mut total_reals = 0usize;
        let mut vips = Vec::with_capacity(raw_vips.len());
        for spanned in raw_vips {
            let span = spanned.span();
            let vip = spanned.into_inner();
            let addr_text = vip.address.get_ref();
            let addr: SocketAddr = addr_text.parse().map_err(|_| {
                err(
                    vip.address.span(),
                    format!("vip address {addr_text:?} is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)"),
                )
            })?;
            if addr.port() == 0 {
                return Err(err(vip.address.span(), "vip port 0 is reserved".to_owned()));
            }
            if !seen.insert((addr, vip.protocol)) {
                return Err(err(
                    span,
                    format!("duplicate vip {addr} {:?}", vip.protocol).to_lowercase(),
                ));
            }
            let ring_size = match &vip.ring_size {
                None => DEFAULT_RING_SIZE,
                Some(size) => {
                    let n = *size.get_ref();
                    if n > MAX_RING_SIZE || !is_prime(n) {
                        return Err(err(
                            size.span(),
                            format!("ring_size {n} must be a prime no larger than {MAX_RING_SIZE}"),
                        ));
                    }
                    n
                }
            };
            let mut real_addrs = HashSet::new();
            let mut reals = Vec::with_capacity(vip.reals.len());
            for real in vip.reals {
                let real_span = real.span();
                let real = real.into_inner();
                let text = real.address.get_ref();
                let raddr: IpAddr = text.parse().map_err(|_| {
                    err(
                        real.address.span(),
                        format!("real address {text:?} is not an IP address"),
                    )
                })?;
                if !real_addrs.insert(raddr) {
                    return Err(err(
                        real_span,
                        format!("duplicate real {raddr} in vip {addr}"),
                    ));
                }
                reals.push(RealConfig {
                    addr: raddr,
                    weight: real.weight.unwrap_or(1),
                    down: real.down,
                });
            }
            if let Some(pool) = &vip.pool {
                if !pool_names.contains(pool.get_ref()) {
                    return Err(err(
                        pool.span(),
                        format!("vip {addr} names unknown pool {:?}", pool.get_ref()),
                    ));
                }
                if !reals.is_empty() {
                    return Err(err(
                        pool.span(),
                        format!("vip {addr} has both pool and [[vip.real]] sections"),
                    ));
                }
            }
            if reals.len() > ring_size as usize {
                return Err(err(span, format!("vip {addr}: more reals than ring slots")));
            }
            let lists = SourceLists {
                deny: networks(&vip.deny, "deny", &err)?,
                allow: networks(&vip.allow, "allow", &err)?,
            };
            count_entries(&lists, &mut list_entries);
            if list_entries
                .iter()
                .any(|n| *n > SOURCE_LIST_CAPACITY as usize)
            {
                return Err(err(
                    span,
                    format!(
                        "more than {SOURCE_LIST_CAPACITY} networks in one list and family (all VIPs and [l4] together)"
                    ),
                ));
            }
            total_reals += reals.len();
            if total_reals >= MAX_REALS as usize {
                return Err(err(
                    span,
                    format!("more than {} reals in all", MAX_REALS - 1),
                ));
            }
            vips.push(VipConfig {
                addr,
                protocol: vip.protocol,
                forward: vip.forward,
                ring_size,
                reals,
                pool: vip.pool.map(Spanned::into_inner),
                lists,
            });
        }
        Ok(Self { encap, guard, vips })
    }
}

/// Adds a scope's list sizes to `counts`: deny v4, deny v6, allow v4, allow v6.
fn count_entries(lists: &SourceLists, counts: &mut [usize; 4]) {
    for (i, list) in [&lists.deny, &lists.allow].into_iter().enumerate() {
        counts[2 * i] += list.iter().filter(|n| n.addr().is_ipv4()).count();
        counts[2 * i + 1] += list.iter().filter(|n| n.addr().is_ipv6()).count();
    }
}

fn guard_settings(
    raw: RawL4,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<GuardSettings, ConfigError> {
    let positive = |value: &Spanned<u64>, what: &str| match *value.get_ref() {
        0 => Err(err(
            value.span(),
            format!("{what} must be above 0 (leave it out for no limit)"),
        )),
        n => Ok(n),
    };
    let flood_guard_new_flows_per_cpu = raw
        .flood_guard_new_flows_per_cpu
        .as_ref()
        .map(|v| positive(v, "flood_guard_new_flows_per_cpu"))
        .transpose()?;
    let source_new_flows = match (
        &raw.source_new_flows_per_second,
        &raw.source_new_flows_burst,
    ) {
        (None, None) => None,
        (None, Some(burst)) => {
            return Err(err(
                burst.span(),
                "source_new_flows_burst without source_new_flows_per_second".to_owned(),
            ));
        }
        (Some(rate), burst) => {
            let per_second = positive(rate, "source_new_flows_per_second")?;
            if per_second > MAX_SOURCE_RATE {
                return Err(err(
                    rate.span(),
                    format!("source_new_flows_per_second must be at most {MAX_SOURCE_RATE}"),
                ));
            }
            let burst = match burst {
                Some(b) => positive(b, "source_new_flows_burst")?,
                None => per_second,
            };
            Some((per_second, burst))
        }
    };
    Ok(GuardSettings {
        flood_guard_new_flows_per_cpu,
        source_new_flows,
        lists: SourceLists {
            deny: networks(&raw.deny, "deny", err)?,
            allow: networks(&raw.allow, "allow", err)?,
        },
        previous_ring_window: previous_ring_window(&raw.previous_ring_window, err)?,
    })
}

/// `[l4] previous_ring_window`: at most [`MAX_PREVIOUS_RING_WINDOW`].
fn previous_ring_window(
    value: &Option<Spanned<String>>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    let window = duration(
        value,
        DEFAULT_PREVIOUS_RING_WINDOW,
        "previous_ring_window",
        err,
    )?;
    match value {
        Some(v) if window > MAX_PREVIOUS_RING_WINDOW => Err(err(
            v.span(),
            "previous_ring_window must be at most 24h".to_owned(),
        )),
        _ => Ok(window),
    }
}

/// A list of networks: `ADDRESS/PREFIX` with no host bits set, or a lone address (a /32 or
/// /128).
fn networks(
    list: &[Spanned<String>],
    what: &str,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|item| {
            let text = item.get_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    err(
                        item.span(),
                        format!("{what}: {text:?} is not a network (ADDRESS/PREFIX) or an address"),
                    )
                })?,
            };
            if net.trunc() != net {
                return Err(err(
                    item.span(),
                    format!(
                        "{what}: {text:?} has host bits set (the network is {})",
                        net.trunc()
                    ),
                ));
            }
            Ok(net)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<L4Config, String> {
        L4Config::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            r#"
[encap]
source_v4 = "172.30.0.0"
source_v6 = "fd00::9:0:0"

[[vip]]
address = "10.100.0.100:80"
ring_size = 1009
  [[vip.real]]
  address = "10.201.1.2"
  weight = 2
  [[vip.real]]
  address = "fd00::2"
  down = true

[[vip]]
address = "[fd00::100]:53"
protocol = "udp"
forward = "local"
"#,
        )
        .expect("valid");
        assert_eq!(cfg.encap.src_v4, [172, 30, 0, 0]);
        assert_eq!(cfg.vips.len(), 2);
        let v = &cfg.vips[0];
        assert_eq!(
            (v.protocol, v.forward, v.ring_size),
            (Protocol::Tcp, Forward::Encap, 1009)
        );
        assert_eq!(v.reals[0].weight, 2);
        assert!(v.reals[1].down && v.reals[1].weight == 1);
        let v = &cfg.vips[1];
        assert_eq!(
            (v.protocol, v.forward, v.ring_size),
            (Protocol::Udp, Forward::Local, 65537)
        );
    }

    #[test]
    fn source_lists_and_limits_parse() {
        let cfg = parse(
            r#"
[l4]
flood_guard_new_flows_per_cpu = 50000
source_new_flows_per_second = 100
deny = ["192.0.2.0/24", "2001:db8::/32"]
allow = ["0.0.0.0/0"]
previous_ring_window = "90s"

[[vip]]
address = "10.100.0.100:80"
deny = ["198.51.100.7", "fd00::7"]
"#,
        )
        .expect("valid");
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        assert_eq!(cfg.guard.flood_guard_new_flows_per_cpu, Some(50000));
        assert_eq!(
            cfg.guard.source_new_flows,
            Some((100, 100)),
            "burst: one second"
        );
        assert_eq!(
            cfg.guard.lists.deny,
            [net("192.0.2.0/24"), net("2001:db8::/32")]
        );
        assert_eq!(cfg.guard.lists.allow, [net("0.0.0.0/0")]);
        assert_eq!(cfg.guard.previous_ring_window, Duration::from_secs(90));
        assert_eq!(
            cfg.vips[0].lists.deny,
            [net("198.51.100.7/32"), net("fd00::7/128")],
            "a lone address is a host network"
        );
        assert!(cfg.vips[0].lists.allow.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let cases = [
            (
                "[[vip]]\naddress = \"10.0.0.1\"\n",
                "lb.toml:2: vip address \"10.0.0.1\" is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:0\"\n",
                "lb.toml:2: vip port 0 is reserved",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\nring_size = 65536\n",
                "lb.toml:3: ring_size 65536 must be a prime no larger than 65537",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\nbogus = 1\n",
                "lb.toml:3: unknown field `bogus`, expected one of `address`, `protocol`, `forward`, `ring_size`, `real`, `pool`, `deny`, `allow`",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\npool = \"web\"\n",
                "lb.toml:3: vip 10.0.0.1:80 names unknown pool \"web\"",
            ),
            (
                "[[pool]]\nname = \"web\"\n[[vip]]\naddress = \"10.0.0.1:80\"\npool = \"web\"\n[[vip.real]]\naddress = \"10.0.0.2\"\n",
                "lb.toml:5: vip 10.0.0.1:80 has both pool and [[vip.real]] sections",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\nprotocol = \"sctp\"\n",
                "lb.toml:3: unknown variant `sctp`, expected `tcp` or `udp`",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\n[[vip.real]]\naddress = \"10.0.0.300\"\n",
                "lb.toml:4: real address \"10.0.0.300\" is not an IP address",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\n[[vip]]\naddress = \"10.0.0.1:80\"\n",
                "lb.toml:3: duplicate vip 10.0.0.1:80 tcp",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\n[[vip.real]]\naddress = \"10.0.0.2\"\n[[vip.real]]\naddress = \"10.0.0.2\"\n",
                "lb.toml:5: duplicate real 10.0.0.2 in vip 10.0.0.1:80",
            ),
            (
                "[encap]\nsource_v4 = \"fd00::1\"\n",
                "lb.toml:2: source_v4: \"fd00::1\" is not an IPv4 address",
            ),
            (
                "[[vip]\n",
                "lb.toml:1: invalid table header; expected `.`, `]]`",
            ),
            (
                "[l4]\ndeny = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]\n",
                "lb.toml:3: deny: \"10.0.0.0/33\" is not a network (ADDRESS/PREFIX) or an address",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1:80\"\nallow = [\"10.1.2.3/16\"]\n",
                "lb.toml:3: allow: \"10.1.2.3/16\" has host bits set (the network is 10.1.0.0/16)",
            ),
            (
                "[l4]\nflood_guard_new_flows_per_cpu = 0\n",
                "lb.toml:2: flood_guard_new_flows_per_cpu must be above 0 (leave it out for no limit)",
            ),
            (
                "[l4]\nsource_new_flows_burst = 5\n",
                "lb.toml:2: source_new_flows_burst without source_new_flows_per_second",
            ),
            (
                "[l4]\nsource_new_flows_per_second = 2000000000\n",
                "lb.toml:2: source_new_flows_per_second must be at most 1000000000",
            ),
            (
                "[l4]\nprevious_ring_window = \"2days\"\n",
                "lb.toml:2: previous_ring_window must be at most 24h",
            ),
            (
                "[l4]\nprevious_ring_window = \"soon\"\n",
                "lb.toml:2: previous_ring_window \"soon\": expected number at 0",
            ),
            (
                "[l4]\nflood_guard = 5\n",
                "lb.toml:2: unknown field `flood_guard`, expected one of `flood_guard_new_flows_per_cpu`, `source_new_flows_per_second`, `source_new_flows_burst`, `deny`, `allow`, `previous_ring_window`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).expect_err(text), expected, "for {text:?}");
        }
    }
}
