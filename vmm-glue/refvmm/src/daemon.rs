//! [`DaemonBacking`]: the reference VMM's DAX mapping from `vfsdaxd`. The VMM connects as the
//! vhost-user frontend, wires [`vfsdax_vmm_glue::dax::connect()`] so the daemon's `SHMEM_MAP` lands in a
//! real [`DaxWindow`], and plays the guest's virtio-fs driver through virtqueues in the driver's
//! memfd memory: INIT, LOOKUP of every path component, OPEN, then one 2 MiB SETUPMAPPING with
//! `fh = -1` as Linux's `fs/fuse/dax.c` sends it.
//!
//! Between the guest's two accesses the file changes the way another client of the share would
//! change it: FUSE requests through the daemon ([`TruncateVia::Fuse`]: SETATTR with a size, or
//! UNLINK, CREATE and WRITE) or a host process on the share's file ([`TruncateVia::Host`]).
//! "Unmap before the access" is a REMOVEMAPPING in both cases.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vfsdax_protocol::fuse::flags::{fattr, SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{RemoveMappingOne, SetattrIn, SetupMappingIn, ROOT_ID};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::GuestMemoryMmap;

use crate::scenario::{
    self, pattern_bytes, replacement_word, Backing, BackingError, FileAfter, Truncation,
    ACCESS_OFFSET, BELOW_SIZE, MAP_LEN,
};
use vfsdax_driver::{ClientError, ClientOptions, FsClient};
use vfsdax_vmm_glue::dax::{
    connect, ConnectError, ConnectOptions, DaxConnection, DaxWindow, FileIdentity,
};

/// Length of the one mapping, as a Linux guest maps (`FUSE_DAX_SZ`, 2 MiB).
pub const CHUNK: u64 = 2 << 20;
/// The `fh` of a Linux guest's SETUPMAPPING (it never names a handle).
pub const LINUX_FH: u64 = u64::MAX;

// The scenario's pages must fit in the one chunk.
const _: () = assert!(MAP_LEN <= CHUNK);

/// Errors of the daemon backing.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The vhost-user connection or virtqueue set-up failed.
    #[error("cannot connect to vfsdaxd at {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The driver's error.
        #[source]
        source: ClientError,
    },
    /// The daemon did not offer what DAX needs.
    #[error("the daemon offers no DAX window (protocol features {0:?}; start vfsdaxd with --cache-size)")]
    NoDax(VhostUserProtocolFeatures),
    /// Reserving or wiring the window failed.
    #[error("cannot connect the DAX window")]
    Window(#[source] ConnectError),
    /// The window is smaller than the mappings need.
    #[error("the daemon's DAX window is {0} bytes, too small for the mappings")]
    SmallWindow(u64),
    /// A FUSE request failed.
    #[error("FUSE {what} failed")]
    Request {
        /// Which request, and on what.
        what: String,
        /// The driver's error.
        #[source]
        source: ClientError,
    },
    /// The name is empty or has no usable component.
    #[error("'{0}' names no file in the share")]
    BadName(String),
    /// The name is not a regular file.
    #[error("'{name}' is not a regular file (mode {mode:#o})")]
    NotRegular {
        /// The name.
        name: String,
        /// Its mode.
        mode: u32,
    },
    /// The file is too short for the guest's accesses.
    #[error("'{name}' is {size} bytes; the guest reads up to offset {need:#x}, so it must be at least {need} bytes")]
    TooShort {
        /// The name.
        name: String,
        /// Its size.
        size: u64,
        /// Bytes needed.
        need: u64,
    },
    /// The daemon acknowledged SETUPMAPPING but the window holds no mapping at offset 0.
    #[error("SETUPMAPPING succeeded but no SHMEM_MAP reached the window")]
    NotMapped,
    /// Changing or reading the file on the host failed.
    #[error("cannot change or read {path} on the host")]
    Host {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How the file changes between the guest's accesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruncateVia {
    /// FUSE requests through the daemon, as another guest sharing the directory would.
    Fuse,
    /// A host process changes the file at this path (the share's file).
    Host(PathBuf),
}

/// Where and what to map.
#[derive(Clone, Debug)]
pub struct DaemonTarget {
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// The file, relative to the share (`/`-separated components).
    pub name: String,
    /// How the file changes.
    pub truncate: TruncateVia,
    /// How long to wait for each FUSE reply.
    pub timeout: Duration,
}

/// What the set-up mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// The file's node id.
    pub nodeid: u64,
    /// The handle OPEN returned (the mapping itself used `fh = -1`).
    pub fh: u64,
    /// Size when it was looked up.
    pub size: u64,
    /// Window offset of the mapping.
    pub moffset: u64,
    /// Its length.
    pub len: u64,
    /// Identity of the file the daemon sent with `SHMEM_MAP` (fstat of the VMM's descriptor).
    pub identity: FileIdentity,
    /// The host path of that descriptor, if it can be read from `/proc/self/fd`.
    pub host_path: Option<String>,
}

