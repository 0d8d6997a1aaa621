//! What the truncation guard does to the window: the chunks of a file that lie beyond its new
//! end are cut there (the part still inside the file stays mapped from it, the rest gets a
//! substitute or nothing), so no guest access can reach a page the file no longer has.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vfsdax_protocol::guard::{GuardAction, GuardedRange};

use super::{Cut, DaxState};
use crate::dax::files::FileId;
use crate::dax::validate::{host_page_size, DaxError};
use crate::dax::{FrontendMapping, Mapper};

/// What the guard did to the window for one truncation.
#[derive(Debug, Default)]
pub struct Shrunk {
    /// The chunks cut, in window order.
    pub ranges: Vec<GuardedRange>,
    /// The first failure, if the frontend refused a request (the ranges done before it stay
    /// done; the table matches the frontend).
    pub error: Option<DaxError>,
}

/// A fresh memfd of `len` bytes of zeros that can neither grow nor shrink (a frontend that
/// sizes its mapping from the file sees exactly `len`).
pub fn zero_file(len: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no other preconditions.
    let fd = unsafe {
        libc::memfd_create(
            c"vfsdax-guard-zero".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an integer argument and only changes the memfd's seals.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// How many bytes of a chunk starting at file offset `foffset` stay mapped from a file of
/// `size` bytes: the pages still inside the file, the last partial page included unless the
/// frontend maps only whole ranges inside files (then it goes: the frontend would refuse it).
pub fn kept_bytes(size: u64, foffset: u64, len: u64, page: u64, inside_file: bool) -> u64 {
    let inside = size.saturating_sub(foffset).min(len);
    let page = page.max(1);
    let kept = if inside_file {
        inside / page * page
    } else {
        inside.div_ceil(page) * page
    };
    kept.min(len)
}

impl DaxState {
    /// The file `id` is about to be (or was just) truncated to `new_size`: every live chunk of
    /// it that reaches past `new_size` is cut there. The chunk is unmapped, its part still
    /// inside the file mapped again from the kept descriptor, and with [`GuardAction::Zero`]
    /// the rest mapped from a fresh zero memfd. Chunks already cut at or below the new end are
    /// left alone. Serialized with every other request to the frontend.
    pub fn shrink(
        &self,
        mapper: &dyn Mapper,
        id: FileId,
        new_size: u64,
        action: GuardAction,
    ) -> Shrunk {
        self.shrink_to(mapper, id, || Some(new_size), action).1
    }

    /// [`DaxState::shrink`] to the size `new_size` gives when asked, with the request order
    /// held: a size read from the file (seen changed after the fact) is then never older than
    /// the chunks it is compared with (read before, it could be one the file has since grown
    /// past, and cut a chunk mapped in between). The size used, `None` (nothing cut) if
    /// `new_size` had none.
    pub fn shrink_to(
        &self,
        mapper: &dyn Mapper,
        id: FileId,
        new_size: impl FnOnce() -> Option<u64>,
        action: GuardAction,
    ) -> (Option<u64>, Shrunk) {
        let _order = self.serialize();
        let Some(new_size) = new_size() else {
            return (None, Shrunk::default());
        };
        let inside_file = self.frontend() == FrontendMapping::InsideFileWritable;
        let page = host_page_size();
        let doomed: Vec<_> = self
            .read()
            .values()
            .filter(|m| m.file == id && !m.orphaned && m.foffset + m.len > new_size)
            .copied()
            .collect();
        let mut out = Shrunk::default();
        for m in doomed {
            let kept = kept_bytes(new_size, m.foffset, m.len, page, inside_file);
            let now_kept = m.cut.map_or(m.len, |c| c.kept);
            if now_kept <= kept {
                continue;
            }
            match self.cut_chunk(mapper, m.moffset, kept, action) {
                Ok(()) => out.ranges.push(GuardedRange {
                    window_offset: m.moffset,
                    file_offset: m.foffset,
                    len: m.len,
                    kept,
                }),
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        (Some(new_size), out)
    }

    /// Cuts the chunk at `moffset` after `kept` bytes. Call with the request order held.
    fn cut_chunk(
        &self,
        mapper: &dyn Mapper,
        moffset: u64,
        kept: u64,
        action: GuardAction,
    ) -> Result<(), DaxError> {
        let Some(m) = self.read().get(&moffset).copied() else {
            return Ok(());
        };
        let (file, file_writable) = self
            .files()
            .file(m.file)
            .ok_or_else(|| DaxError::Mapper(io::Error::from_raw_os_error(libc::EBADF)))?;
        for (mo, len) in m.pieces() {
            mapper.unmap(mo, len).map_err(DaxError::Mapper)?;
        }
        // The chunk is now unmapped at the frontend: record that before anything can fail.
        let update = |cut: Cut| {
            if let Some(e) = self.write().get_mut(&moffset) {
                e.cut = Some(cut);
            }
        };
        update(Cut {
            kept: 0,
            substituted: false,
        });
        if kept > 0 {
            let writable = m.window_writable
                && file_writable
                && self.frontend() != FrontendMapping::InsideFileWritable;
            mapper
                .map(moffset, kept, &file, m.foffset, writable)
                .map_err(DaxError::Mapper)?;
            update(Cut {
                kept,
                substituted: false,
            });
        }
        if action == GuardAction::Zero && kept < m.len {
            let zero = zero_file(m.len - kept).map_err(DaxError::Mapper)?;
            mapper
                .map(moffset + kept, m.len - kept, &zero, 0, true)
                .map_err(DaxError::Mapper)?;
            update(Cut {
                kept,
                substituted: true,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;
    const C: u64 = 2 << 20;

    #[test]
    fn kept_bytes_per_frontend() {
        // Truncated below the chunk: nothing kept.
        assert_eq!(kept_bytes(0, 0, C, P, false), 0);
        assert_eq!(kept_bytes(C, 2 * C, C, P, true), 0);
        // Inside the chunk, page aligned: the same for both.
        assert_eq!(kept_bytes(C + 8 * P, C, C, P, false), 8 * P);
        assert_eq!(kept_bytes(C + 8 * P, C, C, P, true), 8 * P);
        // A partial last page: kept for a frontend that maps past the end, not for one that
        // maps only inside files.
        assert_eq!(kept_bytes(C + 8 * P + 10, C, C, P, false), 9 * P);
        assert_eq!(kept_bytes(C + 8 * P + 10, C, C, P, true), 8 * P);
        // Beyond the chunk: all of it (the caller does not cut those).
        assert_eq!(kept_bytes(5 * C, C, C, P, false), C);
    }

    #[test]
    fn zero_file_is_sized_sealed_and_zero() {
        let f = zero_file(3 * P).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3 * P);
        assert!(f.set_len(P).is_err(), "shrink sealed");
        assert!(f.set_len(4 * P).is_err(), "grow sealed");
        let mut buf = vec![1u8; (3 * P) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
