//! Shutdown and reload signals, as one stream of events.
use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

pub enum Event {
    /// SIGINT or SIGTERM, by name.
    Stop(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.hup.recv() => Event::Reload,
        }
    }
}
