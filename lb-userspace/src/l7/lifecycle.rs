//! Client connections over their life: a listener admits at most `max_connections` at once
//! (beyond that the accept loop waits, so new connections wait in the kernel's accept queue,
//! as NGINX `worker_connections` and HAProxy `maxconn` do), and graceful shutdown: every
//! connection is told to finish (HTTP/1.1 keep-alive connections close after their current
//! request, HTTP/2 ones send GOAWAY), then the stragglers are dropped when the grace ends.
//! The global guard's `max_connections` (`overload.rs`) is one more semaphore every HTTP
//! listener's gate takes a slot of. Connections without a slot (tcp relays, and WebSockets
//! and tunnels once upgraded) are counted through a `Tracker`, so the graceful stop (and an
//! upgrade's drain) gives them the grace too instead of ending with the process.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Finish current requests, take no new ones.
    Draining,
    /// The grace is over: drop every connection.
    Closing,
}

/// The server side: tells every connection the phase, and knows when all have ended (each
/// connection holds a receiver until it ends).
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// Connections admitted and not yet ended.
    open: Arc<AtomicUsize>,
    /// The tier-wide connection slots (`--max-connections`), shared by every HTTP listener.
    global: Option<Arc<Semaphore>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Lifecycle {
    /// With at most `global` connections on all listeners together (None: no such limit).
    pub fn new(global: Option<usize>) -> Self {
        Self {
            phase: watch::Sender::new(Phase::Serving),
            open: Arc::default(),
            global: global.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// Connections admitted and not yet ended, on every listener.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// For connections no slot limit applies to.
    pub fn tracker(&self) -> Tracker {
        Tracker {
            phase: self.phase.subscribe(),
            open: self.open.clone(),
        }
    }

    /// The gate of one listener allowing `max_connections` at once.
    pub fn gate(&self, max_connections: usize) -> ListenerGate {
        ListenerGate {
            slots: Arc::new(Semaphore::new(max_connections)),
            global: self.global.clone(),
            phase: self.phase.subscribe(),
            open: self.open.clone(),
        }
    }

    /// Tells every connection to finish and waits up to `grace` for them; then drops the rest.
    /// Returns how many connections were still open when the grace ended. Accept loops must
    /// be stopped first (they hold receivers too).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.phase.closed())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.open.load(Ordering::Relaxed);
        self.phase.send_replace(Phase::Closing);
        // Dropping a connection takes a scheduler turn; don't wait on one that won't go.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.phase.closed()).await;
        left
    }
}

/// Counts connections that take no listener slot (tcp relays, WebSockets and tunnels after
/// their upgrade, which outlive the HTTP connection that started them) into the graceful
/// stop: they get the grace, then are cut with the rest.
#[derive(Clone, Debug)]
pub struct Tracker {
    phase: watch::Receiver<Phase>,
    open: Arc<AtomicUsize>,
}

impl Tracker {
    /// Counts one more connection until the returned admission is dropped (`Admission::run`).
    pub fn admit(&self) -> Admission {
        self.open.fetch_add(1, Ordering::Relaxed);
        Admission {
            _permit: None,
            _global: None,
            phase: self.phase.clone(),
            open: self.open.clone(),
        }
    }
}

/// A listener's connection slots.
pub struct ListenerGate {
    slots: Arc<Semaphore>,
    global: Option<Arc<Semaphore>>,
    phase: watch::Receiver<Phase>,
    open: Arc<AtomicUsize>,
}

impl ListenerGate {
    /// For the connections this listener's ones turn into (upgrades, tunnels).
    pub fn tracker(&self) -> Tracker {
        Tracker {
            phase: self.phase.clone(),
            open: self.open.clone(),
        }
    }

    /// Waits for a free slot (call before accepting, so waiting clients queue in the kernel).
    pub async fn admit(&self) -> Admission {
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.ok();
        let global = match &self.global {
            None => None,
            Some(global) => global.clone().acquire_owned().await.ok(),
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Admission {
            _permit: permit,
            _global: global,
            phase: self.phase.clone(),
            open: self.open.clone(),
        }
    }
}

/// One admitted connection: holds its slot and watches the phase until it ends.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    _global: Option<OwnedSemaphorePermit>,
    phase: watch::Receiver<Phase>,
    open: Arc<AtomicUsize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// The phase, for `serve`.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.clone()
    }

    /// Runs a connection's whole task (PROXY header, TLS handshake, serving) until it ends or
    /// the grace is over; the slot is freed after.
    pub async fn run(self, connection: impl Future<Output = ()>) {
        let mut phase = self.phase.clone();
        let closing = async {
            // A dropped `Lifecycle` (no shutdown asked) never closes connections.
            if phase.wait_for(|p| *p == Phase::Closing).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = connection => {}
            () = closing => {}
        }
        drop(self);
    }
}

/// Drives a hyper server connection (any builder's) until it ends; once the phase leaves
/// `Serving`, `graceful_shutdown` tells it to finish (HTTP/1.1: after the current request;
/// HTTP/2: GOAWAY). The forward proxy's connections (plain and inspected) go through it.
pub async fn drive<C: Future>(
    connection: C,
    mut phase: watch::Receiver<Phase>,
    graceful_shutdown: fn(std::pin::Pin<&mut C>),
) {
    tokio::pin!(connection);
    let draining = async { phase.wait_for(|p| *p != Phase::Serving).await.is_ok() };
    let drain = tokio::select! {
        _ = connection.as_mut() => return,
        drain = draining => drain,
    };
    // Not draining: the `Lifecycle` is gone and no one will ever ask to.
    if drain {
        graceful_shutdown(connection.as_mut());
    }
    let _ = connection.await;
}
