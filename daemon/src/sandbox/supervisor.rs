//! The PID namespace of `--sandbox namespace`. `unshare(CLONE_NEWPID)` only places the next
//! child in the new namespace, so the daemon forks: the child, PID 1 there, unshares the
//! mount, network and IPC namespaces, sets up the rest of the sandbox and serves; the parent
//! stays outside, in the host's namespaces with the host's root, as a supervisor that
//! forwards SIGTERM and SIGINT to the child, waits for it, removes the socket files the child
//! left (through their directory's descriptor) and exits the way it did (with code 128 + the
//! signal for a signal that dumps core: see [`exit_as`]).
//!
//! PID 1 of a namespace drops a signal it neither handles nor blocks: SIGTERM and SIGINT are
//! blocked before the fork and stay blocked in the child until its signal thread waits for
//! them (`sigwait` takes a blocked signal that is pending). The child gets SIGKILL when the
//! supervisor dies (`PR_SET_PDEATHSIG`), so killing the supervisor kills the daemon too.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Which side of the fork this is.
pub(super) enum Forked {
    /// The child, PID 1 of the new PID namespace.
    Child,
    /// The supervisor, with the child's process id.
    Parent(libc::pid_t),
}

/// How the supervisor ends, given the child's wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAs {
    /// Exit with this code.
    Code(i32),
    /// Die of this signal (the child did).
    Signal(i32),
}

/// The way to end that reproduces the wait status `status` (from `waitpid` without
/// `WUNTRACED`: the child exited or was killed). A child killed by a signal whose default
/// action dumps core (SIGSYS from the seccomp filter, SIGSEGV, SIGABRT, ...) becomes exit
/// code 128 + the signal, the shell's convention: raised again, the signal would dump a core
/// of the supervisor, which did nothing wrong. Other signals (SIGTERM, SIGINT, SIGKILL, ...)
/// are raised again.
pub fn exit_as(status: libc::c_int) -> ExitAs {
    if libc::WIFEXITED(status) {
        ExitAs::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if dumps_core(sig) {
            ExitAs::Code(128 + sig)
        } else {
            ExitAs::Signal(sig)
        }
    } else {
        ExitAs::Code(1)
    }
}

/// Whether the default action of `sig` dumps core (signal(7), action "Core").
fn dumps_core(sig: libc::c_int) -> bool {
    matches!(
        sig,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS
    )
}

/// The signals the supervisor waits for.
fn supervised_signals() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers to it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        set.assume_init()
    }
}

/// Changes the calling thread's mask for `sig` alone (`how`: `SIG_BLOCK` or `SIG_UNBLOCK`).
fn mask_one(how: libc::c_int, sig: libc::c_int) {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: the set is initialised before use; pthread_sigmask reads it and changes only
    // this thread's mask.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), sig);
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Gives SIGCHLD its default action without flags. Inherited as ignored (or with
/// `SA_NOCLDWAIT`), it would make the kernel reap the child without a SIGCHLD nor a status
/// for the supervisor, which would then wait forever.
fn default_sigchld() -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid value (no flags, empty mask), and
    // its handler is set to SIG_DFL below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `act` is initialised; the old action is not asked for (null).
    if unsafe { libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives SIGCHLD its default action, blocks SIGTERM, SIGINT and SIGCHLD and forks. The
/// process must be single-threaded. The child unblocks SIGCHLD, asks for SIGKILL when the
/// parent dies and `_exit`s at once if the parent died already.
pub(super) fn fork() -> io::Result<Forked> {
    default_sigchld()?;
    // The supervisor holds the write end for its life; the child sees the pipe hung up once
    // it is gone. (`getppid` cannot tell: it is 0 for PID 1 of a new PID namespace, whose
    // parent lies outside it, before and after that parent dies.)
    let (alive_read, alive_write) = pipe()?;
    let set = supervised_signals();
    // SAFETY: `set` is initialised; this changes only the calling (only) thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: the process is single-threaded (checked by the caller), so the child is a
    // complete copy in which any code may run.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            Err(e)
        }
        0 => {
            drop(alive_write);
            mask_one(libc::SIG_UNBLOCK, libc::SIGCHLD);
            // SAFETY: PR_SET_PDEATHSIG takes integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // The supervisor closes its descriptors before the kernel looks for the children
            // to signal: dead before the prctl, it hung the pipe up; after, SIGKILL comes.
            if hung_up(&alive_read) {
                // SAFETY: _exit takes an integer and ends the process; nothing needs to run
                // first (the socket files stay for the next daemon to replace as stale).
                unsafe { libc::_exit(1) };
            }
            Ok(Forked::Child)
        }
        pid => {
            // Open until the supervisor exits (it never returns).
            std::mem::forget(alive_write);
            Ok(Forked::Parent(pid))
        }
    }
}

/// `pipe2(O_CLOEXEC)`: the read end and the write end.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is writable for the two descriptors pipe2 stores on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether every write end of the pipe `read_end` was closed (checked without waiting).
fn hung_up(read_end: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout returns at once.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}

/// The capabilities the supervisor keeps once the daemon runs (the first only with a duty).
const SUPERVISOR_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_SYS_PTRACE,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
];

/// More work for the supervisor, on descriptors it polls besides its signals (the
/// truncation guard's relay: see `guard::relay`).
pub trait SupervisorDuty {
    /// The daemon (the child) started with this process id.
    fn started(&mut self, child: libc::pid_t);
    /// The descriptors to poll for input.
    fn fds(&self) -> Vec<RawFd>;
    /// `fd`, one of [`SupervisorDuty::fds`], has input (or hung up).
    fn ready(&mut self, fd: RawFd);
}

