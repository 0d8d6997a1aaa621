//! What a process held in a permission event is doing: opening with `O_TRUNC`, truncating to an
//! exact size, collapsing a range.
//!
//! The events do not say it all: an open permission event does not carry the opener's flags,
//! and a pre-content event of a truncation to a size that is not page aligned reports the page
//! around the new end (`(page, 4096)`), exactly like a write of one page. But the caller is
//! blocked inside its system call, so `/proc/<pid>/syscall` shows the call and its arguments
//! (for `openat2` the flags are read from the `struct open_how` in its memory,
//! `/proc/<pid>/mem`). Reading either needs the process to be visible in the daemon's PID
//! namespace (and root, or ptrace rights); when it is not, the intent is
//! [`OpenIntent::Unknown`] and the guard relies on the event after the fact.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// What a caller is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenIntent {
    /// Opening with `O_TRUNC` (or `creat(2)`): the file is emptied right after the open is
    /// allowed.
    Truncates,
    /// Opening without `O_TRUNC`.
    Keeps,
    /// `truncate(2)` or `ftruncate(2)` to this size.
    TruncatesTo(u64),
    /// `fallocate(2)` with `FALLOC_FL_COLLAPSE_RANGE` of this many bytes: the file shrinks by
    /// as much.
    Collapses(u64),
    /// Not known: the process is not visible, not in a call the daemon knows (say, an
    /// `io_uring` open), or its memory could not be read.
    Unknown,
}

/// System call numbers of the calls that open files.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const OPEN: Option<u64> = Some(2);
    pub const CREAT: Option<u64> = Some(85);
    pub const OPENAT: u64 = 257;
    pub const OPENAT2: u64 = 437;
    pub const TRUNCATE: u64 = 76;
    pub const FTRUNCATE: u64 = 77;
    pub const FALLOCATE: u64 = 285;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const OPEN: Option<u64> = None;
    pub const CREAT: Option<u64> = None;
    pub const OPENAT: u64 = 56;
    pub const OPENAT2: u64 = 437;
    pub const TRUNCATE: u64 = 45;
    pub const FTRUNCATE: u64 = 46;
    pub const FALLOCATE: u64 = 47;
}

