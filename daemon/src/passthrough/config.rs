//! Configuration of the passthrough filesystem and the pure policy derived from it: cache
//! timeouts, `FOPEN_*` reply flags, INIT capabilities and the host flags of a guest open.

use std::path::PathBuf;
use std::time::Duration;

use vfsdax_protocol::fuse::flags::{fopen, init};

pub use super::xattrmap::XattrMap;
pub use crate::cli::DaxPolicy;

/// How much the guest may cache, as virtiofsd's `--cache`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Short timeouts (1 s); the guest page cache is used and revalidated.
    #[default]
    Auto,
    /// Long timeouts (1 day); cached data and directory contents are kept across opens.
    Always,
    /// No caching: zero timeouts and direct I/O.
    Never,
    /// Metadata is cached (1 s); file data is not (direct I/O).
    Metadata,
}

impl CachePolicy {
    /// How long the guest may cache names and attributes.
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto | CachePolicy::Metadata => Duration::from_secs(1),
            CachePolicy::Always => Duration::from_secs(24 * 60 * 60),
        }
    }

    /// The `FOPEN_*` flags of an OPEN (`dir` = false) or OPENDIR (`dir` = true) reply.
    pub fn open_flags(self, dir: bool) -> u32 {
        match (self, dir) {
            (CachePolicy::Never, false) | (CachePolicy::Metadata, false) => fopen::DIRECT_IO,
            (CachePolicy::Always, false) => fopen::KEEP_CACHE,
            (CachePolicy::Always, true) => fopen::KEEP_CACHE | fopen::CACHE_DIR,
            _ => 0,
        }
    }
}

impl From<crate::cli::CacheMode> for CachePolicy {
    fn from(m: crate::cli::CacheMode) -> CachePolicy {
        match m {
            crate::cli::CacheMode::Auto => CachePolicy::Auto,
            crate::cli::CacheMode::Always => CachePolicy::Always,
            crate::cli::CacheMode::Never => CachePolicy::Never,
            crate::cli::CacheMode::Metadata => CachePolicy::Metadata,
        }
    }
}

/// What the passthrough filesystem exports and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughConfig {
    /// The shared directory on the host.
    pub root_dir: PathBuf,
    /// Guest caching policy.
    pub cache: CachePolicy,
    /// Serve the extended attribute family (otherwise it answers `ENOSYS`).
    pub xattr: bool,
    /// Refuse every mutation with `EROFS`.
    pub readonly: bool,
    /// Mark directories on another host mount with `FUSE_ATTR_SUBMOUNT`.
    pub announce_submounts: bool,
    /// Offer the guest writeback caching.
    pub writeback: bool,
    /// Pass the guest's `O_DIRECT` to the host (otherwise it is dropped).
    pub allow_direct_io: bool,
    /// Size of the DAX window in bytes (`--cache-size`); 0 disables DAX (SETUPMAPPING and
    /// REMOVEMAPPING answer `ENOSYS`, no file is marked `FUSE_ATTR_DAX`).
    pub dax_window: u64,
    /// Which regular files are marked `FUSE_ATTR_DAX` for a guest mounted with `dax=inode`
    /// (only with a DAX window).
    pub dax_policy: DaxPolicy,
    /// Refuse MKNOD of character and block devices (`EPERM`; whiteouts stay allowed). Off by
    /// default, as in virtiofsd: the daemon never opens a device node itself, and a share
    /// mounted `nodev` keeps host users from opening those the guest made.
    pub deny_device_nodes: bool,
    /// Which extended attribute names the guest may use, under which host names
    /// (`--xattrmap`; [`XattrMap::default_policy`] without it).
    pub xattr_map: XattrMap,
    /// Offer `HANDLE_KILLPRIV_V2` (`--killpriv-v2`): the guest then leaves clearing
    /// set-user-id/set-group-id to the daemon (`KILL_SUIDGID` on WRITE, SETATTR, OPEN).
    pub killpriv_v2: bool,
    /// Offer READDIRPLUS (`DO_READDIRPLUS`, `READDIRPLUS_AUTO`).
    pub readdirplus: bool,
    /// Offer `DIRECT_IO_ALLOW_MMAP` (`--allow-mmap`): the guest may map files it opened for
    /// direct I/O (`--cache=never|metadata`) shared.
    pub allow_mmap: bool,
}

