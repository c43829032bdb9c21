//! Prometheus metrics (prometheus-client): live L7 counters and histograms updated by the
//! request path, plus scrape-time values (backend health, XDP counters, reloads) taken from the
//! latest status snapshot.
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub pool: String,
    pub backend: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// A request an overload guard refused: its pool (empty: the global guard) and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub pool: String,
    /// max_connections, max_pending_requests, max_requests, max_retries,
    /// adaptive_concurrency, memory.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub backend: String,
}

/// A route's rate limit: the route's label, the limit's name, its key kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub route: String,
    pub limit: String,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub route: String,
    /// `api_key`, `client_cert`.
    pub policy: &'static str,
    /// `allowed`, `missing`, `invalid`, `forbidden`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwtAuthLabels {
    pub route: String,
    pub provider: String,
    /// ok, missing, forbidden, or why a token was invalid.
    pub result: String,
}

/// A tcp/udp listener's connections or sessions by outcome, or its bytes by direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub listener: String,
    /// relayed, no_route, no_backend, no_client_hello, client_reset (tcp); started, no_route, no_backend,
    /// session_cap (udp); in, out (bytes).
    pub outcome: &'static str,
}

/// A cached route's answers by what the cache did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: String,
    /// HIT, MISS, EXPIRED, STALE, REVALIDATED, BYPASS.
    pub status: &'static str,
}

/// A forward-proxy decision: `allow`, `deny`, `report` or `unauthenticated`, and the rule
/// (`default`, `ssrf:CLASS`; `missing`/`invalid` credentials).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    pub listener: String,
    pub decision: String,
    pub rule: String,
}

/// A forward-proxy listener's cacheable requests by what its cache did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressCacheLabels {
    pub listener: String,
    /// HIT, MISS, EXPIRED, STALE, REVALIDATED, BYPASS.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub provider: String,
    /// ok or failed.
    pub result: String,
}

/// Counters the L7 request path updates.
#[derive(Clone)]
pub struct L7Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<PoolLabels, Histogram>,
    pub upstream_connect_errors: Family<BackendLabels, Counter>,
    pub retries: Family<PoolLabels, Counter>,
    pub retries_denied: Family<PoolLabels, Counter>,
    pub requests_shed: Family<ShedLabels, Counter>,
    pub auth: Family<AuthLabels, Counter>,
    pub jwt_auth: Family<JwtAuthLabels, Counter>,
    pub jwks_fetches: Family<FetchLabels, Counter>,
    pub rate_limited: Family<RateLimitLabels, Counter>,
    pub rate_limit_dry_run: Family<RateLimitLabels, Counter>,
    pub rate_limit_evictions: Family<RateLimitLabels, Counter>,
    pub rate_limit_redis_errors: Family<RateLimitLabels, Counter>,
    pub rate_limit_fallback: Family<RateLimitLabels, Counter>,
    pub rate_limit_prechecked: Family<RateLimitLabels, Counter>,
    pub client_connections_refused: Family<ListenerLabels, Counter>,
    pub http2_connections_closed: Family<Http2CloseLabels, Counter>,
    pub cache_requests: Family<CacheLabels, Counter>,
    pub access_log_dropped: Counter,
    pub stream_connections: Family<StreamLabels, Counter>,
    pub stream_sessions: Family<StreamLabels, Counter>,
    pub stream_bytes: Family<StreamLabels, Counter>,
    pub cache_bytes: Family<RouteLabels, Gauge>,
    pub cache_entries: Family<RouteLabels, Gauge>,
    pub egress_decisions: Family<EgressLabels, Counter>,
    pub egress_cache_requests: Family<EgressCacheLabels, Counter>,
    pub egress_cache_bytes: Family<ListenerLabels, Gauge>,
    pub egress_cache_entries: Family<ListenerLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Http2CloseLabels {
    pub listener: String,
    /// control_frame_flood (lb's guard), or goaway_<error code> (hyper's limits: rapid
    /// reset, CONTINUATION flood, refused streams, protocol errors).
    pub reason: &'static str,
}

