//! Fuzz target: see `ridegate_fuzz::device_certificate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ridegate_fuzz::device_certificate(data));
