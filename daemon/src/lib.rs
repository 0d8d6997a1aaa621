//! `vfsdaxd` as a library: the vhost-user-fs backend, the FUSE server, the passthrough filesystem
//! and the DAX mapping bookkeeping. The binary in `main.rs` only parses options and wires these up.
#![warn(missing_docs)]

pub mod backend;
pub mod capabilities;
pub mod cli;
pub mod dax;
pub mod filesystem;
// Not in the unit tests, which load `server/testutil.rs` themselves.
#[cfg(all(feature = "fuzzing", not(test)))]
pub mod fuzzing;
pub mod guard;
pub mod passthrough;
pub mod ratelimit;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod socket;
pub mod systemd;
