//! The passthrough filesystem: a host directory exported to the guest.
//!
//! # Design
//! - **Inodes** are `O_PATH | O_NOFOLLOW` descriptors (`inode.rs`), keyed by (device, inode
//!   number, mount id) and counted by lookups; node ids are our own counter, [`ROOT_ID`] is the
//!   share root and is never dropped.
//! - **Names** are single components (`names.rs`) resolved with `openat(parent_fd, name)`:
//!   no host path is ever built from guest input, so nothing outside the share can be named.
//!   `..` looked up at the root is the root. The daemon never follows a symlink for the guest:
//!   lookups use `O_NOFOLLOW`, a symlink inode cannot be opened (`ELOOP`), READLINK returns the
//!   target bytes as they are.
//! - **Replies describe the file held**: CREATE's entry is built from the descriptor it
//!   opened (an `O_PATH` reopen through `/proc/self/fd`), LINK's from the inode linked, so a
//!   racing rename of the name cannot pair a handle or a reply with another file. MKNOD,
//!   MKDIR and SYMLINK hold no descriptor of what they made and look the name up: the entry
//!   is then consistent for whatever the name holds (and the umask fix-up checks the owner).
//! - **I/O** reopens an inode through `/proc/self/fd/<n>` (relative to a held descriptor of
//!   `/proc/self/fd`), for regular files and directories only; a magic link resolves to the
//!   file the `O_PATH` descriptor holds and goes no further. Device nodes, FIFOs and sockets
//!   are never opened on the host (`ENXIO`): a guest kernel serves those itself, and a device
//!   node made by guest root must not reach the host device.
//! - **Host privileges** guest root must not gain: MKNOD refuses character and block devices
//!   (`EPERM`) but the overlayfs whiteout (character device 0/0); SETXATTR refuses
//!   `security.capability` (`EPERM`), since file capabilities act when a host user runs the
//!   file.
//! - **Credentials**: the daemon runs as root. Calls that create a file (CREATE, MKNOD, MKDIR,
//!   SYMLINK) run with the caller's fsuid/fsgid, switched per thread for the duration of the
//!   call (`sys::FsCredsGuard`). Chosen over `fchownat` afterwards because the file never
//!   exists with the wrong owner, the host applies the caller's permissions on the parent,
//!   and set-group-id directories and quotas behave as for a local caller. Operations on
//!   existing names (UNLINK, RENAME, LINK, SETATTR) run as root: the guest kernel has already
//!   checked the caller's permissions (virtiofs mounts use `default_permissions`). A daemon
//!   not running as root cannot switch, and files belong to its own user. The thread keeps
//!   the process's supplementary groups during a switch: the binary should drop them at
//!   start-up (`setgroups(0)`, as virtiofsd does) so that they grant the guest nothing.
//! - **Umask**: the guest's umask is applied to the requested mode. The host process umask
//!   (read once at construction) also applies to every create; when it removed bits the guest
//!   asked for, the new file is `chmod`ed to the requested `rwx` bits (through the created
//!   descriptor, or by name only when the caller owns the file found, so a racing rename
//!   cannot turn it against another file). The process umask is left alone: it also governs
//!   files the binary creates (the socket).
//! - **DAX** (`dax.rs`): SETUPMAPPING/REMOVEMAPPING over [`crate::dax::DaxState`] when the
//!   share has a window; Linux's `fh = -1` maps a descriptor opened for the request; mappings
//!   belong to the inode and outlive RELEASE; `FUSE_ATTR_DAX` follows [`DaxPolicy`].
//! - **Sessions**: DESTROY, and a second INIT without one (the guest rebooted or kexec'd on
//!   the same connection), drop every node id but the root, every handle and every DAX
//!   mapping: the new kernel knows none of them.
//! - **Errors** are the host's errno; this module does not log.

mod config;
mod dax;
mod fs_impl;
mod handle;
mod inode;
mod names;
mod ops_attr;
mod ops_dir;
mod ops_entry;
mod ops_file;
mod ops_xattr;
mod perm;
pub(crate) mod sys;
#[cfg(test)]
mod tests;
pub mod xattrmap;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfsdax_protocol::fuse::ROOT_ID;

pub use config::{CachePolicy, DaxPolicy, PassthroughConfig};
pub use dax::{policy_wants_dax, FS_XFLAG_DAX, NO_HANDLE};

