//! The XDP tier seen from userspace: the embedded object, loading and attaching it, reading its
//! counters and forwarding its log records.
mod attach;
mod error;
mod logs;
mod object;
pub mod pin;
pub mod privilege;
mod stats;

pub use attach::{AttachMode, AttachedXdp, attach, attach_pinned, attach_program};
pub use error::XdpError;
pub use logs::forward_logs;
pub use object::{load, load_pinned, object_bytes};
pub use stats::{XdpStats, read_stats};
