//! The upstream side of a pool, one job per module:
//!
//! - `connector.rs`: opening one upstream connection (TCP, PROXY header).
//! - `private.rs`: per-downstream-connection clients for pools that send a PROXY header, so an
//!   upstream connection never carries two different clients.
mod connector;
mod private;

pub use connector::UpstreamConnector;
pub use private::ConnInfo;
