#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| backflow::fuzzing::quoting(data));
