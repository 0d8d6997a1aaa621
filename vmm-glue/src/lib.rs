//! vfsdax VMM glue: the library a VMM links to host a virtio-fs DAX window backed by `vfsdaxd`
//! and to turn guest accesses to truncated DAX pages into clean, per-task errors.
//!
//! - [`dax`]: the DAX window (reserve, map, unmap), the live mapping table and the vhost-user
//!   frontend request handler that serves `SHMEM_MAP` / `SHMEM_UNMAP`.
//! - [`driver`]: a virtio-fs *driver* that lives on the host: split virtqueues laid out in guest
//!   memory, FUSE request building and reply parsing, and a vhost-user frontend that connects it to
//!   a daemon. Used by the reference VMM, the integration tests and the benchmarks.
//! - [`fault`]: pure classification of vCPU exits on the DAX window and the policy decisions.
//! - [`kvm`]: the thin KVM layer: apf error reporting, machine-check injection, the vCPU loop.
//! - [`refvmm`]: the reference VMM `vfsdax-vmm` (mapping from `vfsdaxd` or a local file, output).
#![warn(missing_docs)]

pub mod dax;
pub mod driver;
pub mod fault;
pub mod kvm;
pub mod refvmm;
