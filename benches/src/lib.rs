//! Benchmarks for lb. `cargo bench -p lb-benches` runs them (root needed: they load BPF).
//!
//! - `xdp_parse`: per-packet cost of the datapath by BPF_PROG_TEST_RUN, next to a trivial
//!   XDP_PASS program measured the same way in the same run.
