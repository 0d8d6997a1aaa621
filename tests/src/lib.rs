//! Test support.
pub mod guest;
