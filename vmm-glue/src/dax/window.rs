//! The DAX window: one reserved range of host virtual memory that backs a virtio shared memory
//! region (the virtio-fs cache) and inside which file ranges are mapped with `MAP_FIXED`.
//!
//! The whole window is reserved once, inaccessible (`PROT_NONE`, `MAP_NORESERVE`), so the VMM can
//! register it as a single KVM memslot. Mapping a file range replaces part of the reservation;
//! unmapping puts an inaccessible placeholder back over it, so the window never has a hole another
//! `mmap` could take. All arguments are checked by pure functions ([`validate_range`],
//! [`validate_map`], [`check_access`]) before any system call.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{mpsc, Arc, Mutex, Weak};

use vmm_sys_util::eventfd::EventFd;

use thiserror::Error;

use super::table::{next_map_id, FileIdentity, Mapping, MappingTable};

/// Errors of the DAX window.
#[derive(Debug, Error)]
pub enum WindowError {
    /// The window size is zero or not a multiple of the host page size.
    #[error("window size {size:#x} is zero or not a multiple of the page size {page_size:#x}")]
    BadSize {
        /// Requested size.
        size: u64,
        /// Host page size.
        page_size: u64,
    },
    /// A request with a zero length.
    #[error("zero-length range")]
    ZeroLength,
    /// An offset or length that is not a multiple of the host page size.
    #[error(
        "range (window offset {window_offset:#x}, file offset {file_offset:#x}, length {len:#x}) \
         is not aligned to the page size {page_size:#x}"
    )]
    Unaligned {
        /// Offset in the window.
        window_offset: u64,
        /// Offset in the file (0 for unmap requests).
        file_offset: u64,
        /// Length.
        len: u64,
        /// Host page size.
        page_size: u64,
    },
    /// An offset plus length that does not fit in 64 bits (or, for files, in `off_t`).
    #[error("offset {offset:#x} plus length {len:#x} overflows")]
    Overflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
    /// A range that does not lie inside the window.
    #[error("range {window_offset:#x}+{len:#x} lies outside the window of size {size:#x}")]
    OutOfWindow {
        /// Offset in the window.
        window_offset: u64,
        /// Length.
        len: u64,
        /// Window size.
        size: u64,
    },
    /// The file descriptor's access mode does not allow the requested mapping.
    #[error("the file was not opened for {}", if *writable { "reading and writing" } else { "reading" })]
    Access {
        /// Whether a writable mapping was requested.
        writable: bool,
    },
    /// The descriptor is not a regular file (nor a memfd): a device such as `/dev/mem` would
    /// give the guest host memory.
    #[error("the descriptor is not a regular file (file type {file_type:#o})")]
    NotRegularFile {
        /// The `S_IFMT` bits of its mode.
        file_type: u32,
    },
    /// Inspecting or duplicating the file descriptor failed.
    #[error("cannot inspect or duplicate the file descriptor")]
    Fd(#[source] io::Error),
    /// Reserving the window failed.
    #[error("cannot reserve {size:#x} bytes of address space for the window")]
    Reserve {
        /// Requested size.
        size: u64,
        /// The `mmap` error.
        #[source]
        source: io::Error,
    },
    /// Mapping a file range (or zero pages) into the window failed; the range is inaccessible.
    #[error("cannot map the range into the window")]
    Map(#[source] io::Error),
    /// Putting the inaccessible placeholder back failed.
    #[error("cannot put the placeholder back over the range")]
    Placeholder(#[source] io::Error),
}

impl WindowError {
    /// The errno to report to a peer for this error.
    pub fn errno(&self) -> i32 {
        match self {
            WindowError::BadSize { .. }
            | WindowError::ZeroLength
            | WindowError::Unaligned { .. }
            | WindowError::Overflow { .. }
            | WindowError::OutOfWindow { .. } => libc::EINVAL,
            WindowError::Access { .. } => libc::EACCES,
            WindowError::NotRegularFile { .. } => libc::EINVAL,
            WindowError::Fd(e)
            | WindowError::Reserve { source: e, .. }
            | WindowError::Map(e)
            | WindowError::Placeholder(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// The identity and file type (`S_IFMT` bits) of `fd`.
fn fd_identity(fd: BorrowedFd<'_>) -> Result<(FileIdentity, u32), WindowError> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `struct stat` into `st`, which is large enough; `fd` is valid
    // for this borrow.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(WindowError::Fd(io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((
        FileIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        st.st_mode & libc::S_IFMT,
    ))
}

/// The host page size in bytes.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads a system value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// The window check both sides share ([`vfsdax_protocol::dax::check_range`]) as a
/// [`WindowError`].
fn checked(
    window_size: u64,
    page_size: u64,
    window_offset: u64,
    len: u64,
    file_offset: u64,
) -> Result<(), WindowError> {
    use vfsdax_protocol::dax::{check_range, RangeError};
    check_range(window_size, page_size, window_offset, len, file_offset).map_err(|e| match e {
        RangeError::ZeroLength => WindowError::ZeroLength,
        RangeError::Unaligned => WindowError::Unaligned {
            window_offset,
            file_offset,
            len,
            page_size,
        },
        RangeError::Overflow => WindowError::Overflow {
            offset: window_offset,
            len,
        },
        RangeError::NoWindow | RangeError::OutOfWindow => WindowError::OutOfWindow {
            window_offset,
            len,
            size: window_size,
        },
    })
}

/// Checks that `[window_offset, window_offset + len)` is a non-empty, page-aligned range inside a
/// window of `window_size` bytes.
pub fn validate_range(
    window_size: u64,
    page_size: u64,
    window_offset: u64,
    len: u64,
) -> Result<(), WindowError> {
    checked(window_size, page_size, window_offset, len, 0)
}

/// Checks a request to map `len` bytes of a file at `file_offset` to `window_offset`: the window
/// range as in [`validate_range`], plus a page-aligned file offset whose end fits in `off_t`.
pub fn validate_map(
    window_size: u64,
    page_size: u64,
    window_offset: u64,
    len: u64,
    file_offset: u64,
) -> Result<(), WindowError> {
    checked(window_size, page_size, window_offset, len, file_offset)?;
    match file_offset.checked_add(len) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(WindowError::Overflow {
            offset: file_offset,
            len,
        }),
    }
}

/// Checks that a file descriptor whose `F_GETFL` access mode is `accmode` (`O_RDONLY`, `O_WRONLY`
/// or `O_RDWR`) can be mapped shared, writable or not: `mmap` needs read access, and write access
/// for a writable shared mapping.
pub fn check_access(accmode: i32, writable: bool) -> Result<(), WindowError> {
    let ok = match accmode & libc::O_ACCMODE {
        libc::O_RDWR => true,
        libc::O_RDONLY => !writable,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(WindowError::Access { writable })
    }
}

/// A reserved DAX window and the table of what is mapped in it.
#[derive(Debug)]
pub struct DaxWindow {
    base: usize,
    size: u64,
    page_size: u64,
    table: Arc<MappingTable>,
    /// Serializes changes so the table always describes the host mappings in the same order.
    change: Mutex<()>,
    /// The one descriptor kept per mapped file, shared by all its mappings: a backend cannot
    /// make the VMM hold a descriptor per mapping.
    files: Mutex<HashMap<FileIdentity, Weak<File>>>,
    /// Where newly kept files are announced ([`DaxWindow::file_feed`]).
    feed: Mutex<Option<FeedSender>>,
}

/// The sending side of a [`FileFeed`].
#[derive(Debug)]
struct FeedSender {
    tx: mpsc::Sender<(FileIdentity, Weak<File>)>,
    wake: EventFd,
}

/// The files a window keeps a descriptor of, as they come ([`DaxWindow::file_feed`]): for a
/// watcher of their sizes.
#[derive(Debug)]
pub struct FileFeed {
    rx: mpsc::Receiver<(FileIdentity, Weak<File>)>,
    wake: EventFd,
}

impl FileFeed {
    /// The files announced since the last call (the same identity again when a descriptor with
    /// more access replaced the kept one).
    pub fn drain(&self) -> Vec<(FileIdentity, Weak<File>)> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

impl AsRawFd for FileFeed {
    /// Readable when files were announced.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.wake.as_raw_fd()
    }
}

impl DaxWindow {
    /// Reserves an inaccessible window of `size` bytes (a non-zero multiple of the page size).
    pub fn new(size: u64) -> Result<Self, WindowError> {
        let page_size = host_page_size();
        let bad = || WindowError::BadSize { size, page_size };
        if size == 0 || !size.is_multiple_of(page_size) {
            return Err(bad());
        }
        let len = usize::try_from(size).map_err(|_| bad())?;
        // SAFETY: a new anonymous mapping at an address the kernel chooses touches no existing
        // memory; the result is checked below and owned by the returned window until Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(WindowError::Reserve {
                size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(DaxWindow {
            base: addr as usize,
            size,
            page_size,
            table: Arc::new(MappingTable::new()),
            change: Mutex::new(()),
            files: Mutex::new(HashMap::new()),
            feed: Mutex::new(None),
        })
    }

    /// Host virtual address of the window's first byte (for the KVM memslot `userspace_addr`).
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    /// Size of the window in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host page size the window's requests must be aligned to.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The live mapping table.
    pub fn table(&self) -> &Arc<MappingTable> {
        &self.table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.change.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the table while no map, unmap or zero-fill can change the window, so what `f`
    /// reads in the table describes the host mappings it may change the protection of (fencing).
    /// `f` must not call the window's changing methods: they wait for the same lock. Lock order:
    /// callers may hold their own locks (the fault handler's fences) when calling this, but no
    /// lock taken inside the window is ever held while taking theirs.
    pub fn with_changes_held<R>(&self, f: impl FnOnce(&MappingTable) -> R) -> R {
        let _guard = self.lock();
        f(&self.table)
    }

    /// Host address of `window_offset`, which [`validate_range`] has accepted.
    fn addr(&self, window_offset: u64) -> *mut libc::c_void {
        // validate_range keeps window_offset + len <= size, and size fits in usize.
        (self.base + window_offset as usize) as *mut libc::c_void
    }

    /// Maps `len` bytes of `file` at `file_offset` shared (`MAP_SHARED | MAP_FIXED`) at
    /// `window_offset`, readable, and writable if `writable`; records it in the table with a
    /// duplicate of the file descriptor. Replaces whatever was mapped in the range.
    ///
    /// Nothing changes when the arguments are refused. If the `mmap` itself fails the range is
    /// left inaccessible and removed from the table.
    pub fn map(
        &self,
        window_offset: u64,
        len: u64,
        file: &File,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), WindowError> {
        self.map_fd(window_offset, len, file.as_fd(), file_offset, writable)
    }

    /// Like [`DaxWindow::map`], for a borrowed file descriptor.
    pub fn map_fd(
        &self,
        window_offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), WindowError> {
        validate_map(self.size, self.page_size, window_offset, len, file_offset)?;
        // SAFETY: F_GETFL only reads the status flags of `fd`, which is valid for this borrow.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(WindowError::Fd(io::Error::last_os_error()));
        }
        check_access(flags, writable)?;
        let (identity, file_type) = fd_identity(fd)?;
        if file_type != libc::S_IFREG {
            return Err(WindowError::NotRegularFile { file_type });
        }
        let file = self.kept_file(identity, fd, flags)?;
        let size_now = file.metadata().map_err(WindowError::Fd)?.len();
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };

        let _guard = self.lock();
        // SAFETY: the target range was validated to lie inside our own reservation, so MAP_FIXED
        // only replaces pages this window owns (placeholder or earlier DAX mappings, which no Rust
        // reference points into); `fd` is valid and file_offset + len fits in off_t.
        let addr = unsafe {
            libc::mmap(
                self.addr(window_offset),
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // The kernel may already have torn down what was there: make the range a
            // placeholder again, and drop it from the table, so both agree.
            self.placeholder(window_offset, len)?;
            self.table.remove(window_offset, len);
            return Err(WindowError::Map(err));
        }
        self.table.insert(Mapping {
            window_offset,
            len,
            file_offset,
            file,
            identity,
            writable,
            map_id: next_map_id(),
            size_seen: Arc::new(std::sync::atomic::AtomicU64::new(size_now)),
        });
        Ok(())
    }

    /// The descriptor kept for the file `identity`: the one already kept, if it allows at least
    /// what `fd` (whose status flags are `flags`) allows, else a duplicate of `fd`, which
    /// replaces it for later mappings.
    fn kept_file(
        &self,
        identity: FileIdentity,
        fd: BorrowedFd<'_>,
        flags: i32,
    ) -> Result<Arc<File>, WindowError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|_, f| f.strong_count() > 0);
        if let Some(kept) = files.get(&identity).and_then(Weak::upgrade) {
            // SAFETY: F_GETFL only reads the status flags of a descriptor the Arc keeps open.
            let kept_flags = unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_GETFL) };
            let rw = |f: i32| f & libc::O_ACCMODE == libc::O_RDWR;
            if kept_flags >= 0 && (rw(kept_flags) || !rw(flags)) {
                return Ok(kept);
            }
        }
        let file = Arc::new(File::from(
            fd.try_clone_to_owned().map_err(WindowError::Fd)?,
        ));
        files.insert(identity, Arc::downgrade(&file));
        if let Some(feed) = &*self.feed.lock().unwrap_or_else(|e| e.into_inner()) {
            if feed.tx.send((identity, Arc::downgrade(&file))).is_ok() {
                let _ = feed.wake.write(1);
            }
        }
        Ok(file)
    }

    /// A feed of the files this window keeps a descriptor of: those kept now, then each new one
    /// as it is mapped. One feed at a time: a new call replaces the previous feed.
    pub fn file_feed(&self) -> io::Result<FileFeed> {
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let (tx, rx) = mpsc::channel();
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (id, f) in files.iter().filter(|(_, f)| f.strong_count() > 0) {
            let _ = tx.send((*id, Weak::clone(f)));
        }
        wake.write(1)?;
        *self.feed.lock().unwrap_or_else(|e| e.into_inner()) = Some(FeedSender {
            tx,
            wake: wake.try_clone()?,
        });
        Ok(FileFeed { rx, wake })
    }

    /// How many distinct file descriptors the window's mappings (and remembered unmapped
    /// ranges) hold.
    pub fn kept_files(&self) -> usize {
        self.table.distinct_files()
    }

    /// Puts the inaccessible placeholder back over `[window_offset, window_offset + len)` and
    /// removes the range from the table. Unmapping a range that is not mapped is not an error.
    pub fn unmap(&self, window_offset: u64, len: u64) -> Result<(), WindowError> {
        validate_range(self.size, self.page_size, window_offset, len)?;
        let _guard = self.lock();
        self.placeholder(window_offset, len)?;
        self.table.remove(window_offset, len);
        Ok(())
    }

    /// Maps private anonymous zero pages (read/write) over the range, leaving the table as it is
    /// (used by the zero-fill fault policy).
    pub fn map_zero(&self, window_offset: u64, len: u64) -> Result<(), WindowError> {
        self.map_zero_then(window_offset, len, |_| ())
    }

    /// Like [`DaxWindow::map_zero`]; once the zero pages are in, runs `f` on the table before the
    /// change lock is released, so `f` sees the entries whose range the zero pages now back (the
    /// fault handler records them). `f` must not call the window's changing methods; the lock
    /// order is that of [`DaxWindow::with_changes_held`].
    pub fn map_zero_then<R>(
        &self,
        window_offset: u64,
        len: u64,
        f: impl FnOnce(&MappingTable) -> R,
    ) -> Result<R, WindowError> {
        validate_range(self.size, self.page_size, window_offset, len)?;
        let _guard = self.lock();
        // SAFETY: the range was validated to lie inside our own reservation; MAP_FIXED replaces
        // only pages this window owns, which no Rust reference points into.
        let addr = unsafe {
            libc::mmap(
                self.addr(window_offset),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            self.placeholder(window_offset, len)?;
            return Err(WindowError::Map(err));
        }
        Ok(f(&self.table))
    }

    /// Replaces a validated range with the inaccessible placeholder.
    fn placeholder(&self, window_offset: u64, len: u64) -> Result<(), WindowError> {
        // SAFETY: the range was validated to lie inside our own reservation; MAP_FIXED replaces
        // only pages this window owns, which no Rust reference points into.
        let addr = unsafe {
            libc::mmap(
                self.addr(window_offset),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(WindowError::Placeholder(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // SAFETY: [base, base + size) is the reservation made in `new` and owned by this window;
        // nothing outside it is touched. A memslot made with `kvm::WindowMemslot` holds the
        // window, so it is gone before this runs; a VMM registering the range itself must
        // remove its slot first.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.size as usize);
        }
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
