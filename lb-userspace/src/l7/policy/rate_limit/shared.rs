//! `store = "redis"`: one GCRA TAT per key in Redis, shared by every lb process whose limit
//! has the same route label and name (the Redis key is `lb:rl:ROUTE:LIMIT:KEY`).
//!
//! - **One round trip per decision**: `EVALSHA` of a Lua script that reads Redis' own clock
//!   (`TIME`, so lb hosts need no synchronised clocks), decides, and only when it allows
//!   writes the new TAT with a `PX` expiry at the TAT (a key past its TAT is a fresh key, so
//!   nothing is lost when it expires). `NOSCRIPT` (a restarted or flushed Redis) falls back
//!   to `EVAL`, which caches the script again. Times are microseconds there (exact in Lua's
//!   doubles), so a redis-backed rate is at most 10^6/s.
//! - **Local pre-check**: every answer from Redis leaves the key's TAT, moved onto this
//!   process's monotonic clock, in a bounded LRU map (`max_keys`). A request whose key
//!   there has `now < TAT - tolerance` is rejected without asking Redis, with the wait that
//!   TAT gives: other processes can only push a shared TAT later, so such a request would be
//!   rejected by Redis as well (the exceptions: a refund made by another process, or Redis
//!   losing the key, each of which this process notices at its next round trip).
//! - **Fallback**: a Redis error or a call slower than `redis_timeout` makes that decision
//!   locally, with GCRA at rate/nodes and burst/nodes (at least 1), and puts the limit in
//!   fallback mode: requests stop asking Redis and are all decided locally while a background
//!   task reconnects (immediately, then after 100 ms, doubling up to 5 s). A log line marks
//!   each change of mode, never each request. Never a 5xx.
use std::{
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use super::{
    gcra::{Decision, Gcra},
    store::{Acquired, Key, LocalStore, Via},
};

/// Decides on one key: KEYS[1] the key's TAT (microseconds on Redis' clock); ARGV[1] the
/// emission interval, ARGV[2] the tolerance (microseconds). Returns {allowed, tat, now}.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
if now < tat - tolerance then return {0, tat, now} end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return {1, tat, now}
";

/// Gives one request back: KEYS[1] the key, ARGV[1] the interval. Returns {tat, now}.
const REFUND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return {now, now} end
tat = tat - tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
  return {now, now}
end
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return {tat, now}
";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A (re)connection attempt's own bound (connect and PING), whatever `redis_timeout` is.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A script: its SHA-1 (for EVALSHA) and its text (for EVAL).
#[derive(Debug)]
struct Script {
    sha: String,
    text: &'static str,
}

impl Script {
    fn new(text: &'static str) -> Self {
        Self {
            sha: redis::Script::new(text).get_hash().to_owned(),
            text,
        }
    }

    /// EVALSHA; EVAL when Redis does not have the script (it caches it again).
    async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        key: &[u8],
        args: &[u64],
    ) -> redis::RedisResult<Vec<i64>> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(1).arg(key).arg(args);
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(self.text).arg(1).arg(key).arg(args);
                cmd.query_async(conn).await
            }
            other => other,
        }
    }
}

/// What a redis-backed limit needs besides the limit's own GCRA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// A `redis://`, `redis+unix://` or `unix://` URL (checked by the redis crate).
    pub url: String,
    pub timeout: Duration,
    pub nodes: u32,
}

#[derive(Debug)]
pub struct SharedStore {
    client: redis::Client,
    /// `lb:rl:ROUTE:LIMIT:`
    prefix: Vec<u8>,
    timeout: Duration,
    /// The limit in whole microseconds (Redis' unit).
    interval_us: u64,
    tolerance_us: u64,
    /// The same limit in nanoseconds (interval_us x 1000), for fields and the pre-check.
    gcra: Gcra,
    /// rate/nodes, burst/nodes (at least 1): the fallback's.
    fallback_gcra: Gcra,
    fallback: LocalStore,
    /// The pre-check: per key the last TAT Redis returned, on `seen`'s clock.
    seen: LocalStore,
    link: Arc<Link>,
    /// `route ROUTE limit LIMIT`, for log lines.
    label: String,
}

