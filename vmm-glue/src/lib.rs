//! vfsdax VMM glue: the library a VMM links to host a virtio-fs DAX window backed by `vfsdaxd`
//! and to turn guest accesses to truncated DAX pages into clean, per-task errors.
//!
//! - [`dax`]: the DAX window (reserve, map, unmap), the live mapping table and the vhost-user
//!   frontend request handler that serves `SHMEM_MAP` / `SHMEM_UNMAP`.
//! - [`fault`]: pure classification of vCPU exits on the DAX window and the policy decisions.
//! - [`kvm`]: the thin KVM layer: apf error reporting, machine-check injection, fencing and the
//!   per-vCPU exit hook.
//!
//! Test machinery lives in other crates: `vfsdax-driver` (a virtio-fs driver on the host) and
//! `vfsdax-refvmm` (the reference VMM, its test VM and guest program).
#![warn(missing_docs)]

pub mod dax;
pub mod fault;
pub mod kvm;

/// The wire formats the glue's API speaks (fault reports, the apf error ABI and its CPUID bit,
/// the vhost-user mapping rules), re-exported so that a VMM needs no other vfsdax crate.
pub use vfsdax_protocol as protocol;
