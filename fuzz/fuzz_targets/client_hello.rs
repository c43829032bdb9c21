#![no_main]
// Invariants: lb::l7::fuzzing::client_hello.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb::l7::fuzzing::client_hello(data));
