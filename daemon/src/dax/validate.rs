//! Validation of SETUPMAPPING / REMOVEMAPPING, as pure functions, and the errors of DAX
//! requests.

use std::io;

use thiserror::Error;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};

use super::frontend::Decline;

/// Errors of DAX mapping requests.
#[derive(Debug, Error)]
pub enum DaxError {
    /// The daemon has no DAX window (`--cache-size 0`).
    #[error("DAX is not enabled")]
    Disabled,
    /// A zero-length range.
    #[error("zero-length mapping")]
    ZeroLength,
    /// An offset or length not a multiple of the mapping alignment.
    #[error(
        "mapping (file offset {foffset:#x}, window offset {moffset:#x}, length {len:#x}) is not \
         aligned to {alignment:#x}"
    )]
    Unaligned {
        /// File offset (0 for REMOVEMAPPING).
        foffset: u64,
        /// Window offset.
        moffset: u64,
        /// Length.
        len: u64,
        /// The alignment.
        alignment: u64,
    },
    /// An offset plus length that does not fit in 64 bits (or, for files, in `off_t`).
    #[error("offset {offset:#x} plus length {len:#x} overflows")]
    Overflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
    /// A range outside the window.
    #[error("range {moffset:#x}+{len:#x} lies outside the window of size {window_size:#x}")]
    OutOfWindow {
        /// Window offset.
        moffset: u64,
        /// Length.
        len: u64,
        /// Window size.
        window_size: u64,
    },
    /// Flag bits other than `FUSE_SETUPMAPPING_FLAG_READ | _WRITE`.
    #[error("unknown SETUPMAPPING flags {flags:#x}")]
    UnknownFlags {
        /// The flags.
        flags: u64,
    },
    /// A writable mapping of a file that is not open for writing.
    #[error("a writable mapping was asked of a file not open for writing")]
    NotWritable,
    /// The frontend cannot map this range, so it was not asked.
    #[error("the mapping was declined")]
    Declined(#[source] Decline),
    /// The frontend refused or failed the request.
    #[error("the frontend did not carry out the mapping request")]
    Mapper(#[source] io::Error),
}

impl DaxError {
    /// The errno to reply to the guest with.
    pub fn errno(&self) -> i32 {
        match self {
            DaxError::Disabled => libc::ENOSYS,
            DaxError::ZeroLength
            | DaxError::Unaligned { .. }
            | DaxError::Overflow { .. }
            | DaxError::OutOfWindow { .. }
            | DaxError::UnknownFlags { .. } => libc::EINVAL,
            DaxError::NotWritable => libc::EACCES,
            DaxError::Declined(_) => libc::EOPNOTSUPP,
            DaxError::Mapper(e) => match e.raw_os_error() {
                Some(n) if (1..4096).contains(&n) => n,
                _ => libc::EIO,
            },
        }
    }
}

/// The host page size in bytes (the default mapping alignment).
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads a system value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

fn check_window_range(
    window_size: u64,
    alignment: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
) -> Result<(), DaxError> {
    use vfsdax_protocol::dax::{check_range, RangeError};
    check_range(window_size, alignment, moffset, len, foffset).map_err(|e| match e {
        RangeError::NoWindow => DaxError::Disabled,
        RangeError::ZeroLength => DaxError::ZeroLength,
        RangeError::Unaligned => DaxError::Unaligned {
            foffset,
            moffset,
            len,
            alignment,
        },
        RangeError::Overflow => DaxError::Overflow {
            offset: moffset,
            len,
        },
        RangeError::OutOfWindow => DaxError::OutOfWindow {
            moffset,
            len,
            window_size,
        },
    })
}

/// Checks a `FUSE_SETUPMAPPING`: DAX enabled, non-zero length; `foffset`, `moffset` and `len`
/// multiples of `alignment`; `moffset + len` inside the window and `foffset + len` inside `off_t`,
/// without overflow; only the READ and WRITE flags; WRITE only if the file is open for writing.
pub fn validate_setup(
    window_size: u64,
    alignment: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
    flags: u64,
    handle_writable: bool,
) -> Result<(), DaxError> {
    check_window_range(window_size, alignment, foffset, moffset, len)?;
    let file_end = foffset.checked_add(len).ok_or(DaxError::Overflow {
        offset: foffset,
        len,
    })?;
    if file_end > i64::MAX as u64 {
        return Err(DaxError::Overflow {
            offset: foffset,
            len,
        });
    }
    if flags & !(SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE) != 0 {
        return Err(DaxError::UnknownFlags { flags });
    }
    if flags & SETUPMAPPING_FLAG_WRITE != 0 && !handle_writable {
        return Err(DaxError::NotWritable);
    }
    Ok(())
}

/// Checks one `FUSE_REMOVEMAPPING` entry: DAX enabled, non-zero aligned length and offset, inside
/// the window, no overflow.
pub fn validate_remove(
    window_size: u64,
    alignment: u64,
    moffset: u64,
    len: u64,
) -> Result<(), DaxError> {
    check_window_range(window_size, alignment, 0, moffset, len)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
