//! The admin surface on `--admin ADDR:PORT` (loopback by default): Prometheus `/metrics`, the
//! live status page at `/`, its JSON at `/api/status`, and drain control.
//!
//! - `status.rs`: the snapshot the manager publishes.
//! - `metrics.rs`: the Prometheus registry (live L7 counters + snapshot values).
//! - `server.rs`: the HTTP endpoints. `page.html`: the status page (no external assets).
pub mod exposition;
pub mod metrics;
pub mod server;
pub mod status;

pub use server::{AdminCommand, AdminState, serve_admin};
