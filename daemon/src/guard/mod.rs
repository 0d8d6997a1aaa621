//! The truncation guard: keeps the VMM alive when a file behind a live DAX mapping shrinks,
//! whatever the VMM. Before a truncation takes effect (or as soon as the kernel allows after),
//! the window chunks that would reach past the file's new end are cut there
//! ([`DaxState::shrink`]): the part still inside the file stays mapped from it, the rest gets
//! zero pages from a fresh memfd ([`GuardAction::Zero`]) or nothing ([`GuardAction::Unmap`]),
//! through `SHMEM_UNMAP`/`SHMEM_MAP`. Then the truncation goes on, and one [`GuardReport`]
//! says what happened.
//!
//! How the guard learns of a truncation, per file (see [`fanotify`]):
//! - a fanotify group of the pre-content class marks the file with `FAN_PRE_ACCESS`, which the
//!   kernel raises before `truncate(2)` and `ftruncate(2)` change the size (range
//!   `(new size, 0)`), holding the truncating process until the guard answers; and with
//!   `FAN_OPEN_PERM`, raised before every open, where an opener's `O_TRUNC` is read from
//!   `/proc/<pid>/syscall` ([`caller`]) when the opener is visible in the daemon's PID
//!   namespace. A truncation to a size that is not page aligned is reported as the page around
//!   the new end, like a one-page write: the caller's call and its length are read the same way
//!   (so only a visible caller's unaligned truncation is caught before; the others after).
//!   Filesystems without pre-content events (tmpfs) refuse the first mark;
//! - an inotify watch ([`inotify`]) raises `IN_MODIFY` after every write or size change: the
//!   size is checked then, and a shrink the kernel did not announce before is handled after the
//!   fact (a short window in which the guest can touch a lost page);
//! - the guest's own truncations through FUSE reach the guard first ([`TruncationHook`]).
//!
//! Two threads: the listener answers every permission event at once (reads, writes and mmaps
//! of marked files by any process, the VMM included, must never wait behind a truncation the
//! guard is handling) and hands truncations to the worker, which changes the window (the
//! truncating process waits for that answer) and reports. The guard never refuses an access.

pub mod caller;
pub mod decide;
pub mod fanotify;
pub mod inotify;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use vfsdax_protocol::guard::{GuardAction, GuardReport, GuardTrigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dax::{DaxState, FileId, FileWatch, Guarding, Mapper, Shrunk, TruncationHook};
use caller::OpenIntent;
use decide::{truncation_of, NewSize};
use fanotify::{Event, Group, FAN_OPEN_PERM, FAN_PRE_ACCESS};
use inotify::Inotify;
use relay::{RelayLink, RelayServer};

/// Errors starting the guard.
#[derive(Debug, Error)]
pub enum GuardError {
    /// The stop event could not be created.
    #[error("cannot create the guard's stop event")]
    StopEvent(#[source] io::Error),
    /// A thread could not be started.
    #[error("cannot start the guard's threads")]
    Thread(#[source] io::Error),
}

/// Whether and how strictly the guard runs (`--truncate-guard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    /// No guard: a truncation under a live mapping reaches the VMM as it is.
    Off,
    /// Guard every mapped file as well as the kernel allows (before the fact where it can,
    /// after the fact elsewhere); files that cannot be guarded at all are logged once.
    On,
    /// As `On`, and a file that cannot be guarded before a truncation is not mapped (the
    /// SETUPMAPPING is declined: the guest uses no page the guard cannot protect).
    Required,
}

/// What the guard tells the daemon (which logs it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardEvent {
    /// The guard acted on a truncation.
    Report(GuardReport),
    /// A mapped file the guard can only protect after the fact, or not at all.
    Unguarded {
        /// The file.
        file: FileId,
        /// Its path as the daemon names it, if known.
        path: Option<String>,
        /// How it is guarded.
        guarding: Guarding,
        /// Why not better.
        reason: String,
    },
    /// The frontend refused a request while the guard cut a chunk.
    Failed {
        /// The file.
        file: FileId,
        /// What failed.
        error: String,
    },
}

/// Where [`GuardEvent`]s go.
pub type EventSink = Box<dyn Fn(GuardEvent) + Send + Sync>;

/// Counters of what the guard did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Truncations handled before they took effect (pre-content, open, guest).
    pub before: u64,
    /// Shrinks handled after the fact.
    pub after: u64,
    /// Window chunks cut.
    pub chunks_cut: u64,
    /// Frontend failures while cutting.
    pub failures: u64,
    /// Mapped files that could not be guarded before a truncation.
    pub unguarded_files: u64,
    /// Permission events answered (every access to a marked file by any process).
    pub events: u64,
}

