//! The `chain_layouts` fuzz target: see `vfsdax_fuzz::chain_layouts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfsdax_fuzz::chain_layouts::run(data));
