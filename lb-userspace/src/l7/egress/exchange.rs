//! One absolute-form request, or one request inside an inspected tunnel, once its egress
//! decision allowed it: answered from the listener's cache when it has one and the request
//! may be (`cache::flow`: after the decision, so a denied host is never served from the
//! store), else sent to the origin (`forward.rs`, on a kept connection to an allowed address
//! or a new one); its access log line is written when the response is over.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::AtomicU64},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode, body::Incoming};
use prometheus_client::metrics::counter::Counter;
use tokio::{net::TcpStream, sync::Mutex};

use super::{
    super::{
        access_log::CountedBody,
        answer::text_answer,
        cache::{
            CacheStatus, RouteCache,
            flow::{self, Lookup, Refresh},
            key::CacheKey,
        },
        pool::ProxyBody,
        proxy::Proxy,
    },
    EgressListener, Record, dial,
    forward::{self, ForwardError},
    inspect,
    origins::{self, BoxError, OriginBody, OriginKey},
    policy::EgressSettings,
    target::Target,
};

/// Where an allowed request goes: its target and path, the addresses it may reach (in
/// order), the Host it carries and whether over TLS (inspected).
#[derive(Clone)]
pub(super) struct Origin {
    target: Target,
    path: String,
    keys: Vec<OriginKey>,
    host: String,
    tls: bool,
}

impl Origin {
    /// An absolute-form request to `target`, allowed to reach `allowed`.
    pub fn plain(target: &Target, path: &str, allowed: impl Iterator<Item = IpAddr>) -> Self {
        let host = forward::host(target, 80);
        let keys = allowed
            .map(|ip| OriginKey {
                addr: SocketAddr::new(ip, target.port),
                host: host.clone(),
                tls: false,
            })
            .collect();
        Self {
            target: target.clone(),
            path: path.to_owned(),
            keys,
            host,
            tls: false,
        }
    }

    /// A request inside an inspected tunnel to `target`, whose CONNECT reached `address`.
    pub fn inspected(target: &Target, path: &str, address: SocketAddr) -> Self {
        let host = forward::host(target, 443);
        Self {
            target: target.clone(),
            path: path.to_owned(),
            keys: vec![OriginKey {
                addr: address,
                host: host.clone(),
                tls: true,
            }],
            host,
            tls: true,
        }
    }

    /// The cache key: scheme, the target's host and port, path and query.
    fn cache_key(&self, req: &Request<Incoming>, cache: &RouteCache) -> CacheKey {
        let host = match self.target.ip {
            Some(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.target.host.clone(),
        };
        CacheKey::new(
            if self.tls { "https" } else { "http" },
            &host,
            self.target.port,
            req.uri(),
            req.headers(),
            &cache.settings.key_headers,
        )
    }
}

/// The listener's `lb_egress_cache_requests_total` counters (by `CacheStatus::ALL` order),
/// its cache given its size gauges; empty without a cache or metrics.
pub(super) fn cache_meters(
    listener: &str,
    settings: &EgressSettings,
    proxy: &arc_swap::ArcSwap<Proxy>,
) -> Vec<Counter> {
    let (Some(cache), proxy) = (&settings.cache, proxy.load()) else {
        return Vec::new();
    };
    let Some(metrics) = proxy.observer().metrics() else {
        return Vec::new();
    };
    let labels = crate::admin::metrics::ListenerLabels {
        listener: listener.to_owned(),
    };
    cache.attach_gauges(
        metrics.egress_cache_bytes.get_or_create_owned(&labels),
        metrics.egress_cache_entries.get_or_create_owned(&labels),
    );
    CacheStatus::ALL
        .iter()
        .map(|status| {
            metrics.egress_cache_requests.get_or_create_owned(
                &crate::admin::metrics::EgressCacheLabels {
                    listener: listener.to_owned(),
                    status: status.as_str(),
                },
            )
        })
        .collect()
}

fn empty() -> OriginBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

impl EgressListener {
    /// Answers an allowed request (see the module comment). `dialed`: the connection an
    /// inspected tunnel's CONNECT opened, for its first request that needs one.
    pub(super) async fn exchange(
        self: &Arc<Self>,
        req: Request<Incoming>,
        mut record: Record<'_>,
        origin: Origin,
        dialed: Option<&Mutex<Option<TcpStream>>>,
    ) -> Response<ProxyBody> {
        let cache = self.settings.cache.as_ref();
        if let Some(cache) = cache
            && flow::cacheable_request(req.method(), req.headers())
        {
            return self.through_cache(cache, req, record, origin, dialed).await;
        }
        let up = Arc::new(AtomicU64::new(0));
        let req = req.map(|body| {
            CountedBody::new(body, up.clone())
                .map_err(BoxError::from)
                .boxed()
        });
        match self.fetch(req, &origin, dialed).await {
            Ok((mut response, addr)) => {
                record.address = Some(addr);
                if cache.is_some() {
                    self.cache_status(&mut record, &mut response, CacheStatus::Bypass);
                }
                self.logged_at_end(&record, response, up)
            }
            Err(err) => {
                let answer = self.failure(&record, &err);
                self.logged_at_end(&record, answer, up)
            }
        }
    }