#[derive(Default)]
struct Counters {
    before: AtomicU64,
    after: AtomicU64,
    chunks_cut: AtomicU64,
    failures: AtomicU64,
    unguarded_files: AtomicU64,
    events: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the worker is told of.
enum Source {
    /// A fanotify permission event (answered once the window is safe).
    Permission(Event),
    /// A truncation the supervisor read (answered through the relay once the window is safe).
    Relayed {
        /// The supervisor's name for it.
        token: u64,
        /// The file.
        file: FileId,
        /// The truncating thread (host numbering).
        pid: i32,
    },
    /// An inotify modification of the file (after the fact).
    Modified(FileId),
}

/// A truncation for the worker: where it was learnt, the new size, how, when.
struct Work {
    source: Source,
    new_size: NewSize,
    trigger: GuardTrigger,
    at: Instant,
}

struct Shared {
    /// `/proc/self/fd`, reachable inside the sandbox (paths, callers, inotify watches).
    proc_self_fd: Option<File>,
    pre: Option<Group>,
    ino: Option<Inotify>,
    /// Under `--sandbox namespace`, the supervisor reads `pre` and relays truncations here.
    link: Option<RelayLink>,
    /// Inotify watch descriptors of the watched files, both ways.
    wds: Mutex<(HashMap<i32, FileId>, HashMap<FileId, i32>)>,
    dax: Arc<DaxState>,
    mapper: Arc<dyn Mapper>,
    action: GuardAction,
    own_pid: i32,
    page: u64,
    sink: EventSink,
    counters: Counters,
    told_unguarded: Mutex<HashSet<FileId>>,
}

/// The running guard. Dropping it stops its threads.
pub struct TruncationGuard {
    shared: Arc<Shared>,
    stop: EventFd,
    listener: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
    setup_errors: Vec<String>,
}

impl std::fmt::Debug for TruncationGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TruncationGuard")
            .field("pre_content", &self.shared.pre.is_some())
            .field("inotify", &self.shared.ino.is_some())
            .finish_non_exhaustive()
    }
}

/// A second descriptor of an event's file, to keep past the event (`None` if dup fails).
fn clone_or_nothing(f: &File) -> Option<File> {
    f.try_clone().ok()
}

