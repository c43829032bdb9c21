//! The manager: `lb run`. One process runs the L7 tier, the XDP tier (with `--iface`), the
//! health checks feeding both, the backend-file watcher, and the admin surface.
//!
//! - `flags.rs`: single-service command-line flags turned into backend-file sections.
//! - `watch.rs`: noticing backend-file changes.
//! - `run.rs`: the manager: configuration, tiers, health into both tiers, drains, reloads,
//!   the status snapshot.
pub mod flags;
pub mod run;
pub mod watch;
