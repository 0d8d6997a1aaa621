//! A virtio-fs *driver* that lives on the host: what a guest kernel's virtio-fs driver does,
//! done from a host process so tests, the reference VMM and the benchmarks can talk to a
//! vhost-user-fs daemon without a VM.
//!
//! - [`memory`]: guest memory in a memfd (shared with the daemon through `SET_MEM_TABLE`) and a
//!   bump allocator for rings and buffers.
//! - [`ring`]: split-ring layout and descriptor arithmetic (pure).
//! - [`queue`]: the driver side of split virtqueues (EVENT_IDX, indirect descriptors, and raw
//!   descriptors for bad-input tests).
//! - [`fuse`]: FUSE request encoding and reply parsing (pure).
//! - [`frontend`]: the vhost-user handshake with the daemon.
//! - [`client`]: [`FsClient`], which ties them together; [`ops`] adds one method per opcode.

pub mod client;
pub mod frontend;
pub mod fuse;
pub mod memory;
pub mod ops;
pub mod queue;
pub mod ring;

pub use client::{BatchRequest, ClientError, ClientOptions, FsClient, RawReply};
pub use frontend::{FeatureWishes, FsFrontend};
pub use fuse::{Caller, DirEntry, DirEntryPlus, FuseError, XattrReply};
pub use memory::GuestMem;
pub use queue::{Buffer, DriverQueue, RawDesc, UsedElem};
