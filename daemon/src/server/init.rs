//! INIT: version and capability negotiation, as a pure function.

use std::io;

use vfsdax_protocol::fuse::{
    self, flags::init as f, InitIn, InitOut, KERNEL_MINOR_VERSION, KERNEL_VERSION,
    MIN_KERNEL_MINOR_VERSION,
};

use super::request::Errno;
use super::ServerOptions;

/// Flags whose meaning lies in the filesystem: offered when the guest offers them and the
/// filesystem's `init` asks for them (and, for the optional ones, the option is on).
pub const FS_FLAGS: u64 = f::ASYNC_READ
    | f::ATOMIC_O_TRUNC
    | f::EXPORT_SUPPORT
    | f::BIG_WRITES
    | f::DONT_MASK
    | f::AUTO_INVAL_DATA
    | f::DO_READDIRPLUS
    | f::READDIRPLUS_AUTO
    | f::ASYNC_DIO
    | f::WRITEBACK_CACHE
    | f::PARALLEL_DIROPS
    | f::HANDLE_KILLPRIV
    | f::POSIX_ACL
    | f::CACHE_SYMLINKS
    | f::EXPLICIT_INVAL_DATA
    | f::SUBMOUNTS
    | f::HANDLE_KILLPRIV_V2
    | f::SETXATTR_EXT
    | f::DIRECT_IO_ALLOW_MMAP;

/// Largest `max_pages` the server announces (the kernel's `FUSE_MAX_MAX_PAGES`).
pub const MAX_MAX_PAGES: u16 = 256;

/// `max_background` the server announces.
const MAX_BACKGROUND: u16 = 64;
/// `congestion_threshold` the server announces (3/4 of `max_background`, as libfuse does).
const CONGESTION_THRESHOLD: u16 = 48;

/// What INIT decided.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// The session starts with these flags; send `reply`.
    Accepted {
        /// The reply.
        reply: InitOut,
        /// The negotiated flags (`flags | flags2 << 32` of the reply).
        flags: u64,
    },
    /// The guest speaks a newer major version: answer with ours only, and it will retry.
    MajorTooNew(InitOut),
}

/// The flags the server's options allow the filesystem to have.
fn option_mask(opts: &ServerOptions) -> u64 {
    let mut mask = FS_FLAGS;
    if !opts.writeback {
        mask &= !f::WRITEBACK_CACHE;
    }
    if !opts.announce_submounts {
        mask &= !f::SUBMOUNTS;
    }
    if !opts.xattr {
        mask &= !(f::SETXATTR_EXT | f::POSIX_ACL);
    }
    mask
}

/// Negotiates INIT: `arg` is the guest's `fuse_init_in` (zero-extended when it sent the 16-byte
/// form), `page_size` the host's page size, `fs_init` the filesystem's `init`, called with the
/// guest's flags that the filesystem may take.
pub fn negotiate(
    arg: &InitIn,
    opts: &ServerOptions,
    page_size: u64,
    fs_init: impl FnOnce(u64) -> io::Result<u64>,
) -> Result<InitOutcome, Errno> {
    if arg.major > KERNEL_VERSION {
        return Ok(InitOutcome::MajorTooNew(InitOut {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            ..Default::default()
        }));
    }
    if arg.major < KERNEL_VERSION || arg.minor < MIN_KERNEL_MINOR_VERSION {
        return Err(libc::EPROTO);
    }
    let mut capable = u64::from(arg.flags);
    if capable & f::INIT_EXT != 0 {
        capable |= u64::from(arg.flags2) << 32;
    }

    let allowed = capable & option_mask(opts);
    // The filesystem also learns how the guest mounted DAX (dax=always offers MAP_ALIGNMENT,
    // dax=inode both), flags the server answers itself.
    let dax_offer = capable & (f::MAP_ALIGNMENT | f::HAS_INODE_DAX);
    let wanted = fs_init(allowed | dax_offer).map_err(|e| super::errno_of(&e))?;
    let mut out_flags = allowed & wanted;

    // Flags the server itself provides.
    let page_size = page_size.max(1);
    let max_write = match opts.max_write {
        0 => super::DEFAULT_MAX_WRITE,
        n => n,
    };
    let pages = u64::from(max_write).div_ceil(page_size);
    let max_pages = pages.clamp(1, u64::from(MAX_MAX_PAGES)) as u16;
    out_flags |= f::MAX_PAGES;
    if opts.dax_window_size > 0 {
        out_flags |= f::MAP_ALIGNMENT;
        if opts.inode_dax {
            out_flags |= f::HAS_INODE_DAX;
        }
    }
    out_flags &= capable;
    let max_pages = if out_flags & f::MAX_PAGES != 0 {
        max_pages
    } else {
        0
    };
    // Every DAX mapping is a whole number of 2 MiB chunks, as Linux maps them.
    let map_alignment = if out_flags & f::MAP_ALIGNMENT != 0 {
        vfsdax_protocol::dax::DAX_CHUNK_SHIFT as u16
    } else {
        0
    };
    if out_flags >> 32 != 0 {
        // The high word only reaches the guest with INIT_EXT, which `capable` has if it got here.
        out_flags |= f::INIT_EXT;
    }

    let reply = InitOut {
        major: KERNEL_VERSION,
        minor: arg.minor.min(KERNEL_MINOR_VERSION),
        max_readahead: arg.max_readahead,
        flags: out_flags as u32,
        max_background: MAX_BACKGROUND,
        congestion_threshold: CONGESTION_THRESHOLD,
        max_write,
        time_gran: 1,
        max_pages,
        map_alignment,
        flags2: (out_flags >> 32) as u32,
        unused: [0; 7],
    };
    Ok(InitOutcome::Accepted {
        reply,
        flags: out_flags,
    })
}

