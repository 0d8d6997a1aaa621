//! Seccomp confinement (`--seccomp kill|trap|log|none`, virtiofsd's values and default,
//! `kill`).
//!
//! The filter is built with rust-vmm's `seccompiler` from the allowlist ([`allowlist`]) of what
//! the daemon does once the share is open and the socket bound: calls of another architecture
//! (or x86_64's x32 ABI) and unlisted calls get the mode's action: logged and allowed (`log`),
//! refused with `SIGSYS` (`trap`; the daemon reports the call on stderr and the call fails with
//! `ENOSYS`), or the whole process killed (`kill`). `ioctl`, `clone` and `prctl` are allowed
//! only with the arguments the daemon uses. A second, one-call filter makes `clone3` fail with
//! `ENOSYS`: its flags lie in memory no filter can read, and the C library then uses `clone`,
//! whose flags the first filter checks (only threads, no new process).
//!
//! [`Filter::new`] builds both programs (pure, allocates); [`Filter::apply`] installs them for
//! every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`, after `PR_SET_NO_NEW_PRIVS`),
//! without allocating.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod allowlist;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

use std::collections::BTreeMap;
use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use thiserror::Error;

/// What happens to a system call that is not on the allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// No filter.
    None,
    /// Allow the call and have the kernel log it (audit type 1326).
    Log,
    /// Refuse the call with SIGSYS: vfsdaxd reports it on stderr and the call fails with ENOSYS.
    Trap,
    /// Kill the whole process; the default.
    #[default]
    Kill,
}

impl SeccompMode {
    /// The action for a call that is not allowed, or `None` without a filter.
    pub fn mismatch_action(self) -> Option<SeccompAction> {
        match self {
            SeccompMode::None => None,
            SeccompMode::Log => Some(SeccompAction::Log),
            SeccompMode::Trap => Some(SeccompAction::Trap),
            SeccompMode::Kill => Some(SeccompAction::KillProcess),
        }
    }
}

/// Errors building or installing the filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// No allowlist is written for this architecture.
    #[error(
        "seccomp filters are only built for x86_64 and aarch64, not {0}; run with --seccomp none"
    )]
    UnsupportedArch(&'static str),
    /// The rules do not make a filter.
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The `SIGSYS` handler for `trap` could not be installed.
    #[error("cannot install the SIGSYS handler for --seccomp trap")]
    TrapHandler(#[source] io::Error),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// A call allowed only with some arguments: its name, number and rules (any rule matching
/// allows it).
pub type ArgRules = (&'static str, libc::c_long, Vec<SeccompRule>);

/// Every allowed call by name and number: those allowed whatever their arguments, then those
/// allowed with some ([`allowed_with_arguments`]).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn allowed_syscalls() -> Vec<(&'static str, libc::c_long)> {
    allowlist::COMMON
        .iter()
        .chain(allowlist::ARCH)
        .copied()
        .collect()
}

/// The calls allowed only with some arguments, with their rules.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn allowed_with_arguments() -> Result<Vec<ArgRules>, SeccompError> {
    allowlist::conditional().map_err(SeccompError::Build)
}

/// This binary's architecture for seccompiler.
fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

/// The main filter: `rules` allowed, everything else `mismatch`.
fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(rules, mismatch, on_match, target_arch()?)
        .and_then(BpfProgram::try_from)
        .map_err(SeccompError::Build)
}

/// The built filters, ready to install.
#[derive(Debug)]
pub struct Filter {
    mode: SeccompMode,
    program: BpfProgram,
    clone3: BpfProgram,
}

impl Filter {
    /// Builds the filters for `mode`; `None` for [`SeccompMode::None`].
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn new(mode: SeccompMode) -> Result<Option<Filter>, SeccompError> {
        let Some(mismatch) = mode.mismatch_action() else {
            return Ok(None);
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
            .into_iter()
            .map(|(_, nr)| (nr, Vec::new()))
            .collect();
        for (_, nr, r) in allowed_with_arguments()? {
            rules.insert(nr, r);
        }
        let program = compile(rules, mismatch, SeccompAction::Allow)?;
        let clone3 = compile(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?;
        Ok(Some(Filter {
            mode,
            program,
            clone3,
        }))
    }

    /// No allowlist for this architecture.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn new(mode: SeccompMode) -> Result<Option<Filter>, SeccompError> {
        match mode {
            SeccompMode::None => Ok(None),
            _ => Err(SeccompError::UnsupportedArch(std::env::consts::ARCH)),
        }
    }

    /// The main BPF program.
    pub fn program(&self) -> &[libc::sock_filter] {
        // seccompiler's instruction is `struct sock_filter`, field for field.
        as_sock_filters(&self.program)
    }

    /// The `clone3` program.
    pub fn clone3_program(&self) -> &[libc::sock_filter] {
        as_sock_filters(&self.clone3)
    }

    /// Installs the filters for every thread of the process (and the threads they start).
    /// Allocates nothing, so it may run in a child between `fork` and `_exit`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        if self.mode == SeccompMode::Trap {
            install_sigsys_handler().map_err(SeccompError::TrapHandler)?;
        }
        seccompiler::apply_filter_all_threads(&self.clone3).map_err(SeccompError::Install)?;
        seccompiler::apply_filter_all_threads(&self.program).map_err(SeccompError::Install)
    }
}

/// A seccompiler program as the kernel's instruction type.
fn as_sock_filters(p: &BpfProgram) -> &[libc::sock_filter] {
    const _: () = assert!(
        std::mem::size_of::<seccompiler::sock_filter>() == std::mem::size_of::<libc::sock_filter>()
    );
    // SAFETY: both are `#[repr(C)]` `struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }`
    // (same size, checked above, same field order and types), so the slice reinterprets the
    // same initialised memory for the same length and lifetime.
    unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<libc::sock_filter>(), p.len()) }
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