    /// A cacheable GET or HEAD (no body): from the store when it can be, else fetched and
    /// stored as it streams to the client.
    async fn through_cache(
        self: &Arc<Self>,
        cache: &RouteCache,
        req: Request<Incoming>,
        mut record: Record<'_>,
        origin: Origin,
        dialed: Option<&Mutex<Option<TcpStream>>>,
    ) -> Response<ProxyBody> {
        let key = origin.cache_key(&req, cache);
        let (parts, _) = req.into_parts();
        let up = Arc::new(AtomicU64::new(0));
        let (mut answer, status) = match flow::lookup(cache, key, parts).await {
            Lookup::Served(answer, status, refresh) => {
                if let Some(refresh) = refresh {
                    self.refresh_in_background(cache.clone(), refresh, origin);
                }
                (answer, status)
            }
            Lookup::Fetch(fetch) => {
                let req = Request::from_parts(fetch.request(), empty());
                let response = match self.fetch(req, &origin, dialed).await {
                    Ok((response, addr)) => {
                        record.address = Some(addr);
                        response
                    }
                    // A 5xx: the stale entry within stale-if-error answers instead.
                    Err(err) => self.failure(&record, &err),
                };
                fetch.finish(cache, response)
            }
        };
        self.cache_status(&mut record, &mut answer, status);
        self.logged_at_end(&record, answer, up)
    }

    /// Refreshes an entry served stale (within stale-while-revalidate) off the request
    /// path, to the same allowed addresses.
    fn refresh_in_background(
        self: &Arc<Self>,
        cache: RouteCache,
        refresh: Refresh,
        origin: Origin,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let req = Request::from_parts(refresh.request(), empty());
            let response = match this.fetch(req, &origin, None).await {
                Ok((response, _)) => response,
                Err(err) => {
                    tracing::debug!(listener = %this.name, target = %origin.target.authority(), %err, "egress: cache refresh failed");
                    text_answer(StatusCode::BAD_GATEWAY, Bytes::new())
                }
            };
            refresh.complete(&cache, response).await;
        });
    }

    /// Sends `req` to `origin`: on a kept connection to one of its addresses, else on a new
    /// one (the inspected tunnel's own first, then the allowed addresses in turn; over TLS,
    /// the origin verified, when inspected).
    async fn fetch(
        &self,
        req: Request<OriginBody>,
        origin: &Origin,
        dialed: Option<&Mutex<Option<TcpStream>>>,
    ) -> Result<(Response<ProxyBody>, SocketAddr), ForwardError> {
        let connect = || async move {
            let taken = match dialed {
                Some(dialed) => dialed.lock().await.take(),
                None => None,
            };
            let (tcp, addr) = match (taken, origin.keys.first()) {
                (Some(tcp), Some(key)) => (tcp, key.addr),
                _ => dial(origin.keys.iter().map(|k| k.addr.ip()), origin.target.port)
                    .await
                    .ok_or(ForwardError::Unreachable)?,
            };
            let key = OriginKey {
                addr,
                host: origin.host.clone(),
                tls: origin.tls,
            };
            let sender = if origin.tls {
                let inspection = self
                    .settings
                    .inspect
                    .as_ref()
                    .ok_or_else(|| ForwardError::Failed("inspection is off".into()))?;
                let tls = inspect::origin_tls(inspection, &origin.target.host, tcp)
                    .await
                    .map_err(|e| ForwardError::Failed(Box::new(e)))?;
                origins::handshake(tls).await?
            } else {
                origins::handshake(tcp).await?
            };
            Ok((key, sender))
        };
        forward::send(
            &self.origins,
            &origin.keys,
            req,
            &origin.path,
            &origin.host,
            connect,
        )
        .await
    }

    /// The 502 for a request whose origin could not be reached or failed, logged.
    fn failure(&self, record: &Record<'_>, err: &ForwardError) -> Response<ProxyBody> {
        tracing::info!(
            listener = %self.name,
            client = %record.client,
            target = %record.target.map_or_else(String::new, Target::authority),
            %err,
            "egress: upstream failed"
        );
        let reason = match err {
            ForwardError::Unreachable => "the target did not accept the connection\n",
            _ => "the target failed\n",
        };
        text_answer(
            StatusCode::BAD_GATEWAY,
            Bytes::from_static(reason.as_bytes()),
        )
    }

    /// What the cache did: on the answer (`X-Cache-Status`), in the log line, counted.
    fn cache_status(
        &self,
        record: &mut Record<'_>,
        response: &mut Response<ProxyBody>,
        status: CacheStatus,
    ) {
        record.cache = Some(status);
        flow::mark(response, status);
        if let Some(counter) = CacheStatus::ALL
            .iter()
            .position(|s| *s == status)
            .and_then(|i| self.cache_counters.get(i))
        {
            counter.inc();
        }
    }
}