/// The path of `file` as the daemon names it: its `/proc/self/fd` link, read through
/// `proc_self_fd` when given (reachable inside the sandbox).
fn path_of(proc_self_fd: Option<&File>, file: &File) -> Option<String> {
    let n = file.as_raw_fd();
    let link = match proc_self_fd {
        Some(dir) => {
            let name = std::ffi::CString::new(n.to_string()).ok()?;
            let mut buf = vec![0u8; 4096];
            // SAFETY: readlinkat writes at most `buf.len()` bytes into `buf`; `name` is
            // NUL-terminated; `dir` is an open directory descriptor.
            let len = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if len < 0 {
                return None;
            }
            buf.truncate(len as usize);
            String::from_utf8_lossy(&buf).into_owned()
        }
        None => std::fs::read_link(format!("/proc/self/fd/{n}"))
            .ok()?
            .to_string_lossy()
            .into_owned(),
    };
    Some(link)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The kernel objects the guard listens on, made before the daemon drops `CAP_SYS_ADMIN`
/// (which the pre-content fanotify group needs) and enters its sandbox.
#[derive(Debug)]
pub struct GuardSetup {
    pre: Option<Group>,
    ino: Option<Inotify>,
    link: Option<RelayLink>,
    errors: Vec<String>,
}

impl GuardSetup {
    /// Creates the fanotify pre-content group and the inotify instance. One that cannot be
    /// created leaves the guard weaker, not absent ([`TruncationGuard::setup_errors`]).
    pub fn open() -> GuardSetup {
        let mut errors = Vec::new();
        let pre = Group::pre_content()
            .map_err(|e| errors.push(format!("fanotify pre-content group: {e}")))
            .ok();
        let ino = Inotify::new()
            .map_err(|e| errors.push(format!("inotify: {e}")))
            .ok();
        GuardSetup {
            pre,
            ino,
            link: None,
            errors,
        }
    }

    /// Has the pre-content group's events read by another process, the supervisor of
    /// `--sandbox namespace` (which sees the truncating processes the daemon's PID namespace
    /// hides): the [`RelayServer`] it is to serve, `None` without a group.
    pub fn relay(&mut self) -> io::Result<Option<RelayServer>> {
        let Some(group) = &self.pre else {
            return Ok(None);
        };
        let (link, server) = relay::pair(group)?;
        self.link = Some(link);
        Ok(Some(server))
    }
}

impl TruncationGuard {
    /// Starts guarding, with `setup`, the files behind `dax`'s live mappings, changing the
    /// window through `mapper`, with `action` as the substitute; `required` declines mappings
    /// of files that cannot be guarded before a truncation. `proc_self_fd` is a descriptor of
    /// `/proc/self/fd` reachable inside the sandbox (without it, `/proc` is used by path).
    pub fn start(
        setup: GuardSetup,
        dax: Arc<DaxState>,
        mapper: Arc<dyn Mapper>,
        action: GuardAction,
        required: bool,
        proc_self_fd: Option<File>,
        sink: EventSink,
    ) -> Result<TruncationGuard, GuardError> {
        let GuardSetup {
            pre,
            ino,
            link,
            errors: setup_errors,
        } = setup;
        let shared = Arc::new(Shared {
            proc_self_fd,
            pre,
            ino,
            link,
            wds: Mutex::new((HashMap::new(), HashMap::new())),
            dax: Arc::clone(&dax),
            mapper,
            action,
            own_pid: std::process::id() as i32,
            page: crate::dax::host_page_size(),
            sink,
            counters: Counters::default(),
            told_unguarded: Mutex::new(HashSet::new()),
        });
        let stop = EventFd::new(EFD_NONBLOCK).map_err(GuardError::StopEvent)?;
        let stop_listener = stop.try_clone().map_err(GuardError::StopEvent)?;
        let (tx, rx) = mpsc::channel::<Work>();
        let s = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("vfsdax-guard-worker".into())
            .spawn(move || s.work(rx))
            .map_err(GuardError::Thread)?;
        let s = Arc::clone(&shared);
        let listener = std::thread::Builder::new()
            .name("vfsdax-guard".into())
            .spawn(move || s.listen(&stop_listener, tx))
            .map_err(GuardError::Thread)?;
        dax.set_watch(Arc::clone(&shared) as Arc<dyn FileWatch>, required);
        Ok(TruncationGuard {
            shared,
            stop,
            listener: Some(listener),
            worker: Some(worker),
            setup_errors,
        })
    }

    /// What could not be set up (the guard then works with less).
    pub fn setup_errors(&self) -> &[String] {
        &self.setup_errors
    }

    /// Whether truncations can be learnt of before they take effect (the pre-content group
    /// exists; each file's filesystem must still accept the mark).
    pub fn can_guard_before(&self) -> bool {
        self.shared.pre.is_some()
    }

    /// The hook for the guest's own truncations.
    pub fn hook(&self) -> Arc<dyn TruncationHook> {
        Arc::clone(&self.shared) as Arc<dyn TruncationHook>
    }

    /// The counters so far.
    pub fn stats(&self) -> GuardStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuardStats {
            before: get(&c.before),
            after: get(&c.after),
            chunks_cut: get(&c.chunks_cut),
            failures: get(&c.failures),
            unguarded_files: get(&c.unguarded_files),
            events: get(&c.events),
        }
    }
}