/// The reference VMM's DAX mapping, served by `vfsdaxd`.
#[derive(Debug)]
pub struct DaemonBacking {
    // Declared first: the request thread stops before the connection closes.
    dax: DaxConnection,
    client: FsClient,
    target: DaemonTarget,
    parent: u64,
    leaf: Vec<u8>,
    mapped: MappedFile,
}

/// Splits `name` into its non-empty components (`.` dropped).
pub fn components(name: &str) -> Vec<&str> {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

pub(crate) fn req(what: impl Into<String>) -> impl FnOnce(ClientError) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Request { what, source }
}

/// Connects to the daemon at `socket` as its vhost-user frontend, wires a [`DaxWindow`] to its
/// `SHMEM_MAP`/`SHMEM_UNMAP` (the window must hold at least `min_window` bytes) and sends INIT.
/// The connection is declared first in the pair: drop it before the client.
pub fn connect_dax(
    socket: &Path,
    timeout: Duration,
    min_window: u64,
) -> Result<(DaxConnection, FsClient), DaemonError> {
    let opts = ClientOptions {
        max_io: 256 << 10,
        batch_bytes: 4096,
        timeout,
        ..ClientOptions::default()
    };
    let mut client = FsClient::connect(socket, opts).map_err(|source| DaemonError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let proto = client.frontend().protocol_features();
    let needed = VhostUserProtocolFeatures::SHMEM
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD;
    if !proto.contains(needed) {
        return Err(DaemonError::NoDax(proto));
    }
    let dax = connect(
        client.frontend_mut().frontend_mut(),
        ConnectOptions {
            reply_ack: proto.contains(VhostUserProtocolFeatures::REPLY_ACK),
            observer: None,
            ..Default::default()
        },
    )
    .map_err(DaemonError::Window)?;
    if dax.window().size() < min_window {
        return Err(DaemonError::SmallWindow(dax.window().size()));
    }
    client.init().map_err(req("INIT"))?;
    Ok((dax, client))
}

impl DaemonBacking {
    /// Connects to the daemon, wires the window and maps the first 2 MiB of the file at window
    /// offset 0 the way a Linux guest does.
    pub fn connect(target: DaemonTarget) -> Result<Self, DaemonError> {
        let (dax, mut client) = connect_dax(&target.socket, target.timeout, CHUNK)?;
        let parts = components(&target.name);
        let Some((leaf, dirs)) = parts.split_last() else {
            return Err(DaemonError::BadName(target.name.clone()));
        };
        let mut parent = ROOT_ID;
        for d in dirs {
            parent = client
                .lookup(parent, d.as_bytes())
                .map_err(req(format!("LOOKUP {d}")))?
                .nodeid;
        }
        let entry = client
            .lookup(parent, leaf.as_bytes())
            .map_err(req(format!("LOOKUP {leaf}")))?;
        let (mode, size) = (entry.attr.mode, entry.attr.size);
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(DaemonError::NotRegular {
                name: target.name.clone(),
                mode,
            });
        }
        if size < MAP_LEN {
            return Err(DaemonError::TooShort {
                name: target.name.clone(),
                size,
                need: MAP_LEN,
            });
        }
        let nodeid = entry.nodeid;
        let fh = client
            .open(nodeid, libc::O_RDWR as u32)
            .map_err(req(format!("OPEN {}", target.name)))?
            .fh;
        let arg = SetupMappingIn {
            fh: LINUX_FH,
            foffset: 0,
            len: CHUNK,
            flags: SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE,
            moffset: 0,
        };
        client
            .setupmapping(nodeid, &arg)
            .map_err(req(format!("SETUPMAPPING {}", target.name)))?;
        let m = dax
            .window()
            .table()
            .lookup(0)
            .ok_or(DaemonError::NotMapped)?;
        let host_path = std::fs::read_link(format!("/proc/self/fd/{}", m.file.as_raw_fd()))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mapped = MappedFile {
            nodeid,
            fh,
            size,
            moffset: m.window_offset,
            len: m.len,
            identity: m.identity,
            host_path,
        };
        Ok(DaemonBacking {
            dax,
            client,
            parent,
            leaf: leaf.as_bytes().to_vec(),
            target,
            mapped,
        })
    }

    /// What the set-up mapped.
    pub fn mapped(&self) -> &MappedFile {
        &self.mapped
    }

    /// The driver (for more FUSE requests).
    pub fn client_mut(&mut self) -> &mut FsClient {
        &mut self.client
    }

    fn set_size(&mut self, size: u64) -> Result<(), DaemonError> {
        let arg = SetattrIn {
            valid: fattr::SIZE,
            size,
            ..SetattrIn::default()
        };
        self.client
            .setattr(self.mapped.nodeid, &arg)
            .map_err(req(format!("SETATTR size={size}")))?;
        Ok(())
    }

    fn recreate(&mut self) -> Result<(), DaemonError> {
        let (parent, leaf) = (self.parent, self.leaf.clone());
        self.client.unlink(parent, &leaf).map_err(req("UNLINK"))?;
        let (entry, open) = self
            .client
            .create(parent, &leaf, libc::O_RDWR as u32, 0o644, 0)
            .map_err(req("CREATE"))?;
        self.client
            .write(entry.nodeid, open.fh, 0, &pattern_bytes(replacement_word))
            .map_err(req("WRITE"))?;
        self.client
            .release(entry.nodeid, open.fh, libc::O_RDWR as u32)
            .map_err(req("RELEASE"))
    }

    fn change_by_fuse(&mut self, t: Truncation) -> Result<(), DaemonError> {
        match t {
            Truncation::None | Truncation::UnmapBeforeAccess => Ok(()),
            Truncation::ToZero => self.set_size(0),
            Truncation::BelowAccessedPage => self.set_size(BELOW_SIZE),
            Truncation::TruncateThenReextend => {
                self.set_size(0)?;
                self.set_size(MAP_LEN)
            }
            Truncation::UnlinkAndRecreate => self.recreate(),
        }
    }

    fn file_after_by_fuse(&mut self) -> Result<FileAfter, DaemonError> {
        let (parent, leaf) = (self.parent, self.leaf.clone());
        let e = self
            .client
            .lookup(parent, &leaf)
            .map_err(req("LOOKUP after the run"))?;
        let len = e.attr.size;
        let word_at_access = if len >= ACCESS_OFFSET + 8 {
            let fh = self
                .client
                .open(e.nodeid, libc::O_RDONLY as u32)
                .map_err(req("OPEN after the run"))?
                .fh;
            let bytes = self
                .client
                .read(e.nodeid, fh, ACCESS_OFFSET, 8)
                .map_err(req("READ after the run"))?;
            let _ = self.client.release(e.nodeid, fh, libc::O_RDONLY as u32);
            bytes.get(..8).map(|b| {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                u64::from_le_bytes(w)
            })
        } else {
            None
        };
        Ok(FileAfter {
            len,
            word_at_access,
        })
    }

    /// Releases the handle, removes the mapping and stops serving the window; the vhost-user
    /// connection closes when this returns (the daemon then ends its session).
    pub fn close(mut self) -> Result<(), DaemonError> {
        let m = self.mapped.clone();
        let removed = self.client.removemapping(
            m.nodeid,
            &[RemoveMappingOne {
                moffset: m.moffset,
                len: m.len,
            }],
        );
        let released = self.client.release(m.nodeid, m.fh, libc::O_RDWR as u32);
        let DaemonBacking { dax, client, .. } = self;
        drop(dax.stop());
        drop(client);
        removed.map_err(req("REMOVEMAPPING at close"))?;
        released.map_err(req("RELEASE at close"))
    }
}

