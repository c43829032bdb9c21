//! The status snapshot: what the manager knows about services, pools, backends and the XDP
//! tier at one moment. Built by the manager about once a second (and after every change),
//! served as JSON at `/api/status`, rendered by the status page, and the source of the
//! scrape-time metrics (health, XDP counters).
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// This process (it changes with an upgrade).
    pub pid: u32,
    pub uptime_seconds: f64,
    pub config: ConfigStatus,
    pub listeners: Vec<ListenerStatus>,
    /// Client connections open on the HTTP listeners (what `--max-connections` caps).
    pub l7_connections: u64,
    pub routes: Vec<RouteStatus>,
    pub pools: Vec<PoolStatus>,
    pub vips: Vec<VipStatus>,
    pub xdp: Option<XdpStatus>,
    /// The VIPs' announcement by BGP (`[bgp]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BgpStatus {
    pub speaker: &'static str,
    /// The BIRD lb runs is running (always true for one run by someone else).
    pub speaker_running: bool,
    pub control_socket: String,
    /// `lb ctl drain-node` (or stopping): every VIP withdrawn.
    pub node_drained: bool,
    pub sessions: Vec<BgpSessionStatus>,
    pub addresses: Vec<AnnouncedAddress>,
    /// The last failure talking to BIRD.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BgpSessionStatus {
    pub name: String,
    /// BIRD's protocol state (up, start, ...).
    pub state: String,
    /// BGP's state and last error (Established, Active ...).
    pub info: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AnnouncedAddress {
    pub address: String,
    /// This node should announce it ...
    pub announce: bool,
    /// ... and BIRD has taken that.
    pub in_bird: bool,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigStatus {
    pub path: String,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Why the last reload was rejected (cleared by a good one).
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    /// http, https, tcp, udp, forward_proxy
    pub kind: String,
    /// HTTP listeners: connections (current, peak), answers, bytes, latency, trend; tcp
    /// listeners: connections and bytes (added when each relay ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// Its name, or its index in the file when unnamed.
    pub name: String,
    pub listener: String,
    /// The pool it sends to (the first of a split).
    pub pool: Option<String>,
    /// Answers, latency and trend (current/peak and bytes are the listeners' and backends').
    pub traffic: TrafficView,
}

/// What the status page shows of one listener, route or backend: totals since start, the
/// last second's rate, latency percentiles over the last minute, a trend line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrafficView {
    /// Open connections (listeners) or requests in flight (backends) now, and the most at once.
    pub current: u64,
    pub peak: u64,
    pub answers: crate::l7::traffic::Classes,
    /// Request bytes (from clients, to backends) and response bytes, as on the wire (TLS
    /// records included upstream); HAProxy's "bytes in/out". Routes have none.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub answers_per_second: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Answers per second, oldest first, one value per status tick (about a second), up to
    /// a minute.
    pub trend: Vec<f64>,
}

/// A backend's active health checks.
#[derive(Clone, Debug, Serialize)]
pub struct CheckStatus {
    /// passed, failed, or pending (no check yet).
    pub last_result: &'static str,
    pub last_reason: Option<String>,
    pub last_duration_ms: f64,
    pub seconds_since_change: f64,
    pub downtime_seconds: f64,
    pub checks: u64,
    pub failures: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub algorithm: String,
    /// The adaptive concurrency limit now (pools with `[pool.adaptive_concurrency]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_limit: Option<u32>,
    /// Pools with outlier detection: ejections by reason, and ejections the
    /// `max_ejected_percent` cap refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierCounts>,
    pub backends: Vec<BackendStatus>,
    /// Pools with `[pool.discovery]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// A pool's backend discovery.
#[derive(Clone, Debug, Serialize)]
pub struct DiscoveryStatus {
    /// `dns NAME:PORT` or `dns_srv NAME`.
    pub source: String,
    /// Backends in the last good answer.
    pub backends: usize,
    /// Since the set last changed (None: no good answer yet).
    pub seconds_since_update: Option<f64>,
    /// Why the latest lookup failed (the last good set stays).
    pub last_error: Option<String>,
    pub updates: u64,
    pub failures: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OutlierCounts {
    pub ejected_consecutive_5xx: u64,
    pub ejected_gateway_errors: u64,
    pub skipped_max_ejected_percent: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    /// The effective weight now (slow start ramps it up after a backend came back; 0 down),
    /// and the configured one.
    pub weight: u32,
    pub configured_weight: u32,
    pub backup: bool,
    /// up, down, draining, ejected (passive), unchecked (no active checks)
    pub health: String,
    pub last_error: Option<String>,
    pub in_flight: u64,
    /// Attempts sent to the backend (retries count on the backend they went to).
    pub requests: u64,
    /// Attempts that failed: connect error, timeout, broken exchange or a 5xx answer.
    pub errors: u64,
    /// Requests per second and share of failed attempts over the last rate period (about
    /// a second, the status tick).
    pub requests_per_second: f64,
    pub error_rate: f64,
    /// Pools with outlier detection: times ejected, and how long the latest ejection was
    /// (it grows with repeated ejections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ejection_ms: Option<u64>,
    /// Pools with active health checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckStatus>,
    pub traffic: TrafficView,
}

#[derive(Clone, Debug, Serialize)]
pub struct VipStatus {
    pub address: String,
    pub protocol: String,
    pub forward: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Hash of the VIP's live Maglev table by real address, 16 hex digits: nodes given the
    /// same reals, weights and ring size show the same value. `None` until built or checked.
    pub ring_hash: Option<String>,
    /// Over the last status tick.
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    /// Packets per second, oldest first, up to a minute.
    pub trend: Vec<f64>,
    pub reals: Vec<RealStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RealStatus {
    pub address: String,
    pub weight: u32,
    pub up: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct XdpStatus {
    pub iface: String,
    pub mode: String,
    /// Packets by datapath verdict/class (passed, encapsulated, local, dropped, ...).
    pub classes: Vec<(String, u64)>,
    /// Dropped malformed packets by reason.
    pub drops: Vec<(String, u64)>,
    /// Datapath events (new flows, ring misses, ...).
    pub events: Vec<(String, u64)>,
}
