#![no_main]
// Invariants: lb::l7::fuzzing::jwt.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb::l7::fuzzing::jwt(data));
