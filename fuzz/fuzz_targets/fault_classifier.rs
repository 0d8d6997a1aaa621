//! The `fault_classifier` fuzz target: see `vfsdax_fuzz::fault_classifier`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfsdax_fuzz::fault_classifier::run(data));