use crate::dax::{DaxState, Mapper, TruncationHook};
use crate::filesystem::{Context, Handle};
use handle::HandleTable;
use inode::{InodeData, InodeTable};
use sys::err;

/// Why the passthrough filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The shared directory does not exist.
    #[error("shared directory {} does not exist", path.display())]
    MissingShare {
        /// The configured path.
        path: PathBuf,
    },
    /// The shared directory is not a directory.
    #[error("shared directory {} is not a directory", path.display())]
    NotADirectory {
        /// The configured path.
        path: PathBuf,
    },
    /// The shared directory exists but cannot be opened or examined.
    #[error("cannot open shared directory {}", path.display())]
    OpenShare {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/fd` is needed to reopen files and is not available.
    #[error("cannot open /proc/self/fd (is /proc mounted?)")]
    ProcSelfFd(#[source] io::Error),
}

/// A [`FileSystem`](crate::filesystem::FileSystem) exporting a host directory.
pub struct PassthroughFs {
    cfg: PassthroughConfig,
    inodes: InodeTable,
    handles: HandleTable,
    /// `/proc/self/fd`, opened `O_PATH`: reopens go through it.
    proc_self_fd: File,
    /// The process umask when the filesystem was built.
    host_umask: u32,
    /// Whether the daemon may switch fsuid/fsgid (it runs as root).
    switch_creds: bool,
    /// The INIT flags negotiated with the guest (0 before INIT).
    negotiated: AtomicU64,
    /// INIT was answered and no DESTROY came since.
    initialised: AtomicBool,
    /// The DAX window's live mappings (`dax.rs`), when `cfg.dax_window > 0` (shared with the
    /// truncation guard).
    dax: Option<Arc<DaxState>>,
    /// Told of the guest's truncations before they are carried out (the truncation guard).
    truncation_hook: std::sync::RwLock<Option<Arc<dyn TruncationHook>>>,
    /// Tests: run where a racing guest or host could rename a name just created.
    #[cfg(test)]
    race_hook: std::sync::Mutex<Option<RaceHook>>,
}

/// A test's action at a race window.
#[cfg(test)]
type RaceHook = Box<dyn Fn() + Send>;

impl PassthroughFs {
    /// Opens the shared directory `cfg.root_dir`.
    pub fn new(cfg: PassthroughConfig) -> Result<PassthroughFs, PassthroughError> {
        let proc_self_fd = sys::openat(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(PassthroughError::ProcSelfFd)?;
        Self::with_proc_self_fd(cfg, proc_self_fd)
    }

    /// Opens the shared directory `cfg.root_dir`, reopening files through `proc_self_fd`, a
    /// descriptor of `/proc/self/fd` opened earlier (inside a sandbox `/proc` is not under the
    /// root).
    pub fn with_proc_self_fd(
        cfg: PassthroughConfig,
        proc_self_fd: File,
    ) -> Result<PassthroughFs, PassthroughError> {
        let path = cfg.root_dir.clone();
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PassthroughError::MissingShare { path })
            }
            Err(source) => return Err(PassthroughError::OpenShare { path, source }),
            Ok(m) if !m.is_dir() => return Err(PassthroughError::NotADirectory { path }),
            Ok(_) => {}
        }
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            PassthroughError::OpenShare {
                path: path.clone(),
                source: err(libc::EINVAL),
            }
        })?;
        let open_err = |source| PassthroughError::OpenShare {
            path: path.clone(),
            source,
        };
        // The administrator's path may contain symlinks; only guest names are never followed.
        let root = sys::openat(libc::AT_FDCWD, &cpath, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(open_err)?;
        let root_stat = sys::stat_fd(std::os::fd::AsRawFd::as_raw_fd(&root)).map_err(open_err)?;
        // Unknown umask: assume the strictest, so every create gets its mode checked.
        let host_umask = sys::openat(
            std::os::fd::AsRawFd::as_raw_fd(&proc_self_fd),
            c"../status",
            libc::O_RDONLY,
            0,
        )
        .and_then(std::io::read_to_string)
        .ok()
        .and_then(|s| perm::parse_umask(&s))
        .unwrap_or(0o777);
        let dax =
            (cfg.dax_window > 0).then(|| Arc::new(DaxState::with_linux_chunks(cfg.dax_window)));
        Ok(PassthroughFs {
            cfg,
            inodes: InodeTable::new(root, &root_stat),
            handles: HandleTable::new(),
            proc_self_fd,
            host_umask,
            switch_creds: sys::is_root(),
            negotiated: AtomicU64::new(0),
            initialised: AtomicBool::new(false),
            dax,
            truncation_hook: std::sync::RwLock::new(None),
            #[cfg(test)]
            race_hook: std::sync::Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PassthroughConfig {
        &self.cfg
    }

    /// The open file behind handle `h` and whether it was opened for writing (for DAX
    /// mappings, which must outlive RELEASE).
    pub fn handle_file(&self, h: Handle) -> Option<(Arc<File>, bool)> {
        let d = self.handles.get_any(h).ok()?;
        Some((Arc::clone(&d.file), d.writable()))
    }

    /// How many node ids the guest holds (the root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// How many handles are open.
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    fn inode(&self, id: u64) -> io::Result<Arc<InodeData>> {
        self.inodes.get(id)
    }

    fn timeout(&self) -> Duration {
        self.cfg.cache.timeout()
    }

    /// `EROFS` on a read-only share.
    fn check_writable(&self) -> io::Result<()> {
        if self.cfg.readonly {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Runs the current thread as the caller until the guard drops.
    fn creds(&self, ctx: Context) -> io::Result<sys::FsCredsGuard> {
        sys::FsCredsGuard::new(self.switch_creds, ctx.uid, ctx.gid)
    }

    /// Opens `data` for I/O with host `flags` through `/proc/self/fd`. Only regular files and
    /// directories: a symlink is `ELOOP` (never followed), anything else (devices, FIFOs,
    /// sockets, which a guest kernel handles itself) is `ENXIO`.
    fn reopen(&self, data: &InodeData, flags: i32) -> io::Result<File> {
        if data.is_symlink() {
            return Err(err(libc::ELOOP));
        }
        if !data.is_reg() && !data.is_dir() {
            return Err(err(libc::ENXIO));
        }
        let name = sys::fd_name(data.fd());
        sys::openat(
            std::os::fd::AsRawFd::as_raw_fd(&self.proc_self_fd),
            &name,
            flags & !libc::O_NOFOLLOW,
            0,
        )
    }

    /// Clears set-user-id and group-executable set-group-id on a regular file (a write,
    /// truncation or chown by an unprivileged caller, `HANDLE_KILLPRIV_V2`), and the guest's
    /// file capabilities when `--xattrmap` keeps them under another host name (the host
    /// kernel clears only `security.capability` itself).
    fn kill_privs(&self, data: &InodeData) -> io::Result<()> {
        let st = sys::fstat(data.fd())?;
        if let Some(mode) = perm::mode_without_privs(st.st_mode) {
            self.chmod_inode(data, mode)?;
        }
        self.remove_mapped_capability(data)
    }

    /// `chmod` of the file `data` holds, through `/proc/self/fd` (`EOPNOTSUPP` on a symlink).
    fn chmod_inode(&self, data: &InodeData, mode: u32) -> io::Result<()> {
        sys::fchmodat(
            std::os::fd::AsRawFd::as_raw_fd(&self.proc_self_fd),
            &sys::fd_name(data.fd()),
            mode,
        )
    }

    /// A descriptor of the `/proc/self/fd` directory the filesystem reopens files through
    /// (reachable inside every sandbox), for the truncation guard.
    pub fn proc_self_fd(&self) -> io::Result<File> {
        self.proc_self_fd.try_clone()
    }

    /// Forgets everything a guest kernel held: DAX mappings (unmapped through `mapper`),
    /// handles, node ids but the root (DESTROY, or a second INIT without one).
    fn end_session(&self, mapper: &dyn Mapper) {
        self.dax_destroy(mapper);
        self.handles.clear();
        self.inodes.clear();
    }

    /// Tests: runs `hook` at every race window from now on.
    #[cfg(test)]
    fn set_race_hook(&self, hook: impl Fn() + Send + 'static) {
        *self.race_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    #[cfg(test)]
    fn run_race_hook(&self) {
        if let Some(h) = &*self.race_hook.lock().unwrap_or_else(|e| e.into_inner()) {
            h();
        }
    }

    fn negotiated(&self, flag: u64) -> bool {
        self.negotiated.load(Ordering::Relaxed) & flag != 0
    }

    fn is_root_inode(&self, data: &InodeData) -> bool {
        data.id == ROOT_ID || data.key == self.inodes.root().key
    }
}
