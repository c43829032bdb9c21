//! The L4 tier seen from userspace: the backend file's VIPs, and keeping the datapath's maps
//! (VIPs, reals, Maglev rings, source lists and limits) in step with it.
mod dataplane;
mod stats;
mod tags;

pub use crate::config::ConfigError;
pub use crate::config::vip::{
    Forward, GuardSettings, L4Config, Protocol, RealConfig, SourceLists, VipConfig,
};
pub use dataplane::{ApplyReport, L4Dataplane, L4Error, addr16};
pub use stats::{L4Stats, RealStat, VipStat, read_l4_events, read_l4_stats};
pub use tags::{FlowTagInfo, FlowTags, flow_key, lookup_flow_tag};