/// Mode changes of one store's connection (phase) and the connection itself.
#[derive(Debug)]
struct Link {
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    phase: watch::Sender<Phase>,
    /// A reconnect task runs.
    reconnecting: AtomicBool,
    generation: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Never tried: the first request starts the connection and waits for it.
    Idle,
    /// The first attempt runs.
    Connecting,
    Up,
    /// Fallback mode: a task reconnects.
    Down,
}

/// Why a shared store cannot be built (a config error).
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("rate {0}/s is above 10^6 per second (Redis keeps microseconds)")]
    TooFast(u64),
    #[error("burst {burst} over {nodes} nodes does not fit")]
    Fallback { burst: u32, nodes: u32 },
    #[error("burst {0} is too large")]
    Burst(u32),
    #[error("{0}")]
    Address(String),
}

/// Checks a `redis` address: `host:port`, `/path/to.sock`, or a `redis://host:port/db`,
/// `redis+unix:///path` or `unix:///path` URL. Returns the URL the client uses.
pub fn redis_url(text: &str) -> Result<String, SharedError> {
    let url = if text.contains("://") {
        text.to_owned()
    } else if text.starts_with('/') {
        format!("redis+unix://{text}")
    } else {
        format!("redis://{text}")
    };
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !matches!(scheme, "redis" | "redis+unix" | "unix") {
        return Err(SharedError::Address(format!(
            "redis {text:?}: use host:port, /path.sock, redis://host:port/db or redis+unix:///path (no TLS)"
        )));
    }
    let host_missing = scheme == "redis"
        && url
            .strip_prefix("redis://")
            .and_then(|rest| rest.split(['/', '?']).next())
            .and_then(|auth| auth.rsplit('@').next())
            .is_none_or(|host| host.is_empty() || host.starts_with(':'));
    if host_missing {
        return Err(SharedError::Address(format!("redis {text:?}: no host")));
    }
    redis::Client::open(url.as_str())
        .map_err(|e| SharedError::Address(format!("redis {text:?}: {e}")))?;
    Ok(url)
}

