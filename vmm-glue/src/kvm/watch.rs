//! The shrink watcher: fences a file's lost window ranges when the file shrinks, instead of
//! scanning every mapping at every apf ACK and vCPU kick.
//!
//! The window keeps one descriptor per mapped file and announces each new one
//! ([`DaxWindow::file_feed`]). The watcher, a thread of its own, watches each with inotify
//! (`IN_MODIFY`: raised by every write and size change, on every filesystem, without
//! privileges) through its `/proc/self/fd` name. When a file changes it calls
//! [`super::fence::Fences::fence_file`] for it, which reads the size under the window's change lock and fences
//! only what that file lacks now. KVM drops its translations of a fenced range (`mprotect`), so
//! the next guest access exits, also when KVM would otherwise have retried an async page fault on
//! the lost page forever: no vCPU kick is needed. While a watcher runs and watches every mapped
//! file, the fault handlers skip their scans (see [`VmFaultState::is_watched`]); a file that
//! shrank before its watch was added is checked when the watch is added. A file that cannot be
//! watched (the inotify watch limit, for instance) turns the handlers' scans back on until it is
//! watched (retried with every new file) or no longer mapped.
//!
//! What it costs a VM with nothing faulting: one inotify event per write to a mapped file (the
//! guest's writes through FUSE, the host's) and one `fstat` per such event on this thread.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::handler::VmFaultState;
use crate::dax::{DaxWindow, FileFeed, FileIdentity};

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify, the stop event or the file feed could not be created.
    #[error("cannot set up the shrink watcher")]
    Setup(#[source] io::Error),
    /// The thread could not be started.
    #[error("cannot start the shrink watcher thread")]
    Thread(#[source] io::Error),
}

/// What the watcher did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Files watched now.
    pub files: u64,
    /// Change events handled (several per read count once per file).
    pub changes: u64,
    /// Lost ranges fenced.
    pub fenced: u64,
    /// Mapped files not watched now (the inotify watch limit, for instance); while there is
    /// one, the fault handlers scan every mapping at apf ACKs and kicks, as without a watcher.
    pub unwatched: u64,
    /// Fencing failures (`mprotect`).
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    files: AtomicU64,
    changes: AtomicU64,
    fenced: AtomicU64,
    unwatched: AtomicU64,
    failures: AtomicU64,
}

/// A handle that waits until the watcher has handled every change made before the call
/// ([`WatchSync::sync`]): for a VMM (or a test) that changed a file and wants the window to
/// reflect it before the guest runs on.
#[derive(Clone, Debug)]
pub struct WatchSync(Arc<SyncState>);

#[derive(Debug)]
struct SyncState {
    wake: EventFd,
    requested: AtomicU64,
    done: std::sync::Mutex<u64>,
    cv: std::sync::Condvar,
}

impl WatchSync {
    /// Waits up to `timeout` until every change made to a watched file before this call was
    /// handled; whether it was.
    pub fn sync(&self, timeout: std::time::Duration) -> bool {
        let want = self.0.requested.fetch_add(1, Ordering::SeqCst) + 1;
        if self.0.wake.write(1).is_err() {
            return false;
        }
        let done = self.0.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .0
            .cv
            .wait_timeout_while(done, timeout, |d| *d < want)
            .unwrap_or_else(|e| e.into_inner());
        *done >= want
    }
}

/// Adds an inotify watch (first argument) on a file (second); the watch descriptor or -1.
type AddWatch = Box<dyn FnMut(i32, i32) -> i32 + Send>;

/// `inotify_add_watch(IN_MODIFY)` on the file through its `/proc/self/fd` name.
fn add_watch(inotify: i32, fd: i32) -> i32 {
    let path = format!("/proc/self/fd/{fd}\0");
    // SAFETY: `path` is NUL-terminated and alive for the call; the rest are integers.
    unsafe { libc::inotify_add_watch(inotify, path.as_ptr().cast(), libc::IN_MODIFY) }
}

/// The running watcher of one window. Dropping it stops the thread and lets the handlers scan
/// again.
#[derive(Debug)]
pub struct ShrinkWatcher {
    stop: EventFd,
    sync: WatchSync,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    state: Arc<VmFaultState>,
}

impl ShrinkWatcher {
    /// Starts watching the files of `window` for the VM whose handlers share `state`.
    pub fn start(
        state: &Arc<VmFaultState>,
        window: Arc<DaxWindow>,
    ) -> Result<ShrinkWatcher, WatchError> {
        Self::start_with(state, window, Box::new(add_watch))
    }

    /// [`ShrinkWatcher::start`] with the call that adds a watch (tests make it fail).
    fn start_with(
        state: &Arc<VmFaultState>,
        window: Arc<DaxWindow>,
        add_watch: AddWatch,
    ) -> Result<ShrinkWatcher, WatchError> {
        // SAFETY: inotify_init1 takes an integer and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(WatchError::Setup(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by inotify_init1 and is owned by nothing else.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let feed = window.file_feed().map_err(WatchError::Setup)?;
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(WatchError::Setup)?;
        let stop_seen = stop.try_clone().map_err(WatchError::Setup)?;
        let counters = Arc::new(Counters::default());
        let sync = WatchSync(Arc::new(SyncState {
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(WatchError::Setup)?,
            requested: AtomicU64::new(0),
            done: std::sync::Mutex::new(0),
            cv: std::sync::Condvar::new(),
        }));
        let mut w = Watch {
            sync: sync.clone(),
            inotify,
            feed,
            window,
            state: Arc::clone(state),
            counters: Arc::clone(&counters),
            by_wd: HashMap::new(),
            by_file: HashMap::new(),
            unwatched: HashMap::new(),
            add_watch,
        };
        state.set_watched(true);
        let thread = std::thread::Builder::new()
            .name("vfsdax-shrink-watch".into())
            .spawn(move || w.run(&stop_seen))
            .map_err(|e| {
                state.set_watched(false);
                WatchError::Thread(e)
            })?;
        Ok(ShrinkWatcher {
            stop,
            sync,
            thread: Some(thread),
            counters,
            state: Arc::clone(state),
        })
    }