impl L7Metrics {
    fn new() -> Self {
        Self {
            requests: Family::default(),
            // 0.5 ms .. ~16 s
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            upstream_connect_errors: Family::default(),
            retries: Family::default(),
            retries_denied: Family::default(),
            requests_shed: Family::default(),
            rate_limited: Family::default(),
            rate_limit_dry_run: Family::default(),
            rate_limit_evictions: Family::default(),
            rate_limit_redis_errors: Family::default(),
            rate_limit_fallback: Family::default(),
            rate_limit_prechecked: Family::default(),
            client_connections_refused: Family::default(),
            http2_connections_closed: Family::default(),
            cache_requests: Family::default(),
            access_log_dropped: Counter::default(),
            stream_connections: Family::default(),
            stream_sessions: Family::default(),
            stream_bytes: Family::default(),
            cache_bytes: Family::default(),
            cache_entries: Family::default(),
            egress_decisions: Family::default(),
            egress_cache_requests: Family::default(),
            egress_cache_bytes: Family::default(),
            egress_cache_entries: Family::default(),
            auth: Family::default(),
            jwt_auth: Family::default(),
            jwks_fetches: Family::default(),
        }
    }
}

/// The registry and the handles into it.
pub struct Metrics {
    registry: Registry,
    pub l7: L7Metrics,
}

