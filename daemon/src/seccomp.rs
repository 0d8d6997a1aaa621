//! Seccomp confinement (`--seccomp none|log|trap|kill`, virtiofsd's values).
//!
//! The filter is a classic-BPF program built here by hand: it checks that the system call comes
//! from the x86_64 ABI, then compares the call number against an allowlist
//! ([`allowed_syscalls`]) of what the daemon does once the share is open and the socket bound.
//! A listed call is allowed; anything else (or another ABI) gets the mode's action: logged and
//! allowed (`log`), refused with `SIGSYS` (`trap`; the daemon reports the call on stderr and the
//! call fails with `ENOSYS`), or the whole process killed (`kill`).
//!
//! [`Filter::new`] builds the program (pure, allocates); [`Filter::apply`] installs it for every
//! thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`) after `PR_SET_NO_NEW_PRIVS`, without
//! allocating.

#[cfg(target_arch = "x86_64")]
mod allowlist;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

use std::io;
use std::mem::offset_of;

use thiserror::Error;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`), the `arch` a
/// 64-bit x86 system call carries in `seccomp_data`.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// The x32 ABI's bit in the system call number (same `arch` as x86_64); never allowed.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Longest allowlist [`build_program`] encodes: a BPF jump offset is one byte.
pub const MAX_ALLOWED: usize = 255;

/// What happens to a system call that is not on the allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// No filter.
    #[default]
    None,
    /// Allow the call and have the kernel log it (audit type 1326).
    Log,
    /// Refuse the call with SIGSYS: vfsdaxd reports it on stderr and the call fails with ENOSYS.
    Trap,
    /// Kill the whole process.
    Kill,
}

impl SeccompMode {
    /// The filter's return value for a call that is not allowed, or `None` without a filter.
    pub fn default_action(self) -> Option<u32> {
        match self {
            SeccompMode::None => None,
            SeccompMode::Log => Some(libc::SECCOMP_RET_LOG),
            SeccompMode::Trap => Some(libc::SECCOMP_RET_TRAP),
            SeccompMode::Kill => Some(libc::SECCOMP_RET_KILL_PROCESS),
        }
    }
}

/// Errors building or installing the filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The allowlist is only written for x86_64.
    #[error("seccomp filters are only built for x86_64, not {0}; run with --seccomp none")]
    UnsupportedArch(&'static str),
    /// Too many system calls for the one-byte jump offsets of the linear program.
    #[error("the allowlist has {0} system calls, more than the {MAX_ALLOWED} one filter holds")]
    TooManySyscalls(usize),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs before installing the seccomp filter")]
    NoNewPrivs(#[source] io::Error),
    /// The `SIGSYS` handler for `trap` could not be installed.
    #[error("cannot install the SIGSYS handler for --seccomp trap")]
    TrapHandler(#[source] io::Error),
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
    #[error("cannot install the seccomp filter")]
    Install(#[source] io::Error),
    /// `SECCOMP_FILTER_FLAG_TSYNC` could not synchronise this thread id (which runs another
    /// filter).
    #[error("cannot apply the seccomp filter to thread {0}")]
    Tsync(libc::c_long),
}

/// Byte offset of the system call number in `struct seccomp_data`.
pub const NR_OFFSET: u32 = offset_of!(libc::seccomp_data, nr) as u32;
/// Byte offset of the audit architecture in `struct seccomp_data`.
pub const ARCH_OFFSET: u32 = offset_of!(libc::seccomp_data, arch) as u32;

/// `BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset)`: load the 32-bit word at `offset`.
fn load(offset: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

/// `BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, k, jt, jf)`.
fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// `BPF_STMT(BPF_RET | BPF_K, action)`.
fn ret(action: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: action,
    }
}

/// Builds the filter: calls of architecture `arch` whose number is in `allowed` return
/// `SECCOMP_RET_ALLOW`, everything else `default_action`.
///
/// Layout (`n` = `allowed.len()`, `n + 6` instructions):
/// ```text
/// 0      ld  [arch]
/// 1      jeq #arch, 1, 0        ; skip the next instruction on a match
/// 2      ret #default           ; another ABI
/// 3      ld  [nr]
/// 4+k    jeq #allowed[k], n-k, 0  ; to "ret #ALLOW"
/// 4+n    ret #default
/// 5+n    ret #ALLOW
/// ```
pub fn build_program(
    arch: u32,
    allowed: &[u32],
    default_action: u32,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let n = allowed.len();
    if n > MAX_ALLOWED {
        return Err(SeccompError::TooManySyscalls(n));
    }
    let mut prog = Vec::with_capacity(n + 6);
    prog.push(load(ARCH_OFFSET));
    prog.push(jump_eq(arch, 1, 0));
    prog.push(ret(default_action));
    prog.push(load(NR_OFFSET));
    for (k, &nr) in allowed.iter().enumerate() {
        // n - k <= n <= MAX_ALLOWED = u8::MAX, checked above.
        prog.push(jump_eq(nr, (n - k) as u8, 0));
    }
    prog.push(ret(default_action));
    prog.push(ret(libc::SECCOMP_RET_ALLOW));
    Ok(prog)
}

