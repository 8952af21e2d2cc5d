//! Fuzz target: see `ridegate_fuzz::gate_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ridegate_fuzz::gate_request(data));
