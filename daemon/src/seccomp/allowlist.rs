//! The x86_64 system calls `vfsdaxd` makes once the filter is installed (from just before the
//! vhost-user device is created to exit), found by running the harness, DAX, lifecycle and
//! real-guest tests against `vfsdaxd --seccomp log` under `strace -f` (everything after the
//! `seccomp()` call) and reading the kernel's audit lines, plus calls the code makes on paths
//! those tests do not reach (fsuid switching, `flock`, `FS_IOC_FSGETXATTR`, fd-based xattrs,
//! the allocator's `brk`/`mremap`, vDSO fallbacks). The busiest calls come first: the filter
//! compares in order.

use libc::c_long;

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

/// Name (the `libc::SYS_*` constant) and number of every allowed call.
pub(super) const ALLOWED: &[(&str, c_long)] = syscalls![
    // Queue threads: wait for kicks, signal the guest, move data with guest memory.
    SYS_epoll_wait,
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
    SYS_renameat,
    SYS_renameat2,
    SYS_fchmodat,
    SYS_fchmodat2,
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
    SYS_ioctl,
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
    SYS_sendmsg,
    // The DAX probe at INIT maps a sealed memfd (dax::frontend::probe_file); the truncation
    // guard substitutes zero memfds, marks and unmarks mapped files, and waits on its groups.
    SYS_memfd_create,
    SYS_fanotify_mark,
    SYS_inotify_add_watch,
    SYS_inotify_rm_watch,
    SYS_poll,
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
    SYS_clone,
    SYS_clone3,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sigaltstack,
    SYS_prctl,
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
    // Time (when the vDSO falls back), randomness (hash maps). (The socket files are removed on
    // exit with unlinkat, relative to their directory's descriptor.)
    SYS_clock_gettime,
    SYS_gettimeofday,
    SYS_getrandom,
];