/// The system calls the daemon makes after [`Filter::apply`], by name and x86_64 number.
#[cfg(target_arch = "x86_64")]
pub fn allowed_syscalls() -> &'static [(&'static str, libc::c_long)] {
    allowlist::ALLOWED
}

/// A built filter, ready to install.
#[derive(Debug)]
pub struct Filter {
    mode: SeccompMode,
    program: Vec<libc::sock_filter>,
}

impl Filter {
    /// Builds the filter for `mode`; `None` for [`SeccompMode::None`].
    pub fn new(mode: SeccompMode) -> Result<Option<Filter>, SeccompError> {
        let Some(action) = mode.default_action() else {
            return Ok(None);
        };
        let program = build_program(AUDIT_ARCH_X86_64, &native_allowlist()?, action)?;
        Ok(Some(Filter { mode, program }))
    }

    /// The BPF program.
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// Installs the filter for every thread of the process (and the threads they start).
    /// Allocates nothing, so it may run in a child between `fork` and `_exit`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and changes no memory.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SeccompError::NoNewPrivs(io::Error::last_os_error()));
        }
        if self.mode == SeccompMode::Trap {
            install_sigsys_handler().map_err(SeccompError::TrapHandler)?;
        }
        let prog = libc::sock_fprog {
            // At most MAX_ALLOWED + 6 instructions (build_program), which fits in u16.
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points to `len` initialised instructions that outlive the call; the
        // kernel copies the program and never writes through the pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            )
        };
        match r {
            0 => Ok(()),
            r if r > 0 => Err(SeccompError::Tsync(r)),
            _ => Err(SeccompError::Install(io::Error::last_os_error())),
        }
    }
}

/// The allowlist's numbers for the architecture this binary runs on.
#[cfg(target_arch = "x86_64")]
fn native_allowlist() -> Result<Vec<u32>, SeccompError> {
    // x86_64 system call numbers are small and positive.
    Ok(allowed_syscalls()
        .iter()
        .map(|&(_, nr)| nr as u32)
        .collect())
}

#[cfg(not(target_arch = "x86_64"))]
fn native_allowlist() -> Result<Vec<u32>, SeccompError> {
    Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

/// Installs the `SIGSYS` handler of `--seccomp trap`.
fn install_sigsys_handler() -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `sa` is initialised and names a handler with the SA_SIGINFO signature that
        // only makes async-signal-safe calls; the old action is not asked for.
        if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Offset of `si_syscall` in a `SIGSYS` `siginfo_t` on x86_64 (after `si_signo`, `si_errno`,
/// `si_code`, padding and `si_call_addr`).
#[cfg(target_arch = "x86_64")]
const SI_SYSCALL_OFFSET: usize = 24;

/// Formats "vfsdaxd: seccomp refused system call N\n" into `buf`; returns the length used.
pub fn sigsys_message(nr: i32, buf: &mut [u8; 64]) -> usize {
    const PREFIX: &[u8] = b"vfsdaxd: seccomp refused system call ";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut len = PREFIX.len();
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = i64::from(nr);
    if v < 0 {
        buf[len] = b'-';
        len += 1;
        v = -v;
    }
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[len] = digits[d];
        len += 1;
    }
    buf[len] = b'\n';
    len + 1
}

/// `SIGSYS` handler: reports the refused call on stderr and makes it return `-ENOSYS`
/// (the kernel leaves the call number in `rax` otherwise).
#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose `si_syscall` int lies at
    // SI_SYSCALL_OFFSET inside the 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let mut buf = [0u8; 64];
    let len = sigsys_message(nr, &mut buf);
    // SAFETY: write is async-signal-safe; `buf` holds `len` initialised bytes.
    unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len) };
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext, which
    // the handler may change; the kernel restores the registers from it on return.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
    }
}
