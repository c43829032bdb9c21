//! Backend health: one state per backend, fed by active checks (this module) and by passive
//! signals from the L7 tier, read by both tiers (the L7 pool's selection and the VIP's Maglev
//! table) and by the admin surface.
//!
//! - `state.rs`: the rise/fall state machine and the slow-start weight ramp.
//! - `probe.rs`: one check: TCP connect, or an HTTP/HTTPS request with expected status/body.
//! - `checker.rs`: runs a pool's probes on its interval and reports transitions.
pub mod checker;
pub mod probe;
pub mod state;

pub use crate::config::health_check::{CheckKind, HealthCheckConfig};
pub use checker::{HealthEvent, HealthTarget, spawn_checker};
pub use probe::{ProbeError, probe};
pub use state::{HealthState, Transition};
