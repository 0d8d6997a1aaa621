//! Test support.
pub mod bins;
pub mod dax;
pub mod guest;
pub mod harness;
pub mod require;
pub mod systemd;
pub mod workload;