impl Metrics {
    /// Metrics whose scrape-time part reads `status`.
    pub fn new(status: Arc<ArcSwap<Status>>) -> Self {
        let mut registry = Registry::with_prefix("lb");
        let l7 = L7Metrics::new();
        registry.register(
            "http_requests",
            "HTTP requests answered, by listener, route, pool, backend and status",
            l7.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by pool",
            l7.request_seconds.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed upstream connection attempts, by pool and backend",
            l7.upstream_connect_errors.clone(),
        );
        registry.register("retries", "Requests retried, by pool", l7.retries.clone());
        registry.register(
            "egress_decisions",
            "Forward-proxy requests by listener, decision and the rule that made it",
            l7.egress_decisions.clone(),
        );
        registry.register(
            "egress_cache_requests",
            "Cacheable forward-proxy requests on listeners with a cache, by what the cache did",
            l7.egress_cache_requests.clone(),
        );
        registry.register(
            "egress_cache_bytes",
            "Bytes a forward-proxy listener's cache holds (bodies and heads)",
            l7.egress_cache_bytes.clone(),
        );
        registry.register(
            "egress_cache_entries",
            "Keys a forward-proxy listener's cache holds",
            l7.egress_cache_entries.clone(),
        );
        registry.register(
            "retries_denied",
            "Retries not made because the pool's retry budget was spent",
            l7.retries_denied.clone(),
        );
        registry.register(
            "requests_shed",
            "Requests lb answered 503 itself because an overload guard refused them (reason \
             max_retries: a retry not made), by pool (empty: the global guard) and reason",
            l7.requests_shed.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected (429) by a route's rate limit, by route, limit and key kind",
            l7.rate_limited.clone(),
        );
        registry.register(
            "rate_limit_dry_run",
            "Requests a dry-run rate limit would have rejected (they were let through)",
            l7.rate_limit_dry_run.clone(),
        );
        registry.register(
            "rate_limit_evictions",
            "Keys a rate limit dropped (least recently used) to stay within its max_keys",
            l7.rate_limit_evictions.clone(),
        );
        registry.register(
            "rate_limit_redis_errors",
            "Decisions of a store = \"redis\" limit whose Redis call failed or timed out",
            l7.rate_limit_redis_errors.clone(),
        );
        registry.register(
            "rate_limit_fallback",
            "Decisions of a store = \"redis\" limit made locally at rate/nodes (Redis unreachable)",
            l7.rate_limit_fallback.clone(),
        );
        registry.register(
            "rate_limit_prechecked",
            "Requests a store = \"redis\" limit rejected locally from the key's last TAT, without Redis",
            l7.rate_limit_prechecked.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Connections closed at accept: their client had max_connections_per_client open",
            l7.client_connections_refused.clone(),
        );
        registry.register(
            "http2_connections_closed",
            "HTTP/2 client connections ended for misbehaving, by listener and reason: \
             control_frame_flood (closed by lb), goaway_<code> (GOAWAY with that error code)",
            l7.http2_connections_closed.clone(),
        );
        registry.register(
            "auth_results",
            "Authentication verdicts of route policies, by route, policy and result",
            l7.auth.clone(),
        );
        registry.register(
            "http_jwt_auth",
            "Results of requests on routes with a jwt policy, by route, provider and result",
            l7.jwt_auth.clone(),
        );
        registry.register(
            "jwks_fetches",
            "JWT key-set fetches, by provider and result",
            l7.jwks_fetches.clone(),
        );
        registry.register(
            "http_cache_requests",
            "Requests on routes with a cache, by route and what the cache did (HIT counts \
             fresh answers only; STALE ones are apart)",
            l7.cache_requests.clone(),
        );
        registry.register(
            "http_cache_bytes",
            "Bytes a route's cache holds (bodies and heads)",
            l7.cache_bytes.clone(),
        );
        registry.register(
            "http_cache_entries",
            "Keys a route's cache holds",
            l7.cache_entries.clone(),
        );
        registry.register(
            "stream_connections",
            "Connections of tcp listeners, by listener and outcome (relayed, no_route, \
             no_backend, no_client_hello, client_reset)",
            l7.stream_connections.clone(),
        );
        registry.register(
            "stream_sessions",
            "Client sessions of udp listeners, by listener and outcome (started, no_route, \
             no_backend, session_cap)",
            l7.stream_sessions.clone(),
        );
        registry.register(
            "stream_bytes",
            "Bytes relayed by tcp listeners, by listener and direction (in: from clients, out: \
             to clients)",
            l7.stream_bytes.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind (the queue was full)",
            l7.access_log_dropped.clone(),
        );
        registry.register_collector(Box::new(StatusCollector(status)));
        Self { registry, l7 }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct StatusCollector(Arc<ArcSwap<Status>>);

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let probe = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let probe = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabel {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabel {
    session: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    vip: String,
    protocol: String,
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RealLabels {
    vip: String,
    protocol: String,
    real: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutlierLabels {
    pool: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.load();
        let backend =
            |p: &super::status::PoolStatus, b: &super::status::BackendStatus| BackendLabels {
                pool: p.name.clone(),
                backend: b.address.clone(),
            };
        let backends: Vec<_> = status
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .collect();
        gauge(
            &mut encoder,
            "backend_up",
            "1 when the backend takes new requests (healthy and not draining)",
            &backends
                .iter()
                .map(|(p, b)| {
                    (
                        backend(p, b),
                        i64::from(b.health == "up" || b.health == "unchecked"),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut encoder,
            "backend_in_flight",
            "Requests in flight to the backend",
            &backends
                .iter()
                .map(|(p, b)| (backend(p, b), b.in_flight as i64))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "outlier_ejections",
            "Times outlier detection ejected the backend (pools with outlier_detection)",
            &backends
                .iter()
                .filter_map(|(p, b)| Some((backend(p, b), b.ejections?)))
                .collect::<Vec<_>>(),
        )?;
        let outlier_events: Vec<_> = status
            .pools
            .iter()
            .filter_map(|p| Some((p, p.outlier?)))
            .flat_map(|(p, o)| {
                [
                    ("ejected_consecutive_5xx", o.ejected_consecutive_5xx),
                    ("ejected_gateway_errors", o.ejected_gateway_errors),
                    ("skipped_max_ejected_percent", o.skipped_max_ejected_percent),
                ]
                .map(|(event, n)| {
                    (
                        OutlierLabels {
                            pool: p.name.clone(),
                            event,
                        },
                        n,
                    )
                })
            })
            .collect();
        counter(
            &mut encoder,
            "outlier_events",
            "Outlier detection per pool: ejections by reason, and ejections the \
             max_ejected_percent cap refused",
            &outlier_events,
        )?;
        gauge(
            &mut encoder,
            "adaptive_concurrency_limit",
            "The pool's adaptive concurrency limit now (pools with adaptive_concurrency)",
            &status
                .pools
                .iter()
                .filter_map(|p| {
                    let labels = PoolLabels {
                        pool: p.name.clone(),
                    };
                    Some((labels, i64::from(p.adaptive_limit?)))
                })
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut encoder,
            "l7_connections",
            "Client connections open on the HTTP listeners (what --max-connections caps)",
            &[(Vec::<(&str, &str)>::new(), status.l7_connections as i64)],
        )?;
        counter(
            &mut encoder,
            "config_reloads",
            "Backend-file reloads, by result",
            &[
                (ResultLabel { result: "ok" }, status.config.reloads_ok),
                (
                    ResultLabel { result: "rejected" },
                    status.config.reloads_failed,
                ),
            ],
        )?;
        let vip = |v: &super::status::VipStatus| VipLabels {
            vip: v.address.clone(),
            protocol: v.protocol.clone(),
        };
        let vips = &status.vips;
        counter(
            &mut encoder,
            "xdp_vip_packets",
            "Packets the XDP tier forwarded for the VIP",
            &vips.iter().map(|v| (vip(v), v.packets)).collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "xdp_vip_bytes",
            "Bytes the XDP tier forwarded for the VIP",
            &vips.iter().map(|v| (vip(v), v.bytes)).collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "xdp_vip_new_flows",
            "New flows the XDP tier scheduled for the VIP",
            &vips
                .iter()
                .map(|v| (vip(v), v.new_flows))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut encoder,
            "xdp_vip_ring_hash",
            "Always 1; the label hash is the VIP's live Maglev table hashed by real address (nodes that agree show the same)",
            &vips
                .iter()
                .filter_map(|v| {
                    let hash = v.ring_hash.clone()?;
                    Some((
                        RingLabels {
                            vip: v.address.clone(),
                            protocol: v.protocol.clone(),
                            hash,
                        },
                        1,
                    ))
                })
                .collect::<Vec<_>>(),
        )?;
        let reals: Vec<_> = vips
            .iter()
            .flat_map(|v| {
                v.reals.iter().map(move |r| {
                    (
                        RealLabels {
                            vip: v.address.clone(),
                            protocol: v.protocol.clone(),
                            real: r.address.clone(),
                        },
                        r,
                    )
                })
            })
            .collect();
        counter(
            &mut encoder,
            "xdp_real_packets",
            "Packets the XDP tier sent to the real",
            &reals
                .iter()
                .map(|(l, r)| (l.clone(), r.packets))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "xdp_real_bytes",
            "Bytes the XDP tier sent to the real",
            &reals
                .iter()
                .map(|(l, r)| (l.clone(), r.bytes))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut encoder,
            "xdp_real_new_flows",
            "New flows the XDP tier scheduled to the real",
            &reals
                .iter()
                .map(|(l, r)| (l.clone(), r.new_flows))
                .collect::<Vec<_>>(),
        )?;
        if let Some(xdp) = &status.xdp {
            let named = |rows: &[(String, u64)]| {
                rows.iter()
                    .map(|(n, v)| (NameLabel { name: n.clone() }, *v))
                    .collect::<Vec<_>>()
            };
            counter(
                &mut encoder,
                "xdp_packets",
                "Packets seen by the XDP tier, by class",
                &named(&xdp.classes),
            )?;
            counter(
                &mut encoder,
                "xdp_drops",
                "Malformed packets dropped by the XDP tier, by reason",
                &named(&xdp.drops),
            )?;
            counter(
                &mut encoder,
                "xdp_events",
                "XDP datapath events",
                &named(&xdp.events),
            )?;
        }
        if let Some(bgp) = &status.bgp {
            gauge(
                &mut encoder,
                "bgp_announced",
                "1 while BIRD announces the VIP address (this node can serve it)",
                &bgp.addresses
                    .iter()
                    .map(|a| {
                        let label = AddressLabel {
                            address: a.address.clone(),
                        };
                        (label, i64::from(a.announce && a.in_bird))
                    })
                    .collect::<Vec<_>>(),
            )?;
            gauge(
                &mut encoder,
                "bgp_session_established",
                "1 while the BGP session is established",
                &bgp.sessions
                    .iter()
                    .map(|s| {
                        let label = SessionLabel {
                            session: s.name.clone(),
                        };
                        (label, i64::from(s.info.starts_with("Established")))
                    })
                    .collect::<Vec<_>>(),
            )?;
            gauge(
                &mut encoder,
                "bgp_speaker_running",
                "1 while the BGP speaker (BIRD) runs",
                &[(Vec::<(&str, &str)>::new(), i64::from(bgp.speaker_running))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{BackendStatus, PoolStatus, RealStatus, VipStatus, XdpStatus};

    #[test]
    fn exposition_has_live_and_snapshot_metrics() {
        let status = Arc::new(ArcSwap::from_pointee(Status {
            pools: vec![PoolStatus {
                name: "web".into(),
                discovery: None,
                algorithm: "round_robin".into(),
                adaptive_limit: Some(12),
                outlier: Some(crate::admin::status::OutlierCounts {
                    skipped_max_ejected_percent: 4,
                    ..Default::default()
                }),
                backends: vec![BackendStatus {
                    address: "10.0.0.1:80".into(),
                    weight: 1,
                    backup: false,
                    health: "down".into(),
                    last_error: None,
                    in_flight: 3,
                    requests: 0,
                    errors: 0,
                    requests_per_second: 0.0,
                    error_rate: 0.0,
                    ejections: Some(2),
                    last_ejection_ms: Some(60_000),
                    configured_weight: 1,
                    check: None,
                    traffic: Default::default(),
                }],
            }],
            vips: vec![VipStatus {
                address: "10.100.0.1:80".into(),
                protocol: "tcp".into(),
                forward: "encap".into(),
                packets: 7,
                bytes: 700,
                new_flows: 2,
                ring_hash: Some("c602dd0c36d3a5dc".into()),
                packets_per_second: 0.0,
                bytes_per_second: 0.0,
                trend: Vec::new(),
                reals: vec![RealStatus {
                    address: "10.0.0.1".into(),
                    weight: 1,
                    up: true,
                    packets: 7,
                    bytes: 700,
                    new_flows: 2,
                    packets_per_second: 0.0,
                    bytes_per_second: 0.0,
                }],
            }],
            xdp: Some(XdpStatus {
                drops: vec![("bad_ipv4_header".into(), 4)],
                ..XdpStatus::default()
            }),
            bgp: Some(crate::admin::status::BgpStatus {
                speaker_running: true,
                sessions: vec![crate::admin::status::BgpSessionStatus {
                    name: "uplink".into(),
                    state: "up".into(),
                    info: "Established".into(),
                }],
                addresses: vec![crate::admin::status::AnnouncedAddress {
                    address: "10.100.0.1".into(),
                    announce: true,
                    in_bird: true,
                    reason: "serving 10.100.0.1:80".into(),
                }],
                ..Default::default()
            }),
            ..Status::default()
        }));
        let metrics = Metrics::new(status);
        metrics
            .l7
            .requests
            .get_or_create(&RequestLabels {
                listener: "l".into(),
                route: "0".into(),
                pool: "web".into(),
                backend: "10.0.0.1:80".into(),
                status: 200,
            })
            .inc();
        let text = metrics.render();
        for line in [
            "lb_http_requests_total{listener=\"l\",route=\"0\",pool=\"web\",backend=\"10.0.0.1:80\",status=\"200\"} 1",
            "lb_backend_up{pool=\"web\",backend=\"10.0.0.1:80\"} 0",
            "lb_backend_in_flight{pool=\"web\",backend=\"10.0.0.1:80\"} 3",
            "lb_xdp_vip_packets_total{vip=\"10.100.0.1:80\",protocol=\"tcp\"} 7",
            "lb_xdp_vip_ring_hash{vip=\"10.100.0.1:80\",protocol=\"tcp\",hash=\"c602dd0c36d3a5dc\"} 1",
            "lb_xdp_real_new_flows_total{vip=\"10.100.0.1:80\",protocol=\"tcp\",real=\"10.0.0.1\"} 2",
            "lb_xdp_drops_total{name=\"bad_ipv4_header\"} 4",
            "lb_bgp_announced{address=\"10.100.0.1\"} 1",
            "lb_bgp_session_established{session=\"uplink\"} 1",
            "lb_bgp_speaker_running{} 1",
            "lb_config_reloads_total{result=\"ok\"} 0",
            "lb_outlier_ejections_total{pool=\"web\",backend=\"10.0.0.1:80\"} 2",
            "lb_adaptive_concurrency_limit{pool=\"web\"} 12",
            "lb_l7_connections{} 0",
            "lb_outlier_events_total{pool=\"web\",event=\"skipped_max_ejected_percent\"} 4",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
