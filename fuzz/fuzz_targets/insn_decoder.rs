//! The `insn_decoder` fuzz target: see `vfsdax_fuzz::insn_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfsdax_fuzz::insn_decoder::run(data));
