//! The system calls `vfsdaxd` makes once the filter is installed (from just before the
//! vhost-user device is created to exit), found by running the harness, DAX, lifecycle and
//! real-guest tests against `vfsdaxd --seccomp log` under `strace -f` (everything after the
//! `seccomp()` call) and reading the kernel's audit lines, plus calls the code makes on paths
//! those tests do not reach (fsuid switching, `flock`, `FS_IOC_FSGETXATTR`, fd-based xattrs,
//! the allocator's `brk`/`mremap`, vDSO fallbacks, `restart_syscall` after a stop). Since the
//! filter is the default (`--seccomp kill`), every test of the suite runs under it.
//!
//! `ioctl`, `clone` and `prctl` are allowed only with the arguments the daemon uses
//! ([`conditional`]); `clone3`, whose flags lie in memory a filter cannot read, fails with
//! `ENOSYS` (a second filter), so the C library falls back to `clone`.

use libc::c_long;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

/// Name (the `libc::SYS_*` constant) and number of every call allowed whatever its arguments,
/// on every architecture.
pub(super) const COMMON: &[(&str, c_long)] = syscalls![
    // Queue threads: wait for kicks, signal the guest, move data with guest memory.
    SYS_read,
    SYS_write,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_pread64,
    SYS_pwrite64,
    SYS_writev,
    SYS_futex,
    // Passthrough filesystem: names resolved relative to O_PATH descriptors.
    SYS_openat,
    SYS_close,
    SYS_statx,
    SYS_newfstatat,
    SYS_fstat,
    SYS_getdents64,
    SYS_readlinkat,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_symlinkat,
    SYS_linkat,
    SYS_unlinkat,
    SYS_renameat2,
    SYS_fchmodat,
    SYS_fchmod,
    SYS_fchownat,
    SYS_utimensat,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_lseek,
    SYS_copy_file_range,
    SYS_fsync,
    SYS_fdatasync,
    SYS_syncfs,
    SYS_fstatfs,
    SYS_flock,
    SYS_fcntl,
    SYS_dup,
    // Requests run with the caller's fsuid/fsgid (per thread).
    SYS_setfsuid,
    SYS_setfsgid,
    // Extended attributes (by the name N with the working directory at /proc/self/fd, which
    // fchdir enters and leaves, or on descriptors).
    SYS_fchdir,
    SYS_getxattr,
    SYS_setxattr,
    SYS_listxattr,
    SYS_removexattr,
    SYS_fgetxattr,
    SYS_fsetxattr,
    SYS_flistxattr,
    SYS_fremovexattr,
    // vhost-user: the frontend connection, the backend (DAX) channel, kick and call eventfds.
    SYS_accept4,
    SYS_recvmsg,
    SYS_recvfrom,
    SYS_sendto,
    SYS_sendmsg,
    // The DAX probe at INIT maps a sealed memfd (dax::frontend::probe_file); the truncation
    // guard substitutes zero memfds, marks and unmarks mapped files, and waits on its groups.
    SYS_memfd_create,
    SYS_fanotify_mark,
    SYS_inotify_add_watch,
    SYS_inotify_rm_watch,
    SYS_ppoll,
    SYS_getsockopt,
    SYS_shutdown,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_eventfd2,
    // Memory: the allocator, guest memory on SET_MEM_TABLE, thread stacks.
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_brk,
    // Threads (the queue threads start once the frontend connects).
    // Allowed here, refused with ENOSYS by the second filter (see the module comment).
    SYS_clone3,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sigaltstack,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_gettid,
    SYS_getpid,
    SYS_exit,
    SYS_exit_group,
    // Signals: the SIGTERM/SIGINT thread, returning from the SIGSYS handler of --seccomp trap.
    SYS_rt_sigprocmask,
    SYS_rt_sigtimedwait,
    SYS_rt_sigreturn,
    // A timed wait (futex, poll) interrupted by SIGSTOP resumes through this after SIGCONT.
    SYS_restart_syscall,
    // Time (when the vDSO falls back), randomness (hash maps). (The socket files are removed on
    // exit with unlinkat, relative to their directory's descriptor.)
    SYS_clock_gettime,
    SYS_gettimeofday,
    SYS_getrandom,
];

/// The calls only one architecture has (the other has a newer form in [`COMMON`]).
#[cfg(target_arch = "x86_64")]
pub(super) const ARCH: &[(&str, c_long)] = &[
    ("SYS_epoll_wait", libc::SYS_epoll_wait),
    ("SYS_poll", libc::SYS_poll),
    ("SYS_renameat", libc::SYS_renameat),
    ("SYS_fchmodat2", libc::SYS_fchmodat2),
];

/// The calls only one architecture has (the other has a newer form in [`COMMON`]).
#[cfg(target_arch = "aarch64")]
pub(super) const ARCH: &[(&str, c_long)] = &[
    ("SYS_epoll_pwait", libc::SYS_epoll_pwait),
    // Not in the libc crate for aarch64 yet; the same number as on x86_64.
    ("SYS_fchmodat2", 452),
];

/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`): the DAX flag of `--dax-policy xattr`.
const FS_IOC_FSGETXATTR: u64 = 0x801c_581f;

/// `FIONBIO` (the same on x86_64 and aarch64).
const FIONBIO: u64 = 0x5421;

/// `(name, number, rules)` of the calls allowed only with some arguments: any rule matching
/// allows the call (each rule's conditions all hold).
pub(super) fn conditional() -> Result<Vec<super::ArgRules>, seccompiler::BackendError> {
    let eq =
        |arg: u8, v: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v);
    let one = |c: SeccompCondition| SeccompRule::new(vec![c]);
    // A new thread shares the address space; a new process (fork) does not.
    let thread = (libc::CLONE_THREAD | libc::CLONE_VM) as u64;
    Ok(vec![
        (
            "SYS_ioctl",
            libc::SYS_ioctl,
            vec![
                one(eq(1, FS_IOC_FSGETXATTR)?)?,
                // Rust's set_nonblocking.
                one(eq(1, FIONBIO)?)?,
            ],
        ),
        (
            "SYS_clone",
            libc::SYS_clone,
            vec![one(SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(thread),
                thread,
            )?)?],
        ),
        (
            "SYS_prctl",
            libc::SYS_prctl,
            vec![
                // Thread names.
                one(eq(0, libc::PR_SET_NAME as u64)?)?,
                one(eq(0, libc::PR_GET_NAME as u64)?)?,
            ],
        ),
    ])
}
