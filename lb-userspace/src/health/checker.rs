//! Runs the active checks of a set of backends: each backend on its own timer (started with a
//! random offset, so a large pool does not probe in bursts), each result fed to its rise/fall
//! state, each up/down transition reported to the caller.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::config::health_check::HealthCheckConfig;

use super::{
    probe::probe,
    state::{HealthState, Transition},
};

/// One backend to check: where, and the state the checks update (shared with readers such as
/// the status page).
#[derive(Clone)]
pub struct HealthTarget {
    pub pool: String,
    pub index: usize,
    pub addr: SocketAddr,
    pub state: Arc<Mutex<HealthState>>,
}

/// A backend changed state (or was seen working for the first time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub pool: String,
    pub index: usize,
    pub addr: SocketAddr,
    pub up: bool,
    pub reason: Option<String>,
    /// Not a change: the first check of a backend assumed up at start passed.
    pub first_pass: bool,
}

/// Starts checking every target with `config`; transitions go to `events`. Dropping (aborting)
/// the returned handles stops the checks.
pub fn spawn_checker(
    config: Arc<HealthCheckConfig>,
    targets: Vec<HealthTarget>,
    events: mpsc::UnboundedSender<HealthEvent>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let count = targets.len().max(1) as u32;
    targets
        .into_iter()
        .enumerate()
        .map(|(n, target)| {
            let (config, events) = (config.clone(), events.clone());
            // Spread the first checks over one interval.
            let offset = config.interval * n as u32 / count;
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(config.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let began = Instant::now();
                    let result = probe(&config.kind, target.addr, config.timeout)
                        .await
                        .map_err(|e| e.to_string());
                    let took = began.elapsed();
                    let transition = match target.state.lock() {
                        Ok(mut state) => state.observe_timed(result.clone(), took, Instant::now()),
                        Err(_) => return,
                    };
                    let (up, first_pass) = match transition {
                        Transition::None => continue,
                        Transition::WentDown => (false, false),
                        Transition::CameUp => (true, false),
                        Transition::FirstPass => (true, true),
                    };
                    if !first_pass { tracing::info!(
                        pool = %target.pool,
                        backend = %target.addr,
                        up,
                        reason = result.as_ref().err().map(String::as_str).unwrap_or("check passed"),
                        "health changed"
                    ); }
                    let event = HealthEvent {
                        pool: target.pool.clone(),
                        index: target.index,
                        addr: target.addr,
                        up,
                        reason: result.err(),
                        first_pass,
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// Time until a backend checked every `interval` with thresholds `rise`/`fall` is marked, in
/// the worst case (for documentation and test bounds).
pub fn detection_bound(config: &HealthCheckConfig, threshold: u32) -> Duration {
    config.interval * (threshold + 1) + config.timeout
}
