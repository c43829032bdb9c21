//! `lb decap`: what a real server runs so IPIP/IP6IP6 from the load balancer reaches its VIP.
use anyhow::Context as _;
use lb::{
    l4::read_l4_events,
    xdp::{self, AttachMode},
};
use lb_common::{l4::L4Event, program_names};

use super::signals::{Event, Signals};

pub async fn run(iface: &str, mode: AttachMode) -> anyhow::Result<()> {
    let attached = xdp::attach_program(program_names::DECAP, iface, mode)
        .with_context(|| format!("attaching the decapsulator to {iface}"))?;
    tracing::info!(iface, mode = attached.mode(), "decapsulator attached");
    println!("attached iface={iface} mode={}", attached.mode());
    let mut signals = Signals::install()?;
    let signal_name = loop {
        match signals.next().await {
            Event::Stop(name) => break name,
            Event::Reload => tracing::info!("SIGHUP: nothing to reload for lb decap"),
            Event::ReopenLogs => tracing::info!("SIGUSR1: lb decap writes no log file"),
            Event::Upgrade => {
                tracing::warn!("SIGUSR2: hitless upgrade is an lb run feature; lb decap ignores it")
            }
        }
    };
    tracing::info!(signal = signal_name, "detaching");
    let events = read_l4_events(attached.ebpf())?;
    attached
        .detach()
        .with_context(|| format!("detaching from {iface}"))?;
    println!(
        "decapsulated={}",
        events
            .get(L4Event::Decapsulated.name())
            .copied()
            .unwrap_or(0)
    );
    println!("detached iface={iface}");
    Ok(())
}
