//! The `lb` commands (binary only; the library holds the machinery they drive).
pub mod bench;
pub mod check_config;
pub mod ctl;
pub mod decap;
pub mod l4;
pub mod l7;
pub mod run;
pub mod signals;
pub mod xdp;

/// The runtime for serving commands (`lb run`, `lb l7`): `threads` workers, by default one per
/// CPU this process may use (its affinity mask: `taskset -c 0 lb run` is one). One thread is
/// tokio's current-thread scheduler: no work-stealing queues, no cross-thread wake-ups, the
/// thread that accepts also serves; measured faster per request than a one-worker
/// multi-thread runtime (docs/ARCHITECTURE.md, "Cost of an L7 request").
pub fn serving_runtime(threads: Option<usize>) -> tokio::runtime::Builder {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(threads);
    runtime
}