impl Drop for TruncationGuard {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
        if let Some(t) = self.worker.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// The listener: answers at once what needs no change of the window, hands the rest to the
    /// worker.
    fn listen(&self, stop: &EventFd, tx: Sender<Work>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pollfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(pollfd(stop.as_raw_fd()));
        // The group's events, or (relayed) the truncations the supervisor found among them.
        let events_fd = match (&self.link, &self.pre) {
            (Some(link), _) => link.as_raw_fd(),
            (None, Some(g)) => g.as_raw_fd(),
            (None, None) => -1,
        };
        fds.push(pollfd(events_fd));
        fds.push(pollfd(self.ino.as_ref().map_or(-1, |i| i.as_raw_fd())));
        loop {
            for p in &mut fds {
                p.revents = 0;
            }
            // SAFETY: poll reads and writes the `fds.len()` entries of `fds`, a live vector;
            // entries with a negative descriptor are ignored.
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
                if let Some(link) = &self.link {
                    for req in link.recv() {
                        let work = Work {
                            source: Source::Relayed {
                                token: req.token,
                                file: req.file,
                                pid: req.pid,
                            },
                            new_size: req.new_size,
                            trigger: req.trigger,
                            at: Instant::now(),
                        };
                        if let Err(mpsc::SendError(w)) = tx.send(work) {
                            self.answer_work(&w.source);
                        }
                    }
                } else if let Some(g) = &self.pre {
                    if let Ok(events) = g.read(&mut buf) {
                        for ev in events {
                            self.dispatch(ev, &tx);
                        }
                    }
                }
            }
            if fds[2].revents != 0 {
                if let Some(ino) = &self.ino {
                    if let Ok(events) = ino.read(&mut buf) {
                        self.modified(&events, &tx);
                    }
                }
            }
        }
    }

    /// Inotify modifications: each watched file's size is checked by the worker (once per
    /// read, however many writes it reports).
    fn modified(&self, events: &[(i32, u32)], tx: &Sender<Work>) {
        let ids: HashSet<FileId> = {
            let wds = self.wds.lock().unwrap_or_else(|e| e.into_inner());
            events
                .iter()
                .filter(|(_, mask)| mask & libc::IN_MODIFY != 0)
                .filter_map(|(wd, _)| wds.0.get(wd).copied())
                .collect()
        };
        for id in ids {
            let _ = tx.send(Work {
                source: Source::Modified(id),
                new_size: NewSize::Current,
                trigger: GuardTrigger::AfterTheFact,
                at: Instant::now(),
            });
        }
    }

    fn dispatch(&self, event: Event, tx: &Sender<Work>) {
        let raw = event.raw;
        let at = Instant::now();
        bump(&self.counters.events, 1);
        let truncation = truncation_of(&raw, self.page, || self.intent(raw.pid));
        match truncation {
            Some((new_size, trigger)) if event.file.is_some() => {
                let work = Work {
                    source: Source::Permission(event),
                    new_size,
                    trigger,
                    at,
                };
                if let Err(mpsc::SendError(w)) = tx.send(work) {
                    self.answer_work(&w.source);
                }
            }
            _ => self.answer(&event),
        }
    }

    /// What process `pid` is doing (not the daemon's own calls: those are guarded where they
    /// are made).
    fn intent(&self, pid: i32) -> OpenIntent {
        if self.own_threads(pid) {
            return OpenIntent::Unknown;
        }
        caller::intent_of_pid(self.proc_self_fd.as_ref(), pid)
    }

    /// Whether thread `tid` belongs to the daemon.
    fn own_threads(&self, tid: i32) -> bool {
        tid == self.own_pid
            || caller::tgid_of(self.proc_self_fd.as_ref(), tid) == Some(self.own_pid)
    }

    /// Lets the truncation behind `source` go on (nothing to do after the fact).
    fn answer_work(&self, source: &Source) {
        match source {
            Source::Permission(e) => self.answer(e),
            Source::Relayed { token, .. } => {
                if let Some(link) = &self.link {
                    link.done(*token);
                }
            }
            Source::Modified(_) => {}
        }
    }

    /// Lets the access behind a permission event go on.
    fn answer(&self, event: &Event) {
        if let (Some(pre), Some(f)) = (&self.pre, &event.file) {
            if event.raw.mask & (FAN_PRE_ACCESS | FAN_OPEN_PERM) != 0 {
                let _ = pre.allow(f.as_raw_fd());
            }
        }
    }

    /// The worker: makes the window safe, then answers.
    fn work(&self, rx: Receiver<Work>) {
        for w in rx {
            let (file, id, pid) = match &w.source {
                Source::Permission(e) => {
                    let Some(f) = e.file.as_ref() else { continue };
                    match FileId::of(f) {
                        Ok(id) => (
                            clone_or_nothing(f).map(Arc::new),
                            id,
                            e.raw.pid.max(0) as u32,
                        ),
                        Err(_) => {
                            self.answer(e);
                            continue;
                        }
                    }
                }
                // A file no longer mapped has nothing to make safe.
                Source::Relayed { file, pid, .. } => match self.dax.kept_file(*file) {
                    Some(f) => (Some(f), *file, (*pid).max(0) as u32),
                    None => {
                        self.answer_work(&w.source);
                        continue;
                    }
                },
                Source::Modified(id) => match self.dax.kept_file(*id) {
                    Some(f) => (Some(f), *id, 0),
                    None => continue,
                },
            };
            let size_of = || file.as_deref()?.metadata().ok().map(|m| m.len());
            // The size before a truncation announced before it takes effect.
            let size_now = match w.new_size {
                NewSize::Current => None,
                _ => size_of(),
            };
            // The new size is computed with the request order held (DaxState::shrink_to): a
            // size read from the file before could be older than a chunk mapped since.
            let (mapper, action) = (&*self.mapper, self.action);
            let (new_size, shrunk) = match w.new_size {
                NewSize::Current => self.dax.shrink_to(mapper, id, size_of, action),
                NewSize::Exact(n) => self.dax.shrink_to(mapper, id, || Some(n), action),
                NewSize::Shorter(n) => self.dax.shrink_to(
                    mapper,
                    id,
                    || size_of().map(|s| s.saturating_sub(n)),
                    action,
                ),
            };
            self.answer_work(&w.source);
            let Some(new_size) = new_size else {
                continue;
            };
            self.reported(
                id,
                file.as_deref()
                    .and_then(|f| path_of(self.proc_self_fd.as_ref(), f)),
                size_now,
                new_size,
                w.trigger,
                pid,
                w.at,
                shrunk,
            );
        }
    }

    /// Counts and reports what [`DaxState::shrink`] did (nothing if it cut nothing).
    #[allow(clippy::too_many_arguments)]
    fn reported(
        &self,
        id: FileId,
        path: Option<String>,
        size_before: Option<u64>,
        size_after: u64,
        trigger: GuardTrigger,
        pid: u32,
        at: Instant,
        shrunk: Shrunk,
    ) {
        let latency_us = at.elapsed().as_micros() as u64;
        if let Some(e) = shrunk.error {
            bump(&self.counters.failures, 1);
            (self.sink)(GuardEvent::Failed {
                file: id,
                error: e.to_string(),
            });
        }
        if shrunk.ranges.is_empty() {
            return;
        }
        bump(&self.counters.chunks_cut, shrunk.ranges.len() as u64);
        bump(
            if trigger == GuardTrigger::AfterTheFact {
                &self.counters.after
            } else {
                &self.counters.before
            },
            1,
        );
        (self.sink)(GuardEvent::Report(GuardReport {
            time_us: now_us(),
            dev: id.dev,
            ino: id.ino,
            path,
            size_before,
            size_after,
            trigger,
            action: self.action,
            ranges: shrunk.ranges,
            pid,
            latency_us,
        }));
    }
}

