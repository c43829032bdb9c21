//! `cargo xtask demo`: setup, build `lb`, then run it on real traffic in a throw-away
//! network-namespace topology. Three demos:
//!
//! - default (`lb_run.rs`): the whole load balancer, `lb run` (XDP tier + L7 tier + health
//!   checks + admin status page) in front of three HTTP backends, driven by `lb bench`, with a
//!   scripted drain / backend failure / recovery story checked against the admin API;
//! - `--l4` (`l4.rs`): the L4 tier alone, `lb l4` with direct server return to `lb decap`;
//! - `--cluster` (`cluster.rs`): three `lb run` nodes announcing a VIP by BGP to a BIRD router
//!   with ECMP; 300 long-lived flows survive a drained node, a killed one and its return.
//!
//! All exit non-zero when something they show is wrong, so they double as smoke tests.
//! Namespaces (and every process in them) are removed at the end, on failure and on Ctrl-C.
pub mod backend;
mod cluster;
mod l4;
mod lb_run;
mod port_forward;
mod process;

use std::{
    path::Path,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    is_root,
    netns::{Netns, delete_netns, ip, sweep_stale},
    run, setup,
};

/// Every demo namespace is named `lbdemo-<pid>-<n>-<role>` (swept at the next start if a run
/// was killed).
const PREFIX: &str = "lbdemo";

#[derive(Args, Default)]
pub struct DemoArgs {
    /// Run the older L4-only demo instead: `lb l4` with direct server return to `lb decap`.
    #[arg(long)]
    l4: bool,
    /// Run the scale-out demo instead: three `lb run` nodes behind a BGP/ECMP router.
    #[arg(long, conflicts_with_all = ["l4", "hold"])]
    cluster: bool,
    /// After the scripted story, keep everything running (with light traffic) until Ctrl-C,
    /// so the status page can be watched.
    #[arg(long, conflicts_with = "l4")]
    hold: bool,
}

/// Namespaces to delete if the user presses Ctrl-C (Drop does it on every other path).
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set while `--hold` waits for Ctrl-C: then Ctrl-C is the normal way out (exit code 0).
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Set once Ctrl-C was pressed: the handler owns the exit from then on.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C was pressed (errors after that are the interruption's echo, not news).
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn demo(ws: &Path, args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    setup::setup(ws)?;
    run(Command::new("cargo").current_dir(ws).args([
        "build",
        "--package",
        "lb-userspace",
        "--bin",
        "lb",
    ]))?;
    let lb = ws.join("target/debug/lb");

    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::Relaxed);
        let holding = HOLDING.load(Ordering::Relaxed);
        eprintln!("\ndemo: interrupted, stopping lb and removing namespaces");
        if let Ok(names) = CREATED.lock() {
            // Ctrl-C reached the whole process group, lb included: give it a moment to
            // detach and exit on its own before whatever is left is killed.
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline
                && names
                    .iter()
                    .any(|n| ip(&["netns", "pids", n]).is_ok_and(|out| !out.trim().is_empty()))
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            // The main thread's guards may have removed some already.
            names
                .iter()
                .filter(|n| Path::new("/run/netns").join(n).exists())
                .for_each(|n| delete_netns(n));
        }
        std::process::exit(if holding { 0 } else { 130 });
    })
    .context("installing the Ctrl-C handler")?;
    sweep_stale(PREFIX);

    let result = if args.cluster {
        cluster::demo(ws, &lb)
    } else if args.l4 {
        l4::demo(ws, &lb)
    } else {
        lb_run::demo(ws, &lb, args.hold)
    };
    if interrupted() {
        // The Ctrl-C handler is cleaning up and will exit with the right code.
        loop {
            std::thread::park();
        }
    }
    result
}

/// Records `ns` for the Ctrl-C handler.
fn track(ns: Netns) -> Netns {
    if let Ok(mut names) = CREATED.lock() {
        names.push(ns.name().to_owned());
    }
    ns
}

/// From now on Ctrl-C ends the demo successfully.
fn hold_until_ctrl_c() -> ! {
    HOLDING.store(true, Ordering::Relaxed);
    loop {
        std::thread::park();
    }
}
