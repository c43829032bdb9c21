//! Forwarding the datapath's aya-log records to the `log` facade (and from there to `tracing`).
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

use super::XdpError;

/// Spawns a task on the current tokio runtime that delivers every record the XDP program logs
/// to the global `log` logger as soon as the ring buffer signals data.
pub fn forward_logs(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>, XdpError> {
    let logger = EbpfLogger::init(ebpf).map_err(XdpError::Log)?;
    // SAFETY: the logger owns the ring buffer's map fd, which stays open and unchanged until the
    // AsyncFd (and with it the logger) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|err| XdpError::LogPoll(err.into_parts().1))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(err) => {
                    tracing::warn!(error = %err, "aya-log reader stopped");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
