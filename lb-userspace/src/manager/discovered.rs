//! The manager's side of backend discovery: one task per pool with `[pool.discovery]`
//! (`crate::discovery`), the last good set each found, and the configuration the tiers run:
//! the file's, with each pool's discovered backends added (and the VIPs' reals that come
//! from those pools recomputed). A lookup that fails keeps the last good set.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    admin::status::DiscoveryStatus,
    config::{Config, discovery::DiscoveryConfig, reals_of_pool},
    discovery::{self, Discovered},
    l7::selection::Backend,
};

/// What one pool's discovery has found so far.
#[derive(Default)]
struct Found {
    /// The last good set (empty until the first answer).
    backends: Vec<Backend>,
    /// When the set last changed, and why the latest lookup failed (cleared by a good one).
    updated: Option<Instant>,
    last_error: Option<String>,
    updates: u64,
    failures: u64,
}

pub struct Discoveries {
    tasks: HashMap<String, (DiscoveryConfig, tokio::task::JoinHandle<()>)>,
    found: HashMap<String, Found>,
    events: mpsc::UnboundedSender<Discovered>,
}

impl Discoveries {
    pub fn new(events: mpsc::UnboundedSender<Discovered>) -> Self {
        Self {
            tasks: HashMap::new(),
            found: HashMap::new(),
            events,
        }
    }

    /// Starts, stops and restarts the tasks to match `file`'s pools: a pool whose discovery
    /// settings did not change keeps its task and its set.
    pub fn sync(&mut self, file: &Config) {
        let wanted: HashMap<&str, &DiscoveryConfig> = file
            .l7
            .pools
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.discovery.as_ref()?)))
            .collect();
        self.tasks.retain(|pool, (config, task)| {
            let keep = wanted.get(pool.as_str()) == Some(&&*config);
            if !keep {
                task.abort();
            }
            keep
        });
        self.found.retain(|pool, _| self.tasks.contains_key(pool));
        for (pool, config) in wanted {
            if self.tasks.contains_key(pool) {
                continue;
            }
            let task = discovery::spawn(pool.to_owned(), config.clone(), self.events.clone());
            self.tasks.insert(pool.to_owned(), (config.clone(), task));
        }
    }

    /// Pools whose discovery has not answered yet.
    pub fn waiting(&self) -> usize {
        self.tasks
            .keys()
            .filter(|p| {
                self.found
                    .get(*p)
                    .is_none_or(|f| f.updated.is_none() && f.last_error.is_none())
            })
            .count()
    }

    /// Records a task's report; true when the pool's set changed (the configuration must be
    /// applied again). Reports of pools no longer discovered are ignored.
    pub fn record(&mut self, event: Discovered) -> bool {
        if !self.tasks.contains_key(&event.pool) {
            return false;
        }
        let found = self.found.entry(event.pool.clone()).or_default();
        match event.result {
            Ok(backends) => {
                found.last_error = None;
                if found.updated.is_some() && found.backends == backends {
                    return false;
                }
                tracing::info!(pool = %event.pool, backends = backends.len(), "discovered backends changed");
                found.backends = backends;
                found.updated = Some(Instant::now());
                found.updates += 1;
                true
            }
            Err(err) => {
                tracing::warn!(pool = %event.pool, error = %err, "discovery failed; keeping the last good backends");
                found.last_error = Some(err);
                found.failures += 1;
                false
            }
        }
    }

    /// `file` with every discovered backend added to its pool (a backend the file lists
    /// already keeps the file's settings), and the VIPs' reals of those pools recomputed.
    pub fn apply(&self, file: &Config) -> Config {
        let mut config = file.clone();
        let mut changed = false;
        for pool in &mut config.l7.pools {
            // Only sets found with the pool's current settings (a pool whose discovery changed
            // or went waits for its new task).
            let current = self
                .tasks
                .get(&pool.name)
                .is_some_and(|(settings, _)| pool.discovery.as_ref() == Some(settings));
            let Some(found) = self.found.get(&pool.name).filter(|_| current) else {
                continue;
            };
            for b in &found.backends {
                if pool.backends.iter().all(|listed| listed.addr != b.addr) {
                    pool.backends.push(b.clone());
                    pool.backend_max_connections.push(None);
                    changed = true;
                }
            }
        }
        if changed {
            for vip in &mut config.l4.vips {
                if let Some(pool) = vip.pool.as_ref().and_then(|p| config.l7.pool(p)) {
                    vip.reals = reals_of_pool(pool);
                }
            }
        }
        config
    }

    pub fn status(&self, pool: &str, now: Instant) -> Option<DiscoveryStatus> {
        let (config, _) = self.tasks.get(pool)?;
        let found = self.found.get(pool);
        Some(DiscoveryStatus {
            source: config.source.to_string(),
            backends: found.map_or(0, |f| f.backends.len()),
            seconds_since_update: found
                .and_then(|f| f.updated)
                .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            last_error: found.and_then(|f| f.last_error.clone()),
            updates: found.map_or(0, |f| f.updates),
            failures: found.map_or(0, |f| f.failures),
        })
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}

/// How long start-up waits for every discovered pool's first answer, so that a new lb (a
/// start, an upgrade) does not report ready with pools it has not filled yet.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(5);