impl SharedStore {
    /// A store for the limit `count` per `per_secs` seconds, `burst`, of route `route`'s
    /// limit `name`.
    pub fn new(
        settings: &RedisSettings,
        count: u64,
        per_secs: u64,
        burst: u32,
        route: &str,
        name: &str,
        max_keys: usize,
    ) -> Result<Self, SharedError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| SharedError::Address(e.to_string()))?;
        let interval_us = per_secs * 1_000_000 / count;
        if interval_us == 0 {
            return Err(SharedError::TooFast(count / per_secs));
        }
        let gcra = Gcra::new(interval_us * 1000, burst).ok_or(SharedError::Burst(burst))?;
        let nodes = settings.nodes.max(1);
        let fallback_burst = (burst / nodes).max(1);
        let fallback_gcra = (per_secs * 1_000_000_000 / count)
            .checked_mul(u64::from(nodes))
            .and_then(|interval| Gcra::new(interval, fallback_burst))
            .ok_or(SharedError::Fallback { burst, nodes })?;
        let (phase, _) = watch::channel(Phase::Idle);
        Ok(Self {
            client,
            prefix: format!("lb:rl:{route}:{name}:").into_bytes(),
            timeout: settings.timeout,
            interval_us,
            tolerance_us: interval_us * (u64::from(burst) - 1),
            gcra,
            fallback_gcra,
            fallback: LocalStore::new(max_keys),
            seen: LocalStore::new(max_keys),
            link: Arc::new(Link {
                conn: Mutex::new(None),
                phase,
                reconnecting: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            }),
            label: format!("route {route} limit {name}"),
        })
    }

    fn redis_key(&self, key: &Key<'_>) -> Vec<u8> {
        let mut k = self.prefix.clone();
        match key {
            Key::Ip(ip) => k.extend_from_slice(ip.to_string().as_bytes()),
            Key::Bytes(b) => k.extend_from_slice(b),
            Key::Route => k.extend_from_slice(b"route"),
        }
        k
    }

    /// The connection to use, or None: fallback mode.
    async fn connection(&self) -> Option<(u64, MultiplexedConnection)> {
        let phase = *self.link.phase.borrow();
        if matches!(phase, Phase::Idle | Phase::Connecting) {
            if phase == Phase::Idle
                && self.link.phase.send_if_modified(|p| {
                    let idle = *p == Phase::Idle;
                    if idle {
                        *p = Phase::Connecting;
                    }
                    idle
                })
            {
                self.spawn_reconnect();
            }
            let mut rx = self.link.phase.subscribe();
            let _ = tokio::time::timeout(
                self.timeout.max(Duration::from_millis(100)),
                rx.wait_for(|p| matches!(p, Phase::Up | Phase::Down)),
            )
            .await;
        }
        self.link
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn spawn_reconnect(&self) {
        if self.link.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = Arc::downgrade(&self.link);
        let client = self.client.clone();
        let label = self.label.clone();
        tokio::spawn(reconnect(link, client, label));
    }

    /// Connection `generation` failed or was too slow: fallback mode, reconnect.
    fn failed(&self, generation: u64, why: &str) {
        {
            let mut conn = self
                .link
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if conn.as_ref().is_none_or(|(g, _)| *g != generation) {
                return;
            }
            *conn = None;
        }
        let was_up = self
            .link
            .phase
            .send_if_modified(|p| std::mem::replace(p, Phase::Down) != Phase::Down);
        if was_up {
            tracing::warn!(
                "rate limit {}: redis {why}: deciding locally at rate/nodes until it is back",
                self.label
            );
        }
        self.spawn_reconnect();
    }

    pub async fn acquire(&self, key: &Key<'_>) -> Acquired {
        let hash = self.seen.hash(key);
        let now = self.seen.now();
        if let Some(tat) = self.seen.peek(hash)
            && let Decision::Deny(wait) = self.gcra.decide(Some(tat), now)
        {
            return Acquired {
                decision: Decision::Deny(wait),
                tat,
                now,
                evicted: false,
                gcra: self.gcra,
                via: Via::PreCheck,
            };
        }
        let Some((generation, mut conn)) = self.connection().await else {
            return self.fallback_acquire(key, false);
        };
        let redis_key = self.redis_key(key);
        let args = [self.interval_us, self.tolerance_us];
        let call = ACQUIRE_SCRIPT.run(&mut conn, &redis_key, &args);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.failed(generation, &format!("error ({e})"));
                return self.fallback_acquire(key, true);
            }
            Err(_) => {
                self.failed(generation, &format!("slower than {:?}", self.timeout));
                return self.fallback_acquire(key, true);
            }
        };
        let Some((allowed, tat, redis_now)) = triple(&reply) else {
            self.failed(generation, "answered the script with something else");
            return self.fallback_acquire(key, true);
        };
        let (tat, redis_now) = (tat.saturating_mul(1000), redis_now.saturating_mul(1000));
        let evicted = self
            .seen
            .put(hash, now.saturating_add(tat.saturating_sub(redis_now)));
        let decision = if allowed {
            Decision::Allow(tat)
        } else {
            let earliest = tat.saturating_sub(self.tolerance_us * 1000);
            Decision::Deny(earliest.saturating_sub(redis_now).max(1))
        };
        Acquired {
            decision,
            tat,
            now: redis_now,
            evicted,
            gcra: self.gcra,
            via: Via::Redis,
        }
    }

    fn fallback_acquire(&self, key: &Key<'_>, error: bool) -> Acquired {
        let f = &self.fallback;
        Acquired {
            via: Via::Fallback { error },
            ..f.acquire(f.hash(key), f.now(), &self.fallback_gcra)
        }
    }

    pub async fn refund(&self, key: &Key<'_>, acquired: &Acquired) -> Option<(u64, u64)> {
        match acquired.via {
            Via::Fallback { .. } => {
                let f = &self.fallback;
                f.refund(f.hash(key), &self.fallback_gcra)
                    .map(|tat| (tat, f.now()))
            }
            Via::Redis => {
                let (generation, mut conn) = self.connection().await?;
                let redis_key = self.redis_key(key);
                let args = [self.interval_us];
                let call = REFUND_SCRIPT.run(&mut conn, &redis_key, &args);
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(Ok(reply)) => {
                        let (tat, now) = pair(&reply)?;
                        let (tat, redis_now) = (tat.saturating_mul(1000), now.saturating_mul(1000));
                        let local = self.seen.now();
                        self.seen.put(
                            self.seen.hash(key),
                            local.saturating_add(tat.saturating_sub(redis_now)),
                        );
                        Some((tat, redis_now))
                    }
                    Ok(Err(e)) => {
                        self.failed(generation, &format!("error ({e})"));
                        None
                    }
                    Err(_) => {
                        self.failed(generation, &format!("slower than {:?}", self.timeout));
                        None
                    }
                }
            }
            Via::PreCheck | Via::Local => None,
        }
    }
}

