//! Fuzz target: see `ridegate_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ridegate_fuzz::config(data));
