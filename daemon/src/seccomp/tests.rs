//! The filter program run through a small classic-BPF interpreter over made-up `seccomp_data`,
//! and, in forked children, through the kernel.

use super::*;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
/// `AUDIT_ARCH_I386`: a 32-bit call (`int 0x80`) from the same process.
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// `struct seccomp_data` as the kernel lays it out: `nr` at 0, `arch` at 4, then the
/// instruction pointer and six arguments (64 bytes).
fn data(nr: u32, arch: u32) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&nr.to_ne_bytes());
    d[4..8].copy_from_slice(&arch.to_ne_bytes());
    d[8..16].copy_from_slice(&0x7f00_dead_beefu64.to_ne_bytes());
    d
}

/// Runs `prog` the way the kernel does for the instructions `build_program` may emit; panics on
/// anything else, on a load outside the data and on running past the end.
fn run(prog: &[libc::sock_filter], data: &[u8; 64]) -> u32 {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let ins = prog
            .get(pc)
            .unwrap_or_else(|| panic!("ran past the end of the program at {pc}"));
        match ins.code {
            LD_W_ABS => {
                let off = ins.k as usize;
                assert!(
                    off.is_multiple_of(4) && off + 4 <= data.len(),
                    "bad load at {pc}"
                );
                acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                pc += 1;
            }
            JEQ_K => {
                let skip = if acc == ins.k { ins.jt } else { ins.jf };
                pc += 1 + usize::from(skip);
            }
            RET_K => return ins.k,
            code => panic!("unexpected instruction {code:#x} at {pc}"),
        }
    }
}

#[test]
fn data_offsets_are_the_kernels() {
    assert_eq!(NR_OFFSET, 0);
    assert_eq!(ARCH_OFFSET, 4);
    assert_eq!(std::mem::size_of::<libc::seccomp_data>(), 64);
}

#[test]
fn small_program_layout_and_jumps() {
    let prog = build_program(AUDIT_ARCH_X86_64, &[0, 1, 60], KILL).unwrap();
    assert_eq!(prog.len(), 3 + 6);
    let last = prog.len() - 1;
    assert_eq!(prog[last].k, ALLOW);
    assert_eq!(prog[last - 1].k, KILL);
    assert_eq!(prog[2].k, KILL, "wrong arch returns the default");
    assert_eq!(
        (prog[1].k, prog[1].jt, prog[1].jf),
        (AUDIT_ARCH_X86_64, 1, 0)
    );
    for k in 0..3 {
        let i = 4 + k;
        let target = i + 1 + usize::from(prog[i].jt);
        assert_eq!(target, last, "jeq #{} must jump to ret ALLOW", prog[i].k);
        assert_eq!(prog[i].jf, 0);
    }
    assert_eq!(run(&prog, &data(1, AUDIT_ARCH_X86_64)), ALLOW);
    assert_eq!(run(&prog, &data(2, AUDIT_ARCH_X86_64)), KILL);
}

#[test]
fn every_listed_call_is_allowed_and_others_get_the_default() {
    for mode in [SeccompMode::Log, SeccompMode::Trap, SeccompMode::Kill] {
        let filter = Filter::new(mode).unwrap().expect("a filter");
        let prog = filter.program();
        let action = mode.default_action().unwrap();
        assert_eq!(prog.len(), allowed_syscalls().len() + 6);
        for &(name, nr) in allowed_syscalls() {
            assert_eq!(
                run(prog, &data(nr as u32, AUDIT_ARCH_X86_64)),
                ALLOW,
                "{name} ({nr}) must be allowed"
            );
            assert_eq!(
                run(prog, &data(nr as u32 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64)),
                action,
                "the x32 {name} must not be allowed"
            );
            assert_eq!(
                run(prog, &data(nr as u32, AUDIT_ARCH_I386)),
                action,
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
            u32::MAX as libc::c_long,
        ] {
            assert_eq!(
                run(prog, &data(nr as u32, AUDIT_ARCH_X86_64)),
                action,
                "system call {nr} must get the default action"
            );
        }
    }
    assert!(Filter::new(SeccompMode::None).unwrap().is_none());
}

#[test]
fn longest_list_still_reaches_allow_and_longer_is_refused() {
    let list: Vec<u32> = (0..MAX_ALLOWED as u32).map(|i| i * 3).collect();
    let prog = build_program(AUDIT_ARCH_X86_64, &list, KILL).unwrap();
    for &nr in &list {
        assert_eq!(run(&prog, &data(nr, AUDIT_ARCH_X86_64)), ALLOW, "{nr}");
        assert_eq!(run(&prog, &data(nr + 1, AUDIT_ARCH_X86_64)), KILL, "{nr}+1");
    }
    let list: Vec<u32> = (0..=MAX_ALLOWED as u32).collect();
    assert!(matches!(
        build_program(AUDIT_ARCH_X86_64, &list, KILL),
        Err(SeccompError::TooManySyscalls(256))
    ));
}

#[test]
fn allowlist_has_no_duplicates_and_nothing_dangerous() {
    let list = allowed_syscalls();
    let mut nrs: Vec<_> = list.iter().map(|&(_, nr)| nr).collect();
    nrs.sort_unstable();
    nrs.dedup();
    assert_eq!(nrs.len(), list.len(), "duplicates in the allowlist");
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
    ] {
        assert!(!has(nr), "system call {nr} must not be allowed");
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
