//! Wire formats of vfsdax, without any I/O:
//!
//! - [`fuse`]: the FUSE ABI as a Linux 6.x virtio-fs guest speaks it (7.31+), including the DAX
//!   messages `FUSE_SETUPMAPPING` / `FUSE_REMOVEMAPPING`.
//! - [`apf`]: the paravirtual async-page-fault ABI with the error extension.
//! - [`dax`]: the DAX window's shared-memory region id and chunk size.
//! - [`report`]: the fault-report record the VMM glue emits for every DAX fault.
//! - [`guard`]: the report record of the daemon's truncation guard.
//! - [`inotify`]: inotify event records (both sides watch mapped files for size changes).
#![warn(missing_docs)]

pub mod apf;
pub mod dax;
pub mod fuse;
pub mod guard;
pub mod inotify;
pub mod report;
