//! The DAX side of the VMM: the window a virtio-fs device's cache lives in, the table of live
//! mappings inside it, and the vhost-user frontend request handler that serves the daemon's
//! `SHMEM_MAP` / `SHMEM_UNMAP` requests.
//!
//! - [`table`]: [`MappingTable`], window offset range → file, queried by vCPU threads.
//! - [`window`]: [`DaxWindow`], the reserved host range and `MAP_FIXED` mapping inside it.
//! - [`handler`]: [`DaxRequestHandler`], vhost's `VhostUserFrontendReqHandler` for the window.
//! - [`mod@connect`]: [`connect()`], wiring a window and its request thread to a connected backend.

pub mod connect;
pub mod handler;
pub mod table;
pub mod window;

#[cfg(test)]
pub(crate) mod testutil;

pub use connect::{connect, ConnectError, ConnectOptions, DaxConnection, DaxServer, ServeEnd};
pub use handler::{DaxEvent, DaxRequestHandler, DaxStats, RequestError};
pub use table::{FileIdentity, Mapping, MappingTable};
pub use window::{DaxWindow, FileFeed, WindowError};
