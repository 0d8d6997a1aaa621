//! The `shmem_handler` fuzz target: see `vfsdax_fuzz::shmem_handler`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfsdax_fuzz::shmem_handler::run(data));
