//! The `fuse_server` fuzz target: see `vfsdax_fuzz::fuse_server`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfsdax_fuzz::fuse_server::run(data));