impl FileWatch for Shared {
    fn watch(&self, id: FileId, file: &File) -> Guarding {
        let mut reasons = Vec::new();
        let before = match &self.pre {
            Some(g) => match g.mark(file, FAN_PRE_ACCESS | FAN_OPEN_PERM) {
                Ok(()) => true,
                Err(e) => {
                    reasons.push(format!("no pre-content events ({e})"));
                    // Opens with O_TRUNC can still be seen before (tmpfs takes this mark).
                    let _ = g.mark(file, FAN_OPEN_PERM);
                    false
                }
            },
            None => {
                reasons.push("no pre-content group".to_string());
                false
            }
        };
        let after = match &self.ino {
            Some(ino) => match ino.watch(self.proc_self_fd.as_ref(), file) {
                Ok(wd) => {
                    let mut wds = self.wds.lock().unwrap_or_else(|e| e.into_inner());
                    wds.0.insert(wd, id);
                    wds.1.insert(id, wd);
                    true
                }
                Err(e) => {
                    reasons.push(format!("no inotify watch ({e})"));
                    false
                }
            },
            None => false,
        };
        let guarding = if before {
            Guarding::Before
        } else if after {
            Guarding::After
        } else {
            Guarding::Unguarded
        };
        if guarding != Guarding::Before
            && self
                .told_unguarded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id)
        {
            bump(&self.counters.unguarded_files, 1);
            (self.sink)(GuardEvent::Unguarded {
                file: id,
                path: path_of(self.proc_self_fd.as_ref(), file),
                guarding,
                reason: reasons.join("; "),
            });
        }
        guarding
    }

    fn unwatch(&self, id: FileId, file: &File) {
        if let Some(g) = &self.pre {
            let _ = g.unmark(file, FAN_PRE_ACCESS | FAN_OPEN_PERM);
        }
        if let Some(ino) = &self.ino {
            let wd = {
                let mut wds = self.wds.lock().unwrap_or_else(|e| e.into_inner());
                let wd = wds.1.remove(&id);
                if let Some(wd) = wd {
                    wds.0.remove(&wd);
                }
                wd
            };
            if let Some(wd) = wd {
                ino.unwatch(wd);
            }
        }
    }
}

impl TruncationHook for Shared {
    fn before_truncate(&self, file: &File, new_size: u64, pid: u32) {
        let Ok(id) = FileId::of(file) else { return };
        let at = Instant::now();
        let size_before = file.metadata().map(|m| m.len()).ok();
        let shrunk = self.dax.shrink(&*self.mapper, id, new_size, self.action);
        self.reported(
            id,
            path_of(self.proc_self_fd.as_ref(), file),
            size_before,
            new_size,
            GuardTrigger::Guest,
            pid,
            at,
            shrunk,
        );
    }
}
