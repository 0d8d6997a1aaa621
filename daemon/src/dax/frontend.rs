//! What the frontend (the VMM) can map into the DAX window, and how a SETUPMAPPING is carried
//! out given that.
//!
//! The vhost-user spec leaves the frontend free in how it maps a `SHMEM_MAP`; the frontends
//! seen so far come in two kinds:
//! - [`FrontendMapping::Any`]: maps any page-aligned range of a regular file or memfd with the
//!   access the `WRITABLE` flag asks for, past the end of the file included (`mmap(2)`
//!   semantics: vfsdax's own `vmm-glue`, crosvm-style frontends);
//! - [`FrontendMapping::InsideFileWritable`]: QEMU 11.1's generic vhost-user device maps every
//!   range `PROT_READ | PROT_WRITE` whatever the flag says (so a descriptor opened read-only is
//!   refused with "Permission denied"), refuses a range that reaches past the end of a
//!   non-empty file ("backing store size ... is too small"), and *extends an empty file* to the
//!   mapping's end. So it can only be given ranges that lie inside the file, through a
//!   descriptor open for writing.
//!
//! [`probe`] tells the two apart at the guest's INIT with one `SHMEM_MAP` that only an `Any`
//! frontend accepts: a 2 MiB read-only mapping of a write-sealed 4 KiB memfd at the window's
//! last chunk (no live mapping is there at INIT), unmapped again right away. A QEMU 11.1 logs
//! one refusal for it on its standard error ("... is too small for 'size' option ...").
//! [`plan`] then decides, per SETUPMAPPING, which descriptor to open and whether to decline.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use thiserror::Error;

use super::Mapper;

/// Errors preparing the frontend probe.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The probe's memfd could not be created, sized or sealed.
    #[error("cannot prepare the probe memfd")]
    Memfd(#[source] io::Error),
}

/// What the frontend can map (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrontendMapping {
    /// Not probed: no INIT since the frontend connected, or no backend request channel. Treated
    /// as [`FrontendMapping::Any`] (only tests map without an INIT).
    #[default]
    Unknown,
    /// Any page-aligned range, read-only or writable as asked, past the end of the file too.
    Any,
    /// Only ranges inside the file, through a descriptor open for writing (QEMU 11.1).
    InsideFileWritable,
}

impl FrontendMapping {
    /// A short description for log lines.
    pub fn describe(self) -> &'static str {
        match self {
            FrontendMapping::Unknown => "not probed",
            FrontendMapping::Any => "any file range, read-only or writable as asked",
            FrontendMapping::InsideFileWritable => {
                "only ranges inside a file, through a writable descriptor (as QEMU 11.1's \
                 generic vhost-user device)"
            }
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            FrontendMapping::Unknown => 0,
            FrontendMapping::Any => 1,
            FrontendMapping::InsideFileWritable => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> FrontendMapping {
        match v {
            1 => FrontendMapping::Any,
            2 => FrontendMapping::InsideFileWritable,
            _ => FrontendMapping::Unknown,
        }
    }
}

/// Why a mapping the frontend cannot carry out is declined before it is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Decline {
    /// The frontend needs a writable descriptor and the guest may not write the file.
    #[error(
        "the frontend maps only through writable descriptors and the guest may not write the file"
    )]
    NotWritable,
    /// The file cannot be guarded against truncation before it happens, and the guard is
    /// required (`--truncate-guard required`).
    #[error("the file cannot be guarded against truncation before it happens (a filesystem without fanotify pre-content events)")]
    Unguarded,
    /// The range reaches past the end of the file and the frontend refuses that (or, for an
    /// empty file, would extend the file).
    #[error("the range ends at {end:#x}, past the end of the file ({size:#x} bytes), which the frontend cannot map")]
    PastEndOfFile {
        /// The file's size.
        size: u64,
        /// `foffset + len` of the request.
        end: u64,
    },
}

/// How one SETUPMAPPING is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Open the file read-write (otherwise read-only).
    pub open_writable: bool,
    /// Ask the frontend for a writable mapping (`SHMEM_MAP` flag `WRITABLE`).
    pub map_writable: bool,
    /// Whether the frontend's mapping will accept stores (what a later upgrade to a writable
    /// mapping of the same range can reuse without remapping).
    pub window_writable: bool,
    /// The frontend maps only ranges inside the file: the size is checked again just before
    /// the mapping is sent.
    pub inside_file: bool,
}

