//! Test support.
pub mod dax;
pub mod guest;
pub mod harness;
pub mod workload;
