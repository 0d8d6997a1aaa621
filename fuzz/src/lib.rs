//! The fuzz targets' harnesses. Each `fuzz_targets/<name>.rs` is a one-line `fuzz_target!` that
//! calls `<name>::run`; the logic lives here so the seed generator (`examples/gen_seeds.rs`)
//! and the replay test share it. Every harness checks invariants of its own besides "no
//! panic" (a broken one panics, which libFuzzer reports as a crash): see each module.

pub mod chain_layouts;
pub mod fault_classifier;
pub mod fuse_server;
pub mod input;
pub mod insn_decoder;
pub mod scratch;
pub mod shmem_handler;
