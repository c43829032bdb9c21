#![no_main]
// Invariants: lb::l7::fuzzing::forwarded.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb::l7::fuzzing::forwarded(data));
