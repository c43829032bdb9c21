//! Shared test support for lb: the network-namespace rig, frame builders, and a
//! BPF_PROG_TEST_RUN harness for the XDP datapath.
pub mod netns;
pub mod packets;
pub mod xdp_run;

/// Prefix of every network namespace the tests create (`netns::sweep_stale` removes leftovers).
pub const NETNS_PREFIX: &str = "lbt";
