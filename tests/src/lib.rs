//! Shared test support for lb: the network-namespace rig, frame builders, and a
//! BPF_PROG_TEST_RUN harness for the XDP datapath.
pub mod cluster;
pub mod dsr;
pub mod echo_backend;
pub mod fib;
pub mod http_server;
pub mod lb_maps;
pub mod lb_run;
pub mod lb_run_netns;
pub mod named_backend;
pub mod netns;
pub mod packets;
pub mod raw_http;
pub mod temp_dir;
pub mod xdp_run;

/// Prefix of every network namespace the tests create (`netns::sweep_stale` removes leftovers).
pub const NETNS_PREFIX: &str = "lbt";

/// The `lb` binary of this build: `$LB_BIN`, or `target/<profile>/lb` next to the test binary
/// (`cargo xtask test` builds it first).
pub fn lb_bin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/lb
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("lb"))
        .expect("test binary lives in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} not found: build it first (cargo build -p lb-userspace) or set LB_BIN",
        bin.display()
    );
    bin
}

/// The state letter of process `pid` (stat(5): R, S, T, Z, ...), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Process `pid` exists and has not exited (a zombie has).
pub fn process_running(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z')
}
