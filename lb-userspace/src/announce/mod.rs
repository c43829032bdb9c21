//! Announcing this node's VIPs to the routers by BGP (`[bgp]`), through BIRD 2: the manager
//! decides which VIP addresses this node can serve (`decide.rs`) and hands the set to the
//! [`Announcer`], whose task writes BIRD's routes file and has BIRD re-read it, supervises the
//! BIRD process lb runs (restarting it if it dies) and reads the sessions' state for the status.
//!
//! - `decide.rs`: which VIP addresses to announce, and why the others are not.
//! - `bird.rs`: the routes file, the control socket, the BIRD process.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    process::Child,
    sync::{oneshot, watch},
};

use crate::config::bgp::BgpConfig;

pub mod bird;
pub mod decide;

pub use bird::{BirdError, Session};

/// How often the task checks BIRD (alive, sessions) and retries a set BIRD has not taken.
const TICK: Duration = Duration::from_secs(1);
/// How long `lb run` waits for the BIRD it started to answer on its control socket.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long BIRD may take to stop (it tells its peers first) before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// What the speaker is doing, for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpeakerState {
    /// The BIRD lb runs is running (always true for a BIRD run by someone else).
    pub running: bool,
    /// Its pid (None for a BIRD run by someone else).
    pub pid: Option<u32>,
    /// What BIRD was last told to announce (and took).
    pub announced: Vec<IpNet>,
    pub sessions: Vec<Session>,
    /// The last failure talking to BIRD (cleared by the next success).
    pub last_error: Option<String>,
}

/// The desired set, numbered so callers can wait for BIRD to have taken a given one.
#[derive(Clone, Debug, Default)]
struct Desired {
    generation: u64,
    prefixes: Vec<IpNet>,
}

pub struct Announcer {
    config: BgpConfig,
    desired: watch::Sender<Desired>,
    /// The generation BIRD took last.
    taken: watch::Receiver<u64>,
    state: Arc<Mutex<SpeakerState>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Writes an empty routes file (nothing is announced before the manager decides) and,
    /// with `bird_config`, starts BIRD and waits for it to answer: a BIRD that does not start
    /// (a bad configuration) is an error with BIRD's own words. A BIRD run by someone else is
    /// told to re-read; if it is not there yet, the task keeps trying.
    pub async fn start(config: &BgpConfig) -> Result<Self, BirdError> {
        bird::write_routes(&config.routes_file, &[]).await?;
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        let child = match &config.bird_config {
            None => None,
            Some(bird_config) => {
                let mut child = bird::spawn(
                    &config.bird,
                    bird_config,
                    &config.control_socket,
                    last_words.clone(),
                )?;
                wait_answering(&mut child, config, &last_words).await?;
                Some(child)
            }
        };
        let state = Arc::new(Mutex::new(SpeakerState {
            running: true,
            pid: child.as_ref().and_then(Child::id),
            ..SpeakerState::default()
        }));
        let (desired, desired_rx) = watch::channel(Desired::default());
        let (taken_tx, taken) = watch::channel(0);
        let (stop, stop_rx) = oneshot::channel();
        let speaker = Speaker {
            config: config.clone(),
            child,
            last_words,
            state: state.clone(),
            desired: desired_rx,
            taken: taken_tx,
        };
        let task = tokio::spawn(speaker.run(stop_rx));
        Ok(Self {
            config: config.clone(),
            desired,
            taken,
            state,
            stop: Some(stop),
            task,
        })
    }

    pub fn config(&self) -> &BgpConfig {
        &self.config
    }

    /// Announce exactly `prefixes` from now on (a no-op when that is already the set).
    pub fn announce(&self, mut prefixes: Vec<IpNet>) {
        prefixes.sort();
        prefixes.dedup();
        self.desired.send_if_modified(|d| {
            if d.prefixes == prefixes {
                return false;
            }
            d.generation += 1;
            d.prefixes = prefixes;
            true
        });
    }