/// Decides how to map `[foffset, foffset + len)` of a regular file for a guest that asked for a
/// writable mapping (`want_write`), given what the frontend can map, whether the guest may write
/// the file (its credentials and the share) and, for [`FrontendMapping::InsideFileWritable`],
/// the file's current size. A writable request the guest may not make is the caller's to refuse
/// first (`EACCES`/`EROFS`); this only declines what the frontend cannot do.
pub fn plan(
    frontend: FrontendMapping,
    want_write: bool,
    may_write: bool,
    size: impl FnOnce() -> io::Result<u64>,
    foffset: u64,
    len: u64,
) -> io::Result<Result<Plan, Decline>> {
    Ok(match frontend {
        FrontendMapping::Unknown | FrontendMapping::Any => Ok(Plan {
            open_writable: want_write,
            map_writable: want_write,
            window_writable: want_write,
            inside_file: false,
        }),
        FrontendMapping::InsideFileWritable => {
            if !may_write {
                return Ok(Err(Decline::NotWritable));
            }
            let size = size()?;
            let end = foffset.saturating_add(len);
            if size < end {
                Err(Decline::PastEndOfFile { size, end })
            } else {
                Ok(Plan {
                    open_writable: true,
                    map_writable: want_write,
                    window_writable: true,
                    inside_file: true,
                })
            }
        }
    })
}

/// Whether a whole regular file of `size` bytes can be mapped chunk by chunk (`chunk` bytes)
/// by the frontend, for a guest that `may_write` it: what `FUSE_ATTR_DAX` may promise.
pub fn file_mappable(frontend: FrontendMapping, size: u64, chunk: u64, may_write: bool) -> bool {
    match frontend {
        FrontendMapping::Unknown | FrontendMapping::Any => true,
        FrontendMapping::InsideFileWritable => {
            may_write && size > 0 && chunk > 0 && size.is_multiple_of(chunk)
        }
    }
}

/// Size of the probe memfd: smaller than the probe mapping, so only a frontend that maps past
/// the end of a file accepts it.
const PROBE_FILE_SIZE: u64 = 4096;