/// Size of the INIT reply: the full `fuse_init_out` (7.23 and newer; we require 7.31).
pub const INIT_OUT_SIZE: usize = std::mem::size_of::<InitOut>();

const _: () = assert!(INIT_OUT_SIZE == 64);
const _: () = assert!(fuse::COMPAT_INIT_IN_SIZE == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ServerOptions {
        ServerOptions {
            dax_window_size: 0,
            max_write: 1 << 20,
            writeback: false,
            announce_submounts: false,
            xattr: false,
            inode_dax: false,
        }
    }

    fn init_in(minor: u32, flags: u64) -> InitIn {
        InitIn {
            major: 7,
            minor,
            max_readahead: 128 * 1024,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        }
    }

    fn accepted(o: Result<InitOutcome, Errno>) -> (InitOut, u64) {
        match o {
            Ok(InitOutcome::Accepted { reply, flags }) => (reply, flags),
            other => panic!("not accepted: {other:?}"),
        }
    }

    const ALL: u64 = u64::MAX >> 27; // every flag up to bit 36

    #[test]
    fn versions() {
        assert_eq!(
            negotiate(&init_in(30, 0), &opts(), 4096, Ok),
            Err(libc::EPROTO)
        );
        let mut old = init_in(31, 0);
        old.major = 6;
        assert_eq!(negotiate(&old, &opts(), 4096, Ok), Err(libc::EPROTO));
        let mut new = init_in(0, 0);
        new.major = 8;
        match negotiate(&new, &opts(), 4096, |_| panic!("fs not asked")) {
            Ok(InitOutcome::MajorTooNew(out)) => assert_eq!((out.major, out.minor), (7, 38)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            accepted(negotiate(&init_in(31, 0), &opts(), 4096, Ok))
                .0
                .minor,
            31
        );
        assert_eq!(
            accepted(negotiate(&init_in(41, 0), &opts(), 4096, Ok))
                .0
                .minor,
            38
        );
    }

    #[test]
    fn only_flags_both_sides_know_and_the_fs_wants() {
        let guest = f::ASYNC_READ | f::POSIX_LOCKS | f::DO_READDIRPLUS | f::WRITEBACK_CACHE;
        let mut seen = 0;
        let (out, flags) = accepted(negotiate(&init_in(38, guest), &opts(), 4096, |c| {
            seen = c;
            Ok(f::ASYNC_READ | f::POSIX_LOCKS | f::WRITEBACK_CACHE)
        }));
        // POSIX_LOCKS is unknown to the server, WRITEBACK_CACHE is off by option,
        // DO_READDIRPLUS is not wanted by the fs.
        assert_eq!(seen, f::ASYNC_READ | f::DO_READDIRPLUS);
        assert_eq!(flags, f::ASYNC_READ);
        assert_eq!(u64::from(out.flags), flags);
        assert_eq!(out.max_pages, 0, "MAX_PAGES not offered by the guest");

        let o = ServerOptions {
            writeback: true,
            announce_submounts: true,
            ..opts()
        };
        let guest = f::WRITEBACK_CACHE | f::SUBMOUNTS | f::MAX_PAGES;
        let (out, flags) = accepted(negotiate(&init_in(38, guest), &o, 4096, Ok));
        assert_eq!(flags, guest);
        assert_eq!(out.max_pages, 256);
        assert_eq!(out.max_write, 1 << 20);
        assert_eq!(out.max_readahead, 128 * 1024);
    }

    #[test]
    fn max_pages_follows_max_write() {
        let o = ServerOptions {
            max_write: 128 * 1024 + 1,
            ..opts()
        };
        let (out, _) = accepted(negotiate(&init_in(38, f::MAX_PAGES), &o, 4096, Ok));
        assert_eq!(out.max_pages, 33);
        let o = ServerOptions {
            max_write: 16 << 20,
            ..opts()
        };
        let (out, _) = accepted(negotiate(&init_in(38, f::MAX_PAGES), &o, 4096, Ok));
        assert_eq!(out.max_pages, MAX_MAX_PAGES);
        let o = ServerOptions {
            max_write: 0,
            ..opts()
        };
        let (out, _) = accepted(negotiate(&init_in(38, f::MAX_PAGES), &o, 4096, Ok));
        assert_eq!(
            (out.max_write, out.max_pages),
            (1 << 20, 256),
            "0 is the default"
        );
    }

    #[test]
    fn the_filesystem_learns_how_the_guest_mounted_dax() {
        for (guest, seen) in [
            (f::MAP_ALIGNMENT, f::MAP_ALIGNMENT),
            (
                f::MAP_ALIGNMENT | f::HAS_INODE_DAX,
                f::MAP_ALIGNMENT | f::HAS_INODE_DAX,
            ),
            (f::ASYNC_READ, 0),
        ] {
            let mut got = None;
            let _ = negotiate(&init_in(38, guest | f::INIT_EXT), &opts(), 4096, |c| {
                got = Some(c);
                Ok(c)
            });
            let got = got.expect("fs_init called");
            assert_eq!(
                got & (f::MAP_ALIGNMENT | f::HAS_INODE_DAX),
                seen,
                "{guest:#x}"
            );
        }
    }

    #[test]
    fn dax_flags_only_with_a_window() {
        // Everything but the one high-word flag the filesystem may take.
        let guest = ALL & !f::DIRECT_IO_ALLOW_MMAP;
        let (out, flags) = accepted(negotiate(&init_in(38, guest), &opts(), 4096, Ok));
        assert_eq!(flags & (f::MAP_ALIGNMENT | f::HAS_INODE_DAX), 0);
        assert_eq!(out.map_alignment, 0);
        assert_eq!(flags & f::INIT_EXT, 0, "nothing in the high word");
        assert_eq!(out.flags2, 0);

        let o = ServerOptions {
            dax_window_size: 1 << 30,
            inode_dax: true,
            ..opts()
        };
        let (out, flags) = accepted(negotiate(&init_in(38, guest), &o, 4096, Ok));
        assert_ne!(flags & f::MAP_ALIGNMENT, 0);
        assert_eq!(out.map_alignment, 21);
        assert_ne!(flags & f::HAS_INODE_DAX, 0);
        assert_ne!(flags & f::INIT_EXT, 0);
        assert_eq!(u64::from(out.flags2) << 32, flags & !0xffff_ffff);
        // Nothing the server does not handle.
        assert_eq!(
            flags & (f::POSIX_LOCKS | f::FLOCK_LOCKS | f::SECURITY_CTX),
            0
        );

        // Without INIT_EXT the guest's flags2 is not read, so HAS_INODE_DAX is not offered.
        let no_ext = init_in(38, ALL & !f::INIT_EXT);
        let (out, flags) = accepted(negotiate(&no_ext, &o, 4096, Ok));
        assert_eq!(flags >> 32, 0);
        assert_eq!(out.flags2, 0);
    }

    #[test]
    fn xattr_flags_follow_the_option() {
        let guest = f::SETXATTR_EXT | f::POSIX_ACL;
        let (_, flags) = accepted(negotiate(&init_in(38, guest), &opts(), 4096, Ok));
        assert_eq!(flags & guest, 0);
        let o = ServerOptions {
            xattr: true,
            ..opts()
        };
        let (_, flags) = accepted(negotiate(&init_in(38, guest), &o, 4096, Ok));
        assert_eq!(flags & guest, guest);
    }

    #[test]
    fn fs_init_error_is_the_reply() {
        let r = negotiate(&init_in(38, 0), &opts(), 4096, |_| {
            Err(io::Error::from_raw_os_error(libc::ENOMEM))
        });
        assert_eq!(r, Err(libc::ENOMEM));
    }
}