impl PassthroughConfig {
    /// A configuration sharing `root_dir` with the defaults of virtiofsd 1.14: cache `auto`,
    /// no xattrs, writable, submounts announced, no writeback, `O_DIRECT` dropped, no
    /// `HANDLE_KILLPRIV_V2`, READDIRPLUS, no `DIRECT_IO_ALLOW_MMAP`; no DAX window (policy
    /// `auto` once there is one).
    pub fn new(root_dir: impl Into<PathBuf>) -> PassthroughConfig {
        PassthroughConfig {
            root_dir: root_dir.into(),
            cache: CachePolicy::Auto,
            xattr: false,
            readonly: false,
            announce_submounts: true,
            writeback: false,
            allow_direct_io: false,
            dax_window: 0,
            dax_policy: DaxPolicy::Auto,
            deny_device_nodes: false,
            xattr_map: XattrMap::default_policy(),
            killpriv_v2: false,
            readdirplus: true,
            allow_mmap: false,
        }
    }

    /// The INIT capabilities this configuration asks for (before intersecting with the
    /// guest's offer).
    pub(crate) fn wanted_init_flags(&self) -> u64 {
        let mut f = init::ASYNC_READ
            | init::PARALLEL_DIROPS
            | init::BIG_WRITES
            | init::AUTO_INVAL_DATA
            | init::ASYNC_DIO
            | init::EXPORT_SUPPORT
            | init::ATOMIC_O_TRUNC
            | init::MAX_PAGES
            | init::INIT_EXT;
        if self.readdirplus {
            f |= init::DO_READDIRPLUS | init::READDIRPLUS_AUTO;
        }
        if self.killpriv_v2 {
            f |= init::HANDLE_KILLPRIV_V2;
        }
        if self.allow_mmap {
            f |= init::DIRECT_IO_ALLOW_MMAP;
        }
        if self.announce_submounts {
            f |= init::SUBMOUNTS;
        }
        if self.writeback && !self.readonly {
            f |= init::WRITEBACK_CACHE;
        }
        if self.xattr {
            f |= init::SETXATTR_EXT;
        }
        f
    }
}

/// Open flags the daemon never passes through from a guest: creation belongs to CREATE,
/// `O_NOFOLLOW` would defeat the `/proc/self/fd` reopen (which only ever sees non-symlinks),
/// and `O_PATH`/`O_TMPFILE`/`O_NOCTTY` make no sense for a reopen.
const STRIPPED: i32 = libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_NOFOLLOW
    | libc::O_PATH
    | (libc::O_TMPFILE & !libc::O_DIRECTORY);

/// The host `open(2)` flags for a guest's OPEN flags: creation flags and `O_NOFOLLOW` dropped,
/// `O_DIRECT` dropped unless allowed, `O_CLOEXEC` added. With writeback caching the guest page
/// cache reads around partial writes and appends itself, so write-only becomes read-write and
/// `O_APPEND` is dropped.
pub(crate) fn host_open_flags(guest: u32, allow_direct_io: bool, writeback: bool) -> i32 {
    let mut f = guest as i32 & !STRIPPED;
    if !allow_direct_io {
        f &= !libc::O_DIRECT;
    }
    if writeback {
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f &= !libc::O_APPEND;
    }
    f | libc::O_CLOEXEC
}

