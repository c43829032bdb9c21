//! `lb bench`: the bundled load generator.
//!
//! - `target.rs`: what to load (URLs, method, headers, body) and how to reach it.
//! - `conn.rs`: one client connection: TCP, optional PROXY header, optional TLS, then HTTP/1.1
//!   (`h1.rs`: pre-serialized requests, httparse framing) or HTTP/2 (hyper), with connect and
//!   handshake times.
//! - `engine.rs`: the connection tasks, closed loop or open loop (intended-time latency, so a
//!   stalled server shows in the percentiles: no coordinated omission), progress lines.
//! - `l4.rs`: L4 mode (TCP connection rate, UDP datagram rate) for the XDP tier.
//! - `report.rs`: merged results, text and JSON; `html.rs`: the self-contained HTML report.
//! - `compare.rs`: `lb bench compare A.json B.json` (two saved reports side by side).
pub mod compare;
mod conn;
mod engine;
mod h1;
mod html;
mod l4;
mod report;
mod target;

pub use engine::{BenchConfig, LoadMode, run};
pub use html::{render as render_html, render_comparison as render_comparison_html};
pub use l4::{L4Config, L4Protocol, L4Report, run_l4};
pub use report::{BenchReport, LatencySummary};
pub use target::{HttpVersion, ProxyHeaderVersion, Target, TargetError, Tunnel};
