#![no_main]
// Invariants: lb::l7::fuzzing::head_guard.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb::l7::fuzzing::head_guard(data));