/// Whether open flags can modify the file (write access or truncation).
pub(crate) fn open_writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_per_policy() {
        assert_eq!(CachePolicy::Never.timeout(), Duration::ZERO);
        assert_eq!(CachePolicy::Auto.timeout(), Duration::from_secs(1));
        assert_eq!(CachePolicy::Metadata.timeout(), Duration::from_secs(1));
        assert_eq!(CachePolicy::Always.timeout(), Duration::from_secs(86400));
    }

    #[test]
    fn from_the_command_line_mode() {
        use crate::cli::CacheMode;
        assert_eq!(CachePolicy::from(CacheMode::Auto), CachePolicy::Auto);
        assert_eq!(CachePolicy::from(CacheMode::Always), CachePolicy::Always);
        assert_eq!(CachePolicy::from(CacheMode::Never), CachePolicy::Never);
        assert_eq!(
            CachePolicy::from(CacheMode::Metadata),
            CachePolicy::Metadata
        );
    }

    #[test]
    fn open_reply_flags_per_policy() {
        assert_eq!(CachePolicy::Never.open_flags(false), fopen::DIRECT_IO);
        assert_eq!(CachePolicy::Never.open_flags(true), 0);
        assert_eq!(CachePolicy::Always.open_flags(false), fopen::KEEP_CACHE);
        assert_eq!(
            CachePolicy::Always.open_flags(true),
            fopen::KEEP_CACHE | fopen::CACHE_DIR
        );
        assert_eq!(CachePolicy::Auto.open_flags(false), 0);
        assert_eq!(CachePolicy::Metadata.open_flags(false), fopen::DIRECT_IO);
    }

    #[test]
    fn host_flags_strip_creation_and_nofollow() {
        let g =
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_TRUNC) as u32;
        let h = host_open_flags(g, false, false);
        assert_eq!(h, libc::O_RDWR | libc::O_TRUNC | libc::O_CLOEXEC);
    }

    #[test]
    fn host_flags_direct_io_only_when_allowed() {
        let g = (libc::O_RDONLY | libc::O_DIRECT) as u32;
        assert_eq!(host_open_flags(g, false, false) & libc::O_DIRECT, 0);
        assert_ne!(host_open_flags(g, true, false) & libc::O_DIRECT, 0);
    }

    #[test]
    fn host_flags_writeback_reads_and_drops_append() {
        let g = (libc::O_WRONLY | libc::O_APPEND) as u32;
        let h = host_open_flags(g, false, true);
        assert_eq!(h & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(h & libc::O_APPEND, 0);
        let h = host_open_flags(g, false, false);
        assert_eq!(h & libc::O_ACCMODE, libc::O_WRONLY);
        assert_ne!(h & libc::O_APPEND, 0);
    }

    #[test]
    fn host_flags_strip_tmpfile_but_keep_directory() {
        let h = host_open_flags((libc::O_TMPFILE | libc::O_RDWR) as u32, false, false);
        assert_eq!(h & libc::O_TMPFILE, libc::O_DIRECTORY);
    }

    #[test]
    fn writes_detection() {
        assert!(!open_writes(libc::O_RDONLY));
        assert!(open_writes(libc::O_WRONLY));
        assert!(open_writes(libc::O_RDWR));
        assert!(open_writes(libc::O_RDONLY | libc::O_TRUNC));
    }

    #[test]
    fn init_flags_follow_config() {
        let mut c = PassthroughConfig::new("/x");
        let base = c.wanted_init_flags();
        assert_eq!(base & init::WRITEBACK_CACHE, 0);
        assert_ne!(
            base & init::SUBMOUNTS,
            0,
            "announced by default, as virtiofsd 1.14"
        );
        assert_eq!(
            base & init::HANDLE_KILLPRIV_V2,
            0,
            "off by default, as virtiofsd"
        );
        assert_eq!(base & init::DIRECT_IO_ALLOW_MMAP, 0);
        assert_eq!(base & init::SETXATTR_EXT, 0);
        assert_eq!(base & init::DONT_MASK, 0);
        assert_eq!(base & init::POSIX_ACL, 0);
        assert_ne!(base & init::DO_READDIRPLUS, 0);
        assert_ne!(base & init::READDIRPLUS_AUTO, 0);
        c.writeback = true;
        c.announce_submounts = false;
        c.xattr = true;
        c.killpriv_v2 = true;
        c.allow_mmap = true;
        c.readdirplus = false;
        let f = c.wanted_init_flags();
        assert_ne!(f & init::WRITEBACK_CACHE, 0);
        assert_eq!(f & init::SUBMOUNTS, 0);
        assert_ne!(f & init::SETXATTR_EXT, 0);
        assert_ne!(f & init::HANDLE_KILLPRIV_V2, 0);
        assert_ne!(f & init::DIRECT_IO_ALLOW_MMAP, 0);
        assert_eq!(f & (init::DO_READDIRPLUS | init::READDIRPLUS_AUTO), 0);
        c.readonly = true;
        assert_eq!(c.wanted_init_flags() & init::WRITEBACK_CACHE, 0);
    }
}
