//! Test support.
pub mod guest;
pub mod harness;
