//! Which VIP addresses this node announces. BGP announces addresses, not services: an address
//! is announced while this node can serve at least one VIP on it (withdrawing it would take
//! the healthy services down with the broken one), the node is neither drained nor stopping,
//! and the XDP tier is attached (without it no VIP is served here).
use std::net::{IpAddr, SocketAddr};

/// Whether this node can serve one VIP (address and port), and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipReadiness {
    pub vip: SocketAddr,
    /// None: it can; Some(why) otherwise.
    pub unready: Option<String>,
}

/// The decision for one VIP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub address: IpAddr,
    pub announce: bool,
    /// Why it is (the VIPs it serves) or is not announced.
    pub reason: String,
}

/// Whether the node offers its VIPs at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeState {
    #[default]
    Serving,
    /// `lb ctl drain-node`.
    Drained,
    /// SIGTERM: withdrawn first, then drained, then stopped.
    Stopping,
}

pub fn decide(node: NodeState, xdp_attached: bool, vips: &[VipReadiness]) -> Vec<Decision> {
    let mut addresses: Vec<IpAddr> = vips.iter().map(|v| v.vip.ip()).collect();
    addresses.sort();
    addresses.dedup();
    addresses
        .into_iter()
        .map(|address| {
            let on_it: Vec<&VipReadiness> = vips.iter().filter(|v| v.vip.ip() == address).collect();
            let ready: Vec<String> = on_it
                .iter()
                .filter(|v| v.unready.is_none())
                .map(|v| v.vip.to_string())
                .collect();
            let (announce, reason) = if node == NodeState::Drained {
                (false, "node drained (lb ctl drain-node)".to_owned())
            } else if node == NodeState::Stopping {
                (false, "lb is stopping".to_owned())
            } else if !xdp_attached {
                (false, "no XDP tier on this node (--iface)".to_owned())
            } else if ready.is_empty() {
                let why: Vec<String> = on_it
                    .iter()
                    .filter_map(|v| v.unready.as_ref().map(|why| format!("{}: {why}", v.vip)))
                    .collect();
                (false, why.join("; "))
            } else {
                (true, format!("serving {}", ready.join(", ")))
            };
            Decision {
                address,
                announce,
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(addr: &str, unready: Option<&str>) -> VipReadiness {
        VipReadiness {
            vip: addr.parse().expect("addr"),
            unready: unready.map(str::to_owned),
        }
    }

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_is_served() {
        let vips = [
            vip("10.0.0.1:80", Some("no real has passed a health check")),
            vip("10.0.0.1:443", None),
            vip("10.0.0.2:80", Some("no real has passed a health check")),
        ];
        let decisions = decide(NodeState::Serving, true, &vips);
        assert_eq!(
            decisions,
            [
                Decision {
                    address: "10.0.0.1".parse().expect("ip"),
                    announce: true,
                    reason: "serving 10.0.0.1:443".into()
                },
                Decision {
                    address: "10.0.0.2".parse().expect("ip"),
                    announce: false,
                    reason: "10.0.0.2:80: no real has passed a health check".into()
                }
            ]
        );
    }

    #[test]
    fn a_drained_node_or_one_without_xdp_announces_nothing() {
        let vips = [vip("10.0.0.1:80", None)];
        let drained = decide(NodeState::Drained, true, &vips);
        assert!(!drained[0].announce && drained[0].reason.contains("drain-node"));
        let stopping = decide(NodeState::Stopping, true, &vips);
        assert!(!stopping[0].announce && stopping[0].reason.contains("stopping"));
        let no_xdp = decide(NodeState::Serving, false, &vips);
        assert!(!no_xdp[0].announce && no_xdp[0].reason.contains("--iface"));
    }
}
