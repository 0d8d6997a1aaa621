//! The reference VMM `vfsdax-vmm` and its test machinery, on `vfsdax-vmm-glue` as any VMM would
//! use it: a minimal KVM VM ([`vm`]) with a hand-written 64-bit guest ([`guest`]), truncation
//! scenarios run in it ([`scenario`]), the DAX mapping from `vfsdaxd` through the host-side
//! virtio-fs driver ([`daemon`]) or a local file, and the rendering of what happened
//! ([`output`]). [`run`] ties them together; the binary is only its command line. [`storm`] is
//! the truncation storm: many vCPUs and mappings while host threads change the files.
#![warn(missing_docs)]

pub mod daemon;
pub mod guest;
pub mod output;
pub mod run;
pub mod scenario;
pub mod storm;
pub mod vm;

pub use run::*;