    /// Waits (at most `limit`) until BIRD has taken the latest set; false if it has not.
    pub async fn settled(&self, limit: Duration) -> bool {
        let wanted = self.desired.borrow().generation;
        let mut taken = self.taken.clone();
        tokio::time::timeout(limit, taken.wait_for(|g| *g >= wanted))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn state(&self) -> SpeakerState {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops the task and the BIRD lb runs (which tells its peers, withdrawing everything).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Waits for the BIRD just started to answer on its control socket.
async fn wait_answering(
    child: &mut Child,
    config: &BgpConfig,
    last_words: &Mutex<VecDeque<String>>,
) -> Result<(), BirdError> {
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Its standard error is read by another task: give it the moment to catch up.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let words = last_words
                .lock()
                .map(|w| w.iter().cloned().collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            return Err(BirdError::Exited {
                status: status.to_string(),
                words,
            });
        }
        match bird::command(&config.control_socket, "show status").await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The task behind an [`Announcer`].
struct Speaker {
    config: BgpConfig,
    child: Option<Child>,
    last_words: Arc<Mutex<VecDeque<String>>>,
    state: Arc<Mutex<SpeakerState>>,
    desired: watch::Receiver<Desired>,
    taken: watch::Sender<u64>,
}

impl Speaker {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = true;
        loop {
            let ticked = tokio::select! {
                _ = &mut stop => break,
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    pending = true;
                    false
                }
                _ = tick.tick() => true,
            };
            if ticked && self.restart_if_gone().await {
                pending = true;
            }
            if pending {
                pending = !self.push().await;
            }
            if ticked {
                let sessions = bird::sessions(&self.config.control_socket).await;
                let mut state = self.lock();
                match sessions {
                    Ok(sessions) => state.sessions = sessions,
                    Err(_) => state.sessions.clear(),
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            stop_bird(&mut child).await;
        }
        self.lock().running = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpeakerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the desired set and has BIRD re-read it; true when BIRD took it.
    async fn push(&mut self) -> bool {
        let desired = self.desired.borrow_and_update().clone();
        let result = match bird::write_routes(&self.config.routes_file, &desired.prefixes).await {
            Ok(()) => bird::configure(&self.config.control_socket).await,
            Err(err) => Err(err),
        };
        let mut state = self.lock();
        match result {
            Ok(()) => {
                tracing::info!(prefixes = ?desired.prefixes, "BGP: BIRD took the VIP set");
                state.announced = desired.prefixes;
                state.last_error = None;
                drop(state);
                self.taken.send_replace(desired.generation);
                true
            }
            Err(err) => {
                let err = err.to_string();
                if state.last_error.as_ref() != Some(&err) {
                    tracing::error!(error = %err, "BGP: BIRD did not take the VIP set; retrying");
                }
                state.last_error = Some(err);
                false
            }
        }
    }

    /// The BIRD lb runs exited: started again (with the routes file as it is). True when it
    /// was restarted and answers.
    async fn restart_if_gone(&mut self) -> bool {
        let (Some(child), Some(bird_config)) = (&mut self.child, &self.config.bird_config) else {
            return false;
        };
        let Ok(Some(status)) = child.try_wait() else {
            return false;
        };
        tracing::error!(%status, "BGP: BIRD exited; starting it again");
        self.lock().running = false;
        let started = match bird::spawn(
            &self.config.bird,
            bird_config,
            &self.config.control_socket,
            self.last_words.clone(),
        ) {
            Ok(mut child) => wait_answering(&mut child, &self.config, &self.last_words)
                .await
                .map(|()| child),
            Err(err) => Err(err),
        };
        match started {
            Ok(child) => {
                let pid = child.id();
                self.child = Some(child);
                let mut state = self.lock();
                state.running = true;
                state.pid = pid;
                true
            }
            Err(err) => {
                self.lock().last_error = Some(err.to_string());
                false
            }
        }
    }
}

/// SIGTERM (BIRD closes its sessions with a Cease, so routers withdraw at once), then SIGKILL
/// after [`STOP_LIMIT`].
async fn stop_bird(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped (the Child
        // still owns it), so the pid cannot belong to another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_LIMIT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("BGP: BIRD did not stop; killing it");
        let _ = child.kill().await;
    }
}