    /// A handle to wait for the watcher to catch up ([`WatchSync::sync`]).
    pub fn syncer(&self) -> WatchSync {
        self.sync.clone()
    }

    /// What it did so far.
    pub fn stats(&self) -> WatchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WatchStats {
            files: get(&c.files),
            changes: get(&c.changes),
            fenced: get(&c.fenced),
            unwatched: get(&c.unwatched),
            failures: get(&c.failures),
        }
    }
}

impl Drop for ShrinkWatcher {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state.set_watched(false);
    }
}

/// The watcher thread's state.
struct Watch {
    sync: WatchSync,
    inotify: OwnedFd,
    feed: FileFeed,
    window: Arc<DaxWindow>,
    state: Arc<VmFaultState>,
    counters: Arc<Counters>,
    by_wd: HashMap<i32, FileIdentity>,
    by_file: HashMap<FileIdentity, (i32, Weak<File>)>,
    /// Mapped files without a watch (adding it failed, or the kernel dropped it).
    unwatched: HashMap<FileIdentity, Weak<File>>,
    add_watch: AddWatch,
}

impl Watch {
    fn run(&mut self, stop: &EventFd) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut fds = [
                stop.as_raw_fd(),
                self.feed.as_raw_fd(),
                self.inotify.as_raw_fd(),
                self.sync.0.wake.as_raw_fd(),
            ]
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: poll reads and writes the four entries of `fds`, a live local array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            if fds[1].revents != 0 {
                self.new_files();
            }
            if fds[2].revents != 0 {
                let _ = self.changes(&mut buf);
            }
            if fds[3].revents != 0 {
                self.catch_up(&mut buf);
            }
        }
    }

    /// Answers [`WatchSync::sync`]: every change queued when the request came is handled.
    fn catch_up(&mut self, buf: &mut [u8]) {
        let _ = self.sync.0.wake.read();
        let asked = self.sync.0.requested.load(Ordering::SeqCst);
        self.new_files();
        while self.changes(buf) {}
        *self.sync.0.done.lock().unwrap_or_else(|e| e.into_inner()) = asked;
        self.sync.0.cv.notify_all();
    }

    /// Watches the files the window started keeping, and tries again those it could not
    /// watch before; each is checked once right away (it may have shrunk before the watch was
    /// there).
    fn new_files(&mut self) {
        self.forget_unmapped();
        let retry: Vec<(FileIdentity, Weak<File>)> = self.unwatched.drain().collect();
        for (id, weak) in retry.into_iter().chain(self.feed.drain()) {
            let Some(file) = weak.upgrade() else { continue };
            let wd = (self.add_watch)(self.inotify.as_raw_fd(), file.as_raw_fd());
            if wd < 0 {
                self.unwatched.insert(id, weak);
            } else {
                // A replaced descriptor of the same file gets the same watch descriptor.
                self.by_wd.insert(wd, id);
                self.by_file.insert(id, (wd, weak));
            }
            self.fence(id);
        }
        self.publish();
    }

    /// Counts the files watched and not, and lets the handlers skip their scans only while
    /// every mapped file is watched.
    fn publish(&self) {
        let c = &self.counters;
        c.files.store(self.by_file.len() as u64, Ordering::Relaxed);
        c.unwatched
            .store(self.unwatched.len() as u64, Ordering::Relaxed);
        self.state.set_watched(self.unwatched.is_empty());
    }

    /// Stops watching files the window no longer maps.
    fn forget_unmapped(&mut self) {
        let gone: Vec<(FileIdentity, i32)> = self
            .by_file
            .iter()
            .filter(|(_, (_, f))| f.strong_count() == 0)
            .map(|(id, (wd, _))| (*id, *wd))
            .collect();
        for (id, wd) in gone {
            // SAFETY: inotify_rm_watch takes two integers.
            unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), wd) };
            self.by_wd.remove(&wd);
            self.by_file.remove(&id);
        }
        self.unwatched.retain(|_, f| f.strong_count() > 0);
    }

    /// Handles one read of change events; whether there were any.
    fn changes(&mut self, buf: &mut [u8]) -> bool {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`, a live mutable slice.
        let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        let mut files: Vec<FileIdentity> = Vec::new();
        for (wd, mask) in vfsdax_protocol::inotify::parse_events(&buf[..n]) {
            if mask & libc::IN_IGNORED != 0 {
                // The kernel dropped the watch; a file still mapped is scanned by the handlers.
                if let Some(id) = self.by_wd.remove(&wd) {
                    if let Some((_, weak)) = self.by_file.remove(&id) {
                        self.unwatched.insert(id, weak);
                    }
                }
            } else if let Some(id) = self.by_wd.get(&wd) {
                if !files.contains(id) {
                    files.push(*id);
                }
            }
        }
        for id in files {
            self.counters.changes.fetch_add(1, Ordering::Relaxed);
            self.fence(id);
        }
        self.forget_unmapped();
        self.publish();
        n > 0
    }

    fn fence(&self, id: FileIdentity) {
        match self.state.fences().fence_file(&self.window, id) {
            Ok(n) => {
                self.counters.fenced.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
