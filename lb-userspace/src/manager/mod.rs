//! The manager: `lb run`. One process runs the L7 tier, the XDP tier (with `--iface`), the
//! health checks feeding both, the backend-file watcher, and the admin surface.
//!
//! - `flags.rs`: single-service command-line flags turned into backend-file sections.
//! - `watch.rs`: noticing backend-file changes.
//! - `discovered.rs`: the pools' discovery tasks, their last good sets, the file's
//!   configuration with them added.
//! - `history.rs`: the last minute of traffic samples (rates, trend lines, percentiles).
//! - `run.rs`: the manager: configuration, tiers, health into both tiers, drains, reloads,
//!   the status snapshot.
mod discovered;
pub mod flags;
mod history;
pub mod run;
pub mod watch;