static ACQUIRE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(ACQUIRE));
static REFUND_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(REFUND));

fn triple(reply: &[i64]) -> Option<(bool, u64, u64)> {
    match reply {
        [allowed, tat, now] => Some((
            *allowed == 1,
            u64::try_from(*tat).ok()?,
            u64::try_from(*now).ok()?,
        )),
        _ => None,
    }
}

fn pair(reply: &[i64]) -> Option<(u64, u64)> {
    match reply {
        [tat, now] => Some((u64::try_from(*tat).ok()?, u64::try_from(*now).ok()?)),
        _ => None,
    }
}

/// Connects (and PINGs) until it works, backing off; ends when the store is gone.
async fn reconnect(link: Weak<Link>, client: redis::Client, label: String) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await;
        let Some(link) = link.upgrade() else { return };
        match attempt {
            Ok(Ok(conn)) => {
                let generation = link.generation.fetch_add(1, Ordering::AcqRel) + 1;
                *link.conn.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((generation, conn));
                link.reconnecting.store(false, Ordering::Release);
                let before = link.phase.send_replace(Phase::Up);
                if before == Phase::Down {
                    tracing::warn!("rate limit {label}: redis is back: shared limits resume");
                } else {
                    tracing::info!("rate limit {label}: connected to redis");
                }
                return;
            }
            Ok(Err(e)) => fail(&link, &label, &e.to_string()),
            Err(_) => fail(&link, &label, "connect timed out"),
        }
        drop(link);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A failed (re)connection attempt: fallback mode (logged once, when it begins).
fn fail(link: &Link, label: &str, why: &str) {
    let entered = link
        .phase
        .send_if_modified(|p| std::mem::replace(p, Phase::Down) != Phase::Down);
    if entered {
        tracing::warn!(
            "rate limit {label}: redis unreachable ({why}): deciding locally at rate/nodes until it is back"
        );
    } else {
        tracing::debug!("rate limit {label}: redis still unreachable ({why})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            redis_url("127.0.0.1:6379").expect("valid"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redis_url("redis://cache.internal:6380/2").expect("valid"),
            "redis://cache.internal:6380/2"
        );
        assert_eq!(
            redis_url("/run/redis.sock").expect("valid"),
            "redis+unix:///run/redis.sock"
        );
        assert!(redis_url("unix:///run/redis.sock").is_ok());
        for bad in [
            "",
            ":6379",
            "http://x:1",
            "rediss://x:1",
            "redis://",
            "a b:1",
            "x:port",
        ] {
            assert!(redis_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fallback_is_rate_over_nodes() {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            timeout: Duration::from_millis(20),
            nodes: 3,
        };
        let s = SharedStore::new(&settings, 100, 1, 50, "r", "l", 10).expect("valid");
        assert_eq!(s.fallback_gcra, Gcra::new(30_000_000, 16).expect("g"));
        assert_eq!((s.interval_us, s.tolerance_us), (10_000, 490_000));
        let one = SharedStore::new(&settings, 1, 3600, 2, "r", "l", 10).expect("valid");
        assert_eq!(
            one.fallback_gcra,
            Gcra::new(3 * 3600 * 1_000_000_000, 1).expect("g"),
            "burst/nodes is at least 1"
        );
        assert!(matches!(
            SharedStore::new(&settings, 2_000_000, 1, 1, "r", "l", 10),
            Err(SharedError::TooFast(_))
        ));
        assert_eq!(one.redis_key(&Key::Route), b"lb:rl:r:l:route");
        assert_eq!(
            one.redis_key(&Key::Ip("192.0.2.1".parse().expect("ip"))),
            b"lb:rl:r:l:192.0.2.1"
        );
    }
}