/// `signalfd` of the supervised signals (blocked since `fork`).
fn signal_fd() -> io::Result<OwnedFd> {
    let set = supervised_signals();
    // SAFETY: `set` is an initialised signal set; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The next supervised signal: from `sigfd` once it is readable, else by `sigwait`.
fn next_signal(sigfd: Option<&OwnedFd>) -> Option<libc::c_int> {
    match sigfd {
        Some(fd) => {
            // SAFETY: all-zero is a valid signalfd_siginfo (plain integers).
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let len = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: read writes at most `len` bytes into `info`, which is that large.
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    len,
                )
            };
            (n == len as isize).then_some(info.ssi_signo as libc::c_int)
        }
        None => {
            let set = supervised_signals();
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` a valid out pointer; the signals in
            // `set` are blocked in this (only) thread since `fork`.
            (unsafe { libc::sigwait(&set, &mut sig) } == 0).then_some(sig)
        }
    }
}

/// Polls `sigfd` and `duty`'s descriptors; returns once `sigfd` is readable, after serving the
/// duty's ready descriptors.
fn wait_for_signal(sigfd: &OwnedFd, duty: &mut dyn SupervisorDuty) {
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(sigfd.as_raw_fd())
            .chain(duty.fds())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll reads and writes the `fds.len()` entries of `fds`, a live vector.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        for p in &fds[1..] {
            if p.revents != 0 {
                duty.ready(p.fd);
            }
        }
        if fds[0].revents != 0 {
            return;
        }
    }
}

/// The supervisor's life: forwards SIGTERM and SIGINT to `child`, serves `duty`, and once the
/// child ended runs `on_exit` and ends the same way.
pub(super) fn supervise(
    child: libc::pid_t,
    on_exit: &dyn Fn(),
    mut duty: Option<Box<dyn SupervisorDuty>>,
) -> ! {
    if let Some(d) = duty.as_mut() {
        d.started(child);
    }
    // The supervisor keeps only what it still does: remove the socket files, and with a duty
    // (the guard's relay) read a truncating process's /proc/<tid>/syscall and memory.
    let keep = match duty {
        Some(_) => SUPERVISOR_CAPS,
        None => &SUPERVISOR_CAPS[1..],
    };
    if let Err(e) = crate::capabilities::drop_all_but(&keep.iter().copied().collect(), None) {
        log::warn!("supervisor: {e}");
    }
    // A duty the supervisor cannot serve would leave the daemon waiting for it (the guard's
    // events unanswered): the daemon is stopped instead.
    let sigfd = match duty {
        Some(_) => match signal_fd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::error!("supervisor: cannot watch signals ({e}); stopping the daemon");
                // SAFETY: kill takes integers; `child` is this process's unreaped child.
                unsafe { libc::kill(child, libc::SIGKILL) };
                let mut status = 0;
                // SAFETY: waitpid writes the status into a valid out pointer.
                unsafe { libc::waitpid(child, &mut status, 0) };
                on_exit();
                finish(ExitAs::Code(1));
            }
        },
        None => None,
    };
    loop {
        if let (Some(fd), Some(d)) = (&sigfd, duty.as_deref_mut()) {
            wait_for_signal(fd, d);
        }
        let Some(sig) = next_signal(sigfd.as_ref()) else {
            continue;
        };
        if sig != libc::SIGCHLD {
            // SAFETY: kill takes integers only; `child` is this process's child, not yet
            // reaped, so its id cannot name another process.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into `status`, a valid out pointer.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            drop(duty.take());
            on_exit();
            finish(exit_as(status));
        }
    }
}

/// Ends the process with `how`.
fn finish(how: ExitAs) -> ! {
    match how {
        ExitAs::Code(code) => std::process::exit(code),
        ExitAs::Signal(sig) => {
            // SAFETY: resetting a signal to its default action and raising it take integers
            // only; the default action of the signals a child dies of ends this process too
            // (those that dump core never come here: see `exit_as`).
            unsafe { libc::signal(sig, libc::SIG_DFL) };
            mask_one(libc::SIG_UNBLOCK, sig);
            // SAFETY: as above.
            unsafe { libc::raise(sig) };
            std::process::exit(128 + sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_become_the_same_ending() {
        // Linux's encoding: exit code in bits 8..16, signal in bits 0..7, core flag 0x80.
        assert_eq!(exit_as(0), ExitAs::Code(0));
        assert_eq!(exit_as(3 << 8), ExitAs::Code(3));
        assert_eq!(exit_as(libc::SIGKILL), ExitAs::Signal(libc::SIGKILL));
        assert_eq!(exit_as(libc::SIGTERM), ExitAs::Signal(libc::SIGTERM));
        assert_eq!(exit_as(libc::SIGINT), ExitAs::Signal(libc::SIGINT));
        // Signals that dump core: an exit code, not a core of the supervisor.
        assert_eq!(
            exit_as(0x80 | libc::SIGSYS),
            ExitAs::Code(128 + libc::SIGSYS)
        );
        assert_eq!(exit_as(libc::SIGSYS), ExitAs::Code(159));
        assert_eq!(exit_as(0x80 | libc::SIGSEGV), ExitAs::Code(139));
        assert_eq!(exit_as(libc::SIGABRT), ExitAs::Code(134));
        // Stopped (only with WUNTRACED, which the supervisor does not ask for).
        assert_eq!(exit_as(0x137f), ExitAs::Code(1));
    }

    #[test]
    fn a_pipe_tells_whether_its_writer_is_gone() {
        let (read_end, write_end) = pipe().expect("pipe");
        assert!(!hung_up(&read_end), "the writer is alive");
        drop(write_end);
        assert!(hung_up(&read_end), "the writer is gone");
    }
}