/// A write-sealed memfd of [`PROBE_FILE_SIZE`] bytes: a writable shared mapping of it fails
/// (`F_SEAL_WRITE`), and it can neither grow nor shrink (a frontend that tries to extend it
/// fails instead of changing anything).
pub fn probe_file() -> Result<File, ProbeError> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no other preconditions.
    let fd = unsafe {
        libc::memfd_create(
            c"vfsdax-probe".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(ProbeError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(PROBE_FILE_SIZE).map_err(ProbeError::Memfd)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an integer argument and only changes the memfd's seals.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(ProbeError::Memfd(io::Error::last_os_error()));
    }
    Ok(file)
}

/// What [`probe`] found, with the frontend's answer for the log.
#[derive(Debug)]
pub struct ProbeOutcome {
    /// The frontend's kind.
    pub frontend: FrontendMapping,
    /// The frontend's refusal of the probe mapping, if it refused.
    pub refusal: Option<io::Error>,
}

/// Asks the frontend to map a `chunk`-byte read-only range of [`probe_file`] at `moffset` (a
/// free range of the window) and unmaps it again: [`FrontendMapping::Any`] if it accepts,
/// [`FrontendMapping::InsideFileWritable`] if it refuses.
pub fn probe(mapper: &dyn Mapper, moffset: u64, chunk: u64) -> Result<ProbeOutcome, ProbeError> {
    let file = probe_file()?;
    Ok(match mapper.map(moffset, chunk, &file, 0, false) {
        Ok(()) => {
            // The range is free again for the guest either way; a failed unmap here would show
            // up as a refused SETUPMAPPING of that chunk, which the guest survives.
            let refusal = mapper.unmap(moffset, chunk).err();
            ProbeOutcome {
                frontend: FrontendMapping::Any,
                refusal,
            }
        }
        Err(e) => ProbeOutcome {
            frontend: FrontendMapping::InsideFileWritable,
            refusal: Some(e),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    fn size_of(n: u64) -> impl FnOnce() -> io::Result<u64> {
        move || Ok(n)
    }

    fn never_asked() -> impl FnOnce() -> io::Result<u64> {
        || panic!("the size is only read for a frontend that maps inside files")
    }

    #[test]
    fn any_frontend_maps_as_asked() {
        for (want, may) in [(false, false), (false, true), (true, true)] {
            let p = plan(FrontendMapping::Any, want, may, never_asked(), 0, MB2)
                .unwrap()
                .unwrap();
            assert_eq!(
                p,
                Plan {
                    open_writable: want,
                    map_writable: want,
                    window_writable: want,
                    inside_file: false,
                }
            );
        }
        let p = plan(FrontendMapping::Unknown, false, true, never_asked(), 0, MB2)
            .unwrap()
            .unwrap();
        assert!(!p.open_writable);
    }

    #[test]
    fn inside_file_frontend_gets_writable_descriptors_for_ranges_inside_the_file() {
        let f = FrontendMapping::InsideFileWritable;
        let p = plan(f, false, true, size_of(4 * MB2), 2 * MB2, MB2)
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            Plan {
                open_writable: true,
                map_writable: false,
                window_writable: true,
                inside_file: true,
            }
        );
        let p = plan(f, true, true, size_of(MB2), 0, MB2).unwrap().unwrap();
        assert!(p.open_writable && p.map_writable && p.window_writable);
    }

    #[test]
    fn inside_file_frontend_declines_what_it_cannot_map() {
        let f = FrontendMapping::InsideFileWritable;
        assert_eq!(
            plan(f, false, false, never_asked(), 0, MB2).unwrap(),
            Err(Decline::NotWritable)
        );
        for (size, fo) in [(0, 0), (17, 0), (MB2 - 1, 0), (3 * MB2 - 1, 2 * MB2)] {
            assert_eq!(
                plan(f, false, true, size_of(size), fo, MB2).unwrap(),
                Err(Decline::PastEndOfFile {
                    size,
                    end: fo + MB2
                }),
                "size {size:#x} offset {fo:#x}"
            );
        }
        let e = plan(
            f,
            false,
            true,
            || Err(io::Error::from_raw_os_error(5)),
            0,
            MB2,
        );
        assert_eq!(e.unwrap_err().raw_os_error(), Some(5));
    }

    #[test]
    fn whole_file_mappability() {
        assert!(file_mappable(FrontendMapping::Any, 17, MB2, false));
        assert!(file_mappable(FrontendMapping::Unknown, 0, MB2, false));
        let f = FrontendMapping::InsideFileWritable;
        assert!(file_mappable(f, MB2, MB2, true));
        assert!(file_mappable(f, 3 * MB2, MB2, true));
        assert!(!file_mappable(f, 3 * MB2, MB2, false));
        assert!(!file_mappable(f, 0, MB2, true));
        assert!(!file_mappable(f, MB2 + 4096, MB2, true));
    }

    #[test]
    fn kind_round_trips_through_u8() {
        for k in [
            FrontendMapping::Unknown,
            FrontendMapping::Any,
            FrontendMapping::InsideFileWritable,
        ] {
            assert_eq!(FrontendMapping::from_u8(k.to_u8()), k);
        }
        assert_eq!(FrontendMapping::from_u8(77), FrontendMapping::Unknown);
    }

    #[test]
    fn probe_file_refuses_writable_shared_mappings_and_resizing() {
        let f = probe_file().expect("memfd");
        assert_eq!(f.metadata().unwrap().len(), PROBE_FILE_SIZE);
        assert!(f.set_len(2 * PROBE_FILE_SIZE).is_err(), "grow sealed");
        // SAFETY: a fresh shared mapping of the memfd at a kernel-chosen address; only the
        // result is looked at and a successful mapping is unmapped at once.
        let w = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_eq!(
            w,
            libc::MAP_FAILED,
            "writable shared mapping of a write-sealed memfd"
        );
        // SAFETY: as above, read-only.
        let r = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MB2 as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(r, libc::MAP_FAILED, "read-only mapping past the end");
        // SAFETY: `r` is the mapping made just above, of that length.
        unsafe { libc::munmap(r, MB2 as usize) };
    }

    struct Fake {
        refuse: bool,
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl Mapper for Fake {
        fn map(&self, mo: u64, len: u64, f: &File, fo: u64, w: bool) -> io::Result<()> {
            let size = f.metadata()?.len();
            self.calls
                .lock()
                .unwrap()
                .push(format!("map {mo:#x} {len:#x} {fo} {w} size {size}"));
            if self.refuse {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }
        fn unmap(&self, mo: u64, len: u64) -> io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unmap {mo:#x} {len:#x}"));
            Ok(())
        }
    }

    #[test]
    fn probe_tells_the_kinds_apart_and_leaves_nothing_mapped() {
        let any = Fake {
            refuse: false,
            calls: Default::default(),
        };
        let out = probe(&any, 14 * MB2, MB2).unwrap();
        assert_eq!(out.frontend, FrontendMapping::Any);
        assert!(out.refusal.is_none());
        assert_eq!(
            *any.calls.lock().unwrap(),
            vec![
                format!("map {:#x} {MB2:#x} 0 false size 4096", 14 * MB2),
                format!("unmap {:#x} {MB2:#x}", 14 * MB2)
            ]
        );
        let strict = Fake {
            refuse: true,
            calls: Default::default(),
        };
        let out = probe(&strict, 0, MB2).unwrap();
        assert_eq!(out.frontend, FrontendMapping::InsideFileWritable);
        assert_eq!(out.refusal.unwrap().raw_os_error(), Some(libc::EIO));
        assert_eq!(strict.calls.lock().unwrap().len(), 1, "nothing to unmap");
    }
}
