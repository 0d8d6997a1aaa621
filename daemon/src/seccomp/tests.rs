//! The filter programs run through a small classic-BPF interpreter over made-up
//! `seccomp_data`, and, in forked children, through the kernel.

use super::*;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
/// `AUDIT_ARCH_X86_64`, the `arch` of a 64-bit x86 call.
const X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`: a 32-bit call (`int 0x80`) from the same process.
const I386: u32 = 0x4000_0003;
/// The x32 ABI's bit in the call number (same `arch` as x86_64).
const X32_BIT: u32 = 0x4000_0000;

fn action_of(mode: SeccompMode) -> u32 {
    match mode {
        SeccompMode::Log => libc::SECCOMP_RET_LOG,
        SeccompMode::Trap => libc::SECCOMP_RET_TRAP,
        SeccompMode::Kill => KILL,
        SeccompMode::None => unreachable!(),
    }
}

/// `struct seccomp_data` as the kernel lays it out: `nr` at 0, `arch` at 4, the instruction
/// pointer at 8, then six 64-bit arguments (64 bytes).
fn data(nr: i64, arch: u32, args: &[u64]) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
    d[4..8].copy_from_slice(&arch.to_ne_bytes());
    d[8..16].copy_from_slice(&0x7f00_dead_beefu64.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    d
}

/// Runs `prog` the way the kernel does for the instructions seccompiler emits; panics on
/// anything else, on a load outside the data and on running past the end.
fn run(prog: &[libc::sock_filter], data: &[u8; 64]) -> u32 {
    let op = |c: u32| c as u16;
    let (ld, and, ja) = (
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K),
        op(libc::BPF_JMP | libc::BPF_JA),
    );
    let jmp = |c: u32| op(libc::BPF_JMP | c | libc::BPF_K);
    let ret = op(libc::BPF_RET | libc::BPF_K);
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let ins = prog
            .get(pc)
            .unwrap_or_else(|| panic!("ran past the end of the program at {pc}"));
        let cond = |taken: bool| 1 + usize::from(if taken { ins.jt } else { ins.jf });
        pc += match ins.code {
            c if c == ld => {
                let off = ins.k as usize;
                assert!(
                    off.is_multiple_of(4) && off + 4 <= data.len(),
                    "bad load at {pc}"
                );
                acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                1
            }
            c if c == and => {
                acc &= ins.k;
                1
            }
            c if c == ja => 1 + ins.k as usize,
            c if c == jmp(libc::BPF_JEQ) => cond(acc == ins.k),
            c if c == jmp(libc::BPF_JGE) => cond(acc >= ins.k),
            c if c == jmp(libc::BPF_JGT) => cond(acc > ins.k),
            c if c == jmp(libc::BPF_JSET) => cond(acc & ins.k != 0),
            c if c == ret => return ins.k,
            code => panic!("unexpected instruction {code:#x} at {pc}"),
        };
    }
}

#[test]
fn every_listed_call_is_allowed_and_others_get_the_mode_action() {
    for mode in [SeccompMode::Log, SeccompMode::Trap, SeccompMode::Kill] {
        let filter = Filter::new(mode).unwrap().expect("a filter");
        let prog = filter.program();
        let action = action_of(mode);
        for (name, nr) in allowed_syscalls() {
            assert_eq!(run(prog, &data(nr, X86_64, &[])), ALLOW, "{name} ({nr})");
            assert_eq!(
                run(prog, &data(nr | i64::from(X32_BIT), X86_64, &[])),
                action,
                "the x32 {name} must not be allowed"
            );
            // seccompiler kills on another architecture whatever the mode.
            assert_eq!(
                run(prog, &data(nr, I386, &[])),
                KILL,
                "an i386 call numbered like {name} must not be allowed"
            );
        }
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_mount,
            libc::SYS_kexec_load,
            libc::SYS_getppid,
            libc::SYS_kill,
            libc::SYS_process_vm_writev,
            1000,
            i64::from(u32::MAX),
        ] {
            assert_eq!(
                run(prog, &data(nr, X86_64, &[])),
                action,
                "system call {nr}"
            );
        }
    }
    assert!(Filter::new(SeccompMode::None).unwrap().is_none());
}

#[test]
fn ioctl_clone_and_prctl_are_allowed_only_as_the_daemon_uses_them() {
    let filter = Filter::new(SeccompMode::Kill).unwrap().expect("a filter");
    let prog = filter.program();
    let call = |nr, args: &[u64]| run(prog, &data(nr, X86_64, args));
    // ioctl(fd, request): FS_IOC_FSGETXATTR and FIONBIO only.
    assert_eq!(call(libc::SYS_ioctl, &[3, 0x801c_581f]), ALLOW);
    assert_eq!(call(libc::SYS_ioctl, &[3, libc::FIONBIO]), ALLOW);
    for req in [
        libc::TIOCSTI,
        0x4004_ae86, /* KVM_RUN-like */
        0x801c_581f | 1 << 32,
    ] {
        let want = if req >> 32 != 0 { ALLOW } else { KILL };
        // The request is an int for the kernel: only its low 32 bits count.
        assert_eq!(call(libc::SYS_ioctl, &[3, req]), want, "ioctl {req:#x}");
    }
    // clone: threads only (the C library's pthread_create flags), never a new process.
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    assert_eq!(call(libc::SYS_clone, &[thread_flags]), ALLOW);
    assert_eq!(call(libc::SYS_clone, &[libc::SIGCHLD as u64]), KILL, "fork");
    assert_eq!(
        call(
            libc::SYS_clone,
            &[(libc::CLONE_VM | libc::CLONE_VFORK) as u64]
        ),
        KILL,
        "vfork"
    );
    assert_eq!(
        call(
            libc::SYS_clone,
            &[(libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64]
        ),
        KILL,
        "a thread without the address space"
    );
    // prctl: thread names only.
    assert_eq!(call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64]), ALLOW);
    assert_eq!(call(libc::SYS_prctl, &[libc::PR_GET_NAME as u64]), ALLOW);
    for opt in [
        libc::PR_SET_DUMPABLE,
        libc::PR_SET_SECCOMP,
        libc::PR_CAP_AMBIENT,
        libc::PR_SET_PDEATHSIG,
    ] {
        assert_eq!(call(libc::SYS_prctl, &[opt as u64]), KILL, "prctl {opt}");
    }
}

#[test]
fn clone3_fails_with_enosys_and_nothing_else_is_touched() {
    let filter = Filter::new(SeccompMode::Kill).unwrap().expect("a filter");
    let prog = filter.clone3_program();
    assert_eq!(
        run(prog, &data(libc::SYS_clone3, X86_64, &[])),
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
    );
    for (_, nr) in allowed_syscalls()
        .into_iter()
        .filter(|&(_, nr)| nr != libc::SYS_clone3)
    {
        assert_eq!(run(prog, &data(nr, X86_64, &[])), ALLOW, "{nr}");
    }
    // The main filter lets clone3 through to this one (ERRNO outranks ALLOW, KILL would
    // outrank ERRNO).
    assert_eq!(
        run(filter.program(), &data(libc::SYS_clone3, X86_64, &[])),
        ALLOW
    );
}

#[test]
fn allowlist_has_no_duplicates_and_nothing_dangerous() {
    let list = allowed_syscalls();
    let conditional = allowed_with_arguments().unwrap();
    let mut nrs: Vec<_> = list
        .iter()
        .map(|&(_, nr)| nr)
        .chain(conditional.iter().map(|(_, nr, _)| *nr))
        .collect();
    let n = nrs.len();
    nrs.sort_unstable();
    nrs.dedup();
    assert_eq!(nrs.len(), n, "duplicates in the allowlist");
    let has = |nr| list.iter().any(|&(_, n)| n == nr);
    for nr in [
        libc::SYS_read,
        libc::SYS_futex,
        libc::SYS_epoll_wait,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_openat,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_clone3,
        libc::SYS_exit_group,
        libc::SYS_restart_syscall,
    ] {
        assert!(has(nr), "system call {nr} is needed");
    }
    for nr in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_ptrace,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setuid,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_bpf,
        libc::SYS_init_module,
        libc::SYS_kexec_load,
        libc::SYS_process_vm_readv,
        libc::SYS_open,
        libc::SYS_getppid,
        libc::SYS_ioctl,
        libc::SYS_clone,
        libc::SYS_prctl,
        libc::SYS_capset,
    ] {
        assert!(
            !has(nr),
            "system call {nr} must not be allowed unconditionally"
        );
    }
}

#[test]
fn sigsys_message_formats_the_number() {
    let mut buf = [0u8; 64];
    let n = sigsys_message(317, &mut buf);
    assert_eq!(&buf[..n], b"vfsdaxd: seccomp refused system call 317\n");
    let n = sigsys_message(0, &mut buf);
    assert_eq!(&buf[..n], b"vfsdaxd: seccomp refused system call 0\n");
    let n = sigsys_message(i32::MIN, &mut buf);
    assert_eq!(
        &buf[..n],
        b"vfsdaxd: seccomp refused system call -2147483648\n"
    );
}

/// Forks a child that installs the real filter for `mode`, calls `getppid` (not allowed) and
/// exits 0 if the call returned `ok_return` (or failed with `ENOSYS` when `ok_return` is -1);
/// returns the child's wait status.
fn child_status(mode: SeccompMode) -> libc::c_int {
    let filter = Filter::new(mode).unwrap().expect("a filter");
    // SAFETY: the child only makes async-signal-safe calls (prctl, sigaction, seccomp,
    // getppid, _exit) and allocates nothing, so forking this multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = match filter.apply() {
            Err(_) => 3,
            Ok(()) => {
                // SAFETY: getppid takes no arguments.
                let r = unsafe { libc::syscall(libc::SYS_getppid) };
                // SAFETY: __errno_location returns this thread's errno slot.
                let errno = unsafe { *libc::__errno_location() };
                match mode {
                    SeccompMode::Log if r > 0 => 0,
                    SeccompMode::Trap if r == -1 && errno == libc::ENOSYS => 0,
                    _ => 4,
                }
            }
        };
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", io::Error::last_os_error());
    status
}

#[test]
fn the_kernel_applies_each_mode() {
    let kill = child_status(SeccompMode::Kill);
    assert!(
        libc::WIFSIGNALED(kill) && libc::WTERMSIG(kill) == libc::SIGSYS,
        "kill: status {kill:#x}"
    );
    let trap = child_status(SeccompMode::Trap);
    assert!(
        libc::WIFEXITED(trap) && libc::WEXITSTATUS(trap) == 0,
        "trap: status {trap:#x} (0x400 = not ENOSYS, 0x300 = not installed)"
    );
    let log = child_status(SeccompMode::Log);
    assert!(
        libc::WIFEXITED(log) && libc::WEXITSTATUS(log) == 0,
        "log: status {log:#x}"
    );
}

#[test]
fn a_timed_wait_stopped_and_continued_survives_the_filter() {
    // SIGSTOP during a futex wait with a timeout makes the kernel resume the wait through
    // restart_syscall after SIGCONT: without it in the allowlist, `kill` killed the daemon.
    let filter = Filter::new(SeccompMode::Kill).unwrap().expect("a filter");
    // SAFETY: the child only makes async-signal-safe calls (prctl, seccomp, futex, _exit) and
    // allocates nothing, so forking this multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let word = 0u32;
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 400_000_000,
        };
        let code = match filter.apply() {
            Err(_) => 3,
            Ok(()) => {
                // SAFETY: a private futex wait on a live word with a valid timeout.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        &word as *const u32,
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0u32,
                        &timeout as *const libc::timespec,
                    )
                };
                // SAFETY: __errno_location returns this thread's errno slot.
                let errno = unsafe { *libc::__errno_location() };
                if r == -1 && errno == libc::ETIMEDOUT {
                    0
                } else {
                    4
                }
            }
        };
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: kill takes integers; `pid` is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}: killed by signal {} (SIGSYS = {})",
        libc::WTERMSIG(status),
        libc::SIGSYS
    );
}