fn host_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Host {
        path: path.to_path_buf(),
        source,
    }
}

impl Backing for DaemonBacking {
    fn window(&self) -> Arc<DaxWindow> {
        Arc::clone(self.dax.window())
    }

    fn extra_ram(&self) -> Option<GuestMemoryMmap> {
        Some(self.client.memory().memory().clone())
    }

    fn mutate(&mut self, t: Truncation) -> Result<(), BackingError> {
        if t == Truncation::UnmapBeforeAccess {
            let half = MAP_LEN / 2;
            self.client
                .removemapping(
                    self.mapped.nodeid,
                    &[RemoveMappingOne {
                        moffset: self.mapped.moffset + half,
                        len: half,
                    }],
                )
                .map_err(req("REMOVEMAPPING"))?;
            return Ok(());
        }
        match self.target.truncate.clone() {
            TruncateVia::Fuse => Ok(self.change_by_fuse(t)?),
            TruncateVia::Host(path) => {
                let file: File = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(host_err(&path))?;
                scenario::change_on_host(t, &path, &file).map_err(host_err(&path))?;
                Ok(())
            }
        }
    }

    fn file_after(&mut self) -> Result<FileAfter, BackingError> {
        match self.target.truncate.clone() {
            TruncateVia::Fuse => Ok(self.file_after_by_fuse()?),
            TruncateVia::Host(path) => Ok(scenario::file_after(&path).map_err(host_err(&path))?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_components() {
        assert_eq!(components("a/b/c.bin"), vec!["a", "b", "c.bin"]);
        assert_eq!(components("/./data//x"), vec!["data", "x"]);
        assert!(components("").is_empty());
        assert!(components("/./").is_empty());
    }

    #[test]
    fn the_mapping_is_one_linux_chunk() {
        assert_eq!(CHUNK, 1 << 21);
        assert_eq!(LINUX_FH as i64, -1);
    }
}