/// `FALLOC_FL_COLLAPSE_RANGE`.
const FALLOC_FL_COLLAPSE_RANGE: u64 = 0x08;

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The intent behind a `/proc/<pid>/syscall` line: `nr arg0 arg1 ...` (hexadecimal
/// arguments). `read_u64(addr)` reads 8 bytes of the process's memory (for `openat2`).
pub fn intent_of(syscall: &str, read_u64: impl FnOnce(u64) -> Option<u64>) -> OpenIntent {
    let mut it = syscall.split_whitespace();
    let Some(nr) = it.next().and_then(parse_num) else {
        return OpenIntent::Unknown;
    };
    let args: Vec<u64> = it.filter_map(parse_num).collect();
    let truncates = |flags: u64| {
        if flags & libc::O_TRUNC as u64 != 0 {
            OpenIntent::Truncates
        } else {
            OpenIntent::Keeps
        }
    };
    let arg = |i: usize| args.get(i).copied();
    if Some(nr) == nr::CREAT {
        return OpenIntent::Truncates;
    }
    if nr == nr::TRUNCATE || nr == nr::FTRUNCATE {
        return arg(1).map_or(OpenIntent::Unknown, OpenIntent::TruncatesTo);
    }
    if nr == nr::FALLOCATE {
        return match (arg(1), arg(3)) {
            (Some(mode), Some(len)) if mode & FALLOC_FL_COLLAPSE_RANGE != 0 => {
                OpenIntent::Collapses(len)
            }
            (Some(_), Some(_)) => OpenIntent::Keeps,
            _ => OpenIntent::Unknown,
        };
    }
    let flags = if Some(nr) == nr::OPEN {
        arg(1)
    } else if nr == nr::OPENAT {
        arg(2)
    } else if nr == nr::OPENAT2 {
        arg(2).and_then(read_u64)
    } else {
        None
    };
    flags.map_or(OpenIntent::Unknown, truncates)
}

/// Opens `/proc/<pid>/<entry>` read-only: through `proc_self_fd` (a descriptor of
/// `/proc/self/fd`, reachable inside the sandbox: `../../<pid>/<entry>`), else by path.
pub(crate) fn open_proc(proc_self_fd: Option<&File>, pid: i32, entry: &str) -> Option<File> {
    match proc_self_fd {
        Some(dir) => {
            let name = std::ffi::CString::new(format!("../../{pid}/{entry}")).ok()?;
            // SAFETY: `name` is NUL-terminated and alive for the call; `dir` is an open
            // directory descriptor.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            // SAFETY: a descriptor openat just returned, owned by nothing else.
            (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
        }
        None => File::open(format!("/proc/{pid}/{entry}")).ok(),
    }
}

/// The thread group (process) thread `tid` belongs to, from its `/proc/<tid>/status` (see
/// [`open_proc`] for `proc_self_fd`).
pub fn tgid_of(proc_self_fd: Option<&File>, tid: i32) -> Option<i32> {
    if tid <= 0 {
        return None;
    }
    let mut text = String::new();
    open_proc(proc_self_fd, tid, "status")?
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The intent of thread `pid` (0: not visible), from its `/proc` entries (see [`open_proc`]
/// for `proc_self_fd`). It must be the thread that made the call (fanotify reports it with
/// `FAN_REPORT_TID`): `/proc/<tgid>/syscall` shows only the main thread's.
pub fn intent_of_pid(proc_self_fd: Option<&File>, pid: i32) -> OpenIntent {
    if pid <= 0 {
        return OpenIntent::Unknown;
    }
    let mut text = String::new();
    let read =
        open_proc(proc_self_fd, pid, "syscall").and_then(|mut f| f.read_to_string(&mut text).ok());
    if read.is_none() {
        return OpenIntent::Unknown;
    }
    intent_of(&text, |addr| {
        let mem = open_proc(proc_self_fd, pid, "mem")?;
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_ne_bytes(b))
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn never(_: u64) -> Option<u64> {
        panic!("memory is only read for openat2")
    }

    #[test]
    fn reads_the_flags_of_each_open_call() {
        // What Linux 6.18 showed for openat(AT_FDCWD, path, O_WRONLY|O_TRUNC).
        let line = "257 0xffffff9c 0x7fff6f6d8af2 0x201 0x0 0x0 0x7f03adaaa740 0x7fff6f6d51e0 \
                    0x7f03adba5011";
        assert_eq!(intent_of(line, never), OpenIntent::Truncates);
        assert_eq!(
            intent_of("257 0xffffff9c 0x7fff 0x1 0x0 0x0 0x0 0x0 0x0", never),
            OpenIntent::Keeps
        );
        assert_eq!(
            intent_of("2 0x7fff 0x241 0x1b6", never),
            OpenIntent::Truncates
        );
        assert_eq!(intent_of("2 0x7fff 0x2 0x0", never), OpenIntent::Keeps);
        assert_eq!(intent_of("85 0x7fff 0x1a4", never), OpenIntent::Truncates);
        assert_eq!(
            intent_of("437 0xffffff9c 0x7fff 0x5000 0x18", |a| {
                assert_eq!(a, 0x5000);
                Some(0x200)
            }),
            OpenIntent::Truncates
        );
        assert_eq!(
            intent_of("437 0xffffff9c 0x7fff 0x5000 0x18", |_| None),
            OpenIntent::Unknown
        );
    }

    #[test]
    fn reads_truncations_and_collapses() {
        // ftruncate(fd, 0x1800), truncate(path, 0), fallocate(fd, COLLAPSE, 0, 8192), a hole.
        assert_eq!(
            intent_of("77 0x5 0x1800 0x0 0x0 0x0 0x0 0x7ffd 0x7f00", never),
            OpenIntent::TruncatesTo(0x1800)
        );
        assert_eq!(
            intent_of("76 0x7ffd1234 0x0 0x0", never),
            OpenIntent::TruncatesTo(0)
        );
        assert_eq!(
            intent_of("285 0x5 0x8 0x0 0x2000 0x0 0x0", never),
            OpenIntent::Collapses(0x2000)
        );
        assert_eq!(
            intent_of("285 0x5 0x3 0x0 0x2000 0x0 0x0", never),
            OpenIntent::Keeps
        );
        assert_eq!(intent_of("77 0x5", never), OpenIntent::Unknown);
    }

    #[test]
    fn anything_else_is_unknown() {
        for line in ["running", "-1 0x7fff 0x7fff", "426 0x3 0x1 0x0", "", "257"] {
            assert_eq!(intent_of(line, never), OpenIntent::Unknown, "{line:?}");
        }
        assert_eq!(intent_of_pid(None, 0), OpenIntent::Unknown);
    }

    #[test]
    fn threads_name_their_process() {
        let me = std::process::id() as i32;
        assert_eq!(tgid_of(None, me), Some(me));
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let other = std::thread::spawn(|| {
            // SAFETY: as above.
            unsafe { libc::gettid() }
        })
        .join()
        .unwrap();
        let proc_fd = File::open("/proc/self/fd").unwrap();
        // A thread that ended has no entry any more; this one is alive.
        assert_eq!(tgid_of(Some(&proc_fd), tid), Some(me));
        assert_eq!(tgid_of(None, other), None, "an ended thread");
        assert_eq!(tgid_of(None, 0), None);
    }

    #[test]
    fn a_running_process_is_not_in_an_open() {
        // This thread is running, so its syscall file says so (or is not readable).
        assert_eq!(
            intent_of_pid(None, std::process::id() as i32),
            OpenIntent::Unknown
        );
        let proc_fd = File::open("/proc/self/fd").unwrap();
        assert_eq!(
            intent_of_pid(Some(&proc_fd), std::process::id() as i32),
            OpenIntent::Unknown
        );
    }
}
