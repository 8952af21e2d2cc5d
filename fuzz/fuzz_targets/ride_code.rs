//! Fuzz target: see `ridegate_fuzz::ride_code`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ridegate_fuzz::ride_code(data));
