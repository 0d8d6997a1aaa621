//! `vfsdaxd`: parses options, binds the socket, enters the sandbox, opens the share, installs
//! the seccomp filter, serves one frontend connection and exits when the frontend goes away or
//! on SIGTERM/SIGINT.

use std::mem::ManuallyDrop;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vfsdax_daemon::backend::{DeviceConfig, FsBackend};
use vfsdax_daemon::capabilities;
use vfsdax_daemon::cli::syslog::SyslogLogger;
use vfsdax_daemon::cli::{self, CacheMode, Options, TruncateGuard, TruncateGuardAction};
use vfsdax_daemon::dax::Guarding;
use vfsdax_daemon::filesystem::FileSystem;
use vfsdax_daemon::guard::{EventSink, GuardEvent, GuardSetup, TruncationGuard};
use vfsdax_daemon::guest_log;
use vfsdax_daemon::passthrough::xattrmap::XattrMap;
use vfsdax_daemon::passthrough::{CachePolicy, PassthroughConfig, PassthroughFs};
use vfsdax_daemon::sandbox::{self, SandboxMode, SocketFiles};
use vfsdax_daemon::seccomp::Filter;
use vfsdax_daemon::server::{Server, ServerOptions};
use vfsdax_daemon::socket::{self, ListenSocket};
use vfsdax_daemon::systemd;
use vfsdax_protocol::guard::GuardAction;

/// Largest virtqueue the device accepts.
const QUEUE_SIZE: u16 = 1024;
/// Largest WRITE the guest may send.
const MAX_WRITE: u32 = 1 << 20;

fn main() -> ExitCode {
    let opts = cli::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if opts.print_capabilities {
        println!("{}", cli::capabilities_json());
        return ExitCode::SUCCESS;
    }
    init_logging(&opts);
    for w in opts.warnings() {
        log::warn!("{w}");
    }
    // What the command line (`-o` translated) came to.
    log::debug!("{opts:?}");
    // A request that panics is answered EIO and the queue goes on (the server contains it);
    // the guest may cause many, so their lines are rate-limited like every guest-triggered one.
    std::panic::set_hook(Box::new(|info| {
        vfsdax_daemon::guest_log!(log::Level::Error, "{info}");
    }));
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr: through the logger unless it is off.
            if log::log_enabled!(log::Level::Error) {
                log::error!("{e}");
            } else {
                eprintln!("vfsdaxd: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `--syslog`: records go to `/dev/log`, connected now, before the sandbox and the seccomp
/// filter (inside them the path is gone and `connect` is not allowed); without it, or if
/// `/dev/log` cannot be reached (then with a warning, as virtiofsd), to standard error.
fn init_logging(opts: &Options) {
    let mut fallback = None;
    if opts.syslog {
        let pid = std::process::id();
        match SyslogLogger::connect(
            cli::syslog::DEV_LOG.as_ref(),
            "vfsdaxd",
            pid,
            opts.log_level,
        ) {
            Ok(logger) => match logger.install() {
                Ok(()) => return,
                Err(e) => fallback = Some(e.to_string()),
            },
            Err(e) => fallback = Some(e.to_string()),
        }
    }
    env_logger::Builder::new()
        .filter_level(opts.log_level)
        .format_target(false)
        .init();
    if let Some(e) = fallback {
        log::warn!(
            "--syslog: cannot connect to {}: {e}; logging to standard error",
            cli::syslog::DEV_LOG
        );
    }
}

/// Error chain rendered as one line: "a: b: c".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

fn run(opts: Options) -> Result<(), String> {
    opts.validate().map_err(|e| e.to_string())?;
    raise_nofile(opts.rlimit_nofile);
    drop_supplementary_groups()?;
    let shared_dir = opts.shared_dir.clone().ok_or("--shared-dir is needed")?;
    // SIGTERM/SIGINT stay pending from before the socket exists until the signal thread (or
    // the sandbox's supervisor) waits for them: a signal sent as soon as the socket appears
    // ends the daemon cleanly, not by the default action.
    block_shutdown_signals();

    // The socket and its lock live outside the share: made before the sandbox, they last
    // until the daemon exits.
    let mut listening = listen(&opts)?;
    // From here on files are created with the guest's mode and umask alone (as virtiofsd):
    // a fix-up after the fact would have to find the file again by name.
    // SAFETY: umask only sets this process's file mode creation mask; it cannot fail.
    unsafe { libc::umask(0) };
    let sandboxed = opts.sandbox != SandboxMode::None;
    if sandboxed {
        // systemd's notify socket is a path (or an abstract name) outside the sandbox.
        notify_ready();
    }
    // Before any thread starts: a thread keeps the namespaces and root it started with.
    // Under namespace a supervisor stays outside; it removes the socket files if the daemon
    // could not (killed).
    let files = listening.files.clone();
    let on_exit = move || {
        if let Some(files) = &files {
            files.remove();
        }
    };
    // The guard's fanotify group needs CAP_SYS_ADMIN: made before the capabilities go.
    let mut guard_setup =
        (opts.cache_size > 0 && opts.truncate_guard != TruncateGuard::Off).then(GuardSetup::open);
    // Under namespace the supervisor reads the guard's events: it sees the truncating host
    // processes the daemon's PID namespace hides.
    let duty: Option<Box<dyn sandbox::SupervisorDuty>> = match guard_setup.as_mut() {
        Some(setup) if opts.sandbox == SandboxMode::Namespace => setup
            .relay()
            .map_err(|e| format!("cannot relay the truncation guard's events: {e}"))?
            .map(|r| Box::new(r) as Box<dyn sandbox::SupervisorDuty>),
        _ => None,
    };
    // Opened before the sandbox: its path may be outside the share.
    let guard_reports = match (&guard_setup, &opts.truncate_guard_reports) {
        (Some(_), Some(path)) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        ),
        _ => None,
    };
    let sandbox = sandbox::enter(opts.sandbox, &shared_dir, &on_exit, duty, &mut guard_setup)
        .map_err(|e| chain(&e))?;
    if sandboxed {
        log::info!(
            "sandbox entered (--sandbox {}): {} is the root",
            format!("{:?}", opts.sandbox).to_lowercase(),
            shared_dir.display()
        );
    }
    // Still one thread: every thread started from here on inherits the reduced sets.
    let keep = capabilities::keep(&opts.modcaps.0);
    let kept =
        capabilities::drop_all_but(&keep, sandbox.proc_self_fd.as_ref()).map_err(|e| chain(&e))?;
    log::info!(
        "capabilities kept: {}",
        capabilities::names(&kept).join(" ")
    );
    let fs_cfg = PassthroughConfig {
        cache: match opts.cache {
            CacheMode::Auto => CachePolicy::Auto,
            CacheMode::Always => CachePolicy::Always,
            CacheMode::Never => CachePolicy::Never,
            CacheMode::Metadata => CachePolicy::Metadata,
        },
        xattr: opts.xattr_enabled(),
        xattr_map: opts
            .xattrmap
            .clone()
            .unwrap_or_else(XattrMap::default_policy),
        readonly: opts.readonly,
        announce_submounts: opts.announces_submounts(),
        writeback: opts.writeback,
        allow_direct_io: opts.allow_direct_io,
        deny_device_nodes: opts.deny_device_nodes,
        killpriv_v2: opts.killpriv_v2,
        readdirplus: opts.readdirplus(),
        allow_mmap: opts.allow_mmap,
        dax_window: opts.cache_size,
        dax_policy: opts.dax_policy,
        ..PassthroughConfig::new(sandbox.share)
    };
    // Opened inside the sandbox, as its root: every inode descriptor lies under the root.
    let fs = match sandbox.proc_self_fd {
        Some(proc_self_fd) => PassthroughFs::with_proc_self_fd(fs_cfg, proc_self_fd),
        None => PassthroughFs::new(fs_cfg),
    }
    .map_err(|e| format!("cannot share {}: {}", shared_dir.display(), chain(&e)))?;
    let server = Arc::new(Server::new(
        fs,
        ServerOptions {
            dax_window_size: opts.cache_size,
            max_write: MAX_WRITE,
            writeback: opts.writeback,
            announce_submounts: opts.announces_submounts(),
            xattr: opts.xattr_enabled(),
            inode_dax: opts.cache_size > 0,
        },
    ));
    let backend = FsBackend::new(
        server.clone(),
        DeviceConfig {
            tag: opts.tag.clone(),
            num_request_queues: opts.num_request_queues,
            queue_size: QUEUE_SIZE,
            cache_size: opts.cache_size,
            thread_pool_size: opts.thread_pool_size,
        },
    )
    .map_err(|e| chain(&e))?;

    // Before seccomp (and before capabilities go): creating the fanotify groups needs
    // CAP_SYS_ADMIN.
    let _guard = start_truncation_guard(guard_setup, guard_reports, &opts, &server, &backend)?;

    if !sandboxed {
        notify_ready();
    }

    let shutdown: Arc<Mutex<Option<ShutdownHandle>>> = Arc::new(Mutex::new(None));
    spawn_signal_thread(shutdown.clone(), listening.files.clone())?;

    // From here on every thread, those running now and those started later, is confined.
    if let Some(filter) = Filter::new(opts.seccomp).map_err(|e| chain(&e))? {
        filter.apply().map_err(|e| chain(&e))?;
        log::info!(
            "seccomp filter installed (--seccomp {})",
            format!("{:?}", opts.seccomp).to_lowercase()
        );
    }

    let mut daemon = VhostUserDaemon::new(
        "vfsdaxd".to_string(),
        Arc::new(backend),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| format!("cannot create the vhost-user device: {e}"))?;
    log::info!(
        "sharing {} on {}, waiting for the frontend",
        shared_dir.display(),
        opts.socket_path.as_deref().map_or_else(
            || format!("fd {}", opts.fd.unwrap_or(-1)),
            |p| p.display().to_string()
        )
    );
    daemon
        .start(&mut listening.socket.listener)
        .map_err(|e| format!("cannot accept the frontend: {e}"))?;
    *shutdown.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
    log::info!("frontend connected");
    let result = daemon.wait();
    // The queue threads run until told to stop; the device goes away with the connection.
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    // The frontend is gone with its window: forget the mappings, nothing to unmap.
    server.fs().destroy(&vfsdax_daemon::dax::NoMapper);
    log_dax_stats(&server);
    if let Some(g) = &_guard {
        let s = g.stats();
        log::info!(
            "truncation guard: {} truncations handled before they took effect, {} after; {} \
             chunks cut, {} failures, {} files not guarded before a truncation, {} permission \
             events answered",
            s.before,
            s.after,
            s.chunks_cut,
            s.failures,
            s.unguarded_files,
            s.events
        );
    }
    drop(listening);
    match result {
        // A frontend that goes away (the VM shut down) ends the session normally.
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => {
            log::info!("frontend disconnected, exiting");
            Ok(())
        }
        Err(e) => Err(format!("vhost-user connection failed: {e}")),
    }
}

/// The listening socket. Its files are removed through a descriptor of their directory, never
/// by path: inside the sandbox the path names something else (under `chroot`, a file of the
/// share), so the [`ListenSocket`] is never dropped (its descriptors close at exit).
struct Listening {
    socket: ManuallyDrop<ListenSocket>,
    files: Option<Arc<SocketFiles>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The lock is still held: a daemon starting now saw it locked or finds it gone.
        if let Some(files) = &self.files {
            files.remove();
        }
    }
}

/// Starts the truncation guard for a DAX window (`--truncate-guard`, on by default); its
/// reports are logged as JSON lines, rate-limited (a guest can trigger them). A guard that
/// cannot start is an error under `--truncate-guard required` (the daemon must not serve DAX
/// unguarded), a logged one under `on`. With `reports`, every report is also appended there.
fn start_truncation_guard(
    setup: Option<GuardSetup>,
    reports: Option<std::fs::File>,
    opts: &Options,
    server: &Server<PassthroughFs>,
    backend: &FsBackend<PassthroughFs>,
) -> Result<Option<TruncationGuard>, String> {
    let Some(dax) = server.fs().dax_shared() else {
        return Ok(None);
    };
    if opts.truncate_guard == TruncateGuard::Off {
        log::info!("truncation guard off (--truncate-guard off): a host truncation under a live DAX mapping reaches the VMM");
        return Ok(None);
    }
    let Some(setup) = setup else {
        return Ok(None);
    };
    let action = match opts.truncate_guard_action {
        TruncateGuardAction::Zero => GuardAction::Zero,
        TruncateGuardAction::Unmap => GuardAction::Unmap,
    };
    let sink: EventSink = Box::new(move |ev| match ev {
        GuardEvent::Report(r) => {
            let json = serde_json::to_string(&r).unwrap_or_default();
            if let Some(mut f) = reports.as_ref() {
                // One write per line to an O_APPEND file: lines from several threads (the
                // guard's worker, the FUSE threads' own truncations) do not interleave.
                if let Err(e) = std::io::Write::write_all(&mut f, format!("{json}\n").as_bytes()) {
                    guest_log!(
                        log::Level::Error,
                        "truncation guard: cannot write a report: {e}"
                    );
                }
            }
            guest_log!(log::Level::Warn, "truncation guard: {json}");
        }
        GuardEvent::Unguarded {
            file,
            path,
            guarding,
            reason,
        } => guest_log!(
            log::Level::Warn,
            "truncation guard: {} (dev {} ino {}) can be guarded {}: {reason}",
            path.as_deref().unwrap_or("a mapped file"),
            file.dev,
            file.ino,
            match guarding {
                Guarding::After => "only after a truncation took effect",
                _ => "not at all",
            }
        ),
        GuardEvent::Failed { file, error } => guest_log!(
            log::Level::Error,
            "truncation guard: the frontend refused a change of the window for dev {} ino {}: \
             {error}",
            file.dev,
            file.ino
        ),
    });
    let required = opts.truncate_guard == TruncateGuard::Required;
    let proc_self_fd = server.fs().proc_self_fd().ok();
    match TruncationGuard::start(
        setup,
        dax,
        backend.mapper(),
        action,
        required,
        proc_self_fd,
        sink,
    ) {
        Ok(g) => {
            for e in g.setup_errors() {
                log::warn!("truncation guard: {e}");
            }
            server.fs().set_truncation_hook(g.hook());
            log::info!(
                "truncation guard on ({}, {}): {}",
                if required { "required" } else { "on" },
                format!("{action:?}").to_lowercase(),
                if g.can_guard_before() {
                    "truncations are made safe before they take effect where the filesystem \
                     has pre-content events"
                } else {
                    "truncations are only seen after they took effect"
                }
            );
            Ok(Some(g))
        }
        Err(e) => guard_start_failed(opts.truncate_guard, &chain(&e)),
    }
}

/// What a truncation guard that could not start means for the daemon: it does not serve under
/// `--truncate-guard required`; under `on` it serves DAX unguarded and says so.
fn guard_start_failed(mode: TruncateGuard, error: &str) -> Result<Option<TruncationGuard>, String> {
    if mode == TruncateGuard::Required {
        return Err(format!(
            "cannot start the truncation guard, which --truncate-guard required asks for: \
             {error} (--truncate-guard on serves DAX without it)"
        ));
    }
    log::error!(
        "cannot start the truncation guard: {error}; DAX mappings are served unguarded \
         (--truncate-guard required refuses to serve instead)"
    );
    Ok(None)
}

/// One line with what the DAX window served in this session (nothing without a window).
fn log_dax_stats(server: &Server<PassthroughFs>) {
    if let Some(dax) = server.fs().dax_state() {
        let s = dax.stats();
        log::info!(
            "DAX: {} SETUPMAPPING served ({} refused), {} REMOVEMAPPING; {} chunks mapped, {} \
             reused, {} unmapped",
            s.setups,
            s.setups_refused,
            s.removes,
            s.chunks_mapped,
            s.chunks_reused,
            s.chunks_unmapped
        );
    }
}

/// Binds `--socket-path` (giving it to `--socket-group`) or takes over `--fd`.
fn listen(opts: &Options) -> Result<Listening, String> {
    match (&opts.socket_path, opts.fd) {
        (Some(path), _) => {
            let socket = socket::bind(path).map_err(|e| chain(&e))?;
            // Still outside the sandbox: on this error the socket may go by path.
            let files = SocketFiles::new(path, &socket::lock_path(path))
                .map_err(|e| format!("cannot open the directory of {}: {e}", path.display()))?;
            let listening = Listening {
                socket: ManuallyDrop::new(socket),
                files: Some(Arc::new(files)),
            };
            if let Some(group) = &opts.socket_group {
                socket::set_group(path, group).map_err(|e| chain(&e))?;
            }
            Ok(listening)
        }
        (None, Some(fd)) => Ok(Listening {
            socket: ManuallyDrop::new(socket::from_fd(fd).map_err(|e| chain(&e))?),
            files: None,
        }),
        (None, None) => Err("either --socket-path or --fd is needed".into()),
    }
}

/// Tells systemd the daemon is ready (`Type=notify`), if it was started that way.
fn notify_ready() {
    if let Err(e) = systemd::notify("READY=1") {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Drops root's supplementary groups: requests run with the caller's fsuid/fsgid while
/// creating files, and a leftover supplementary group would grant access the caller lacks.
fn drop_supplementary_groups() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    // SAFETY: a zero-length list with a null pointer is the documented way to clear the list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(format!(
            "cannot drop supplementary groups: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Raises the soft open-file limit to `want`, or to the hard limit.
fn raise_nofile(want: Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` into `lim`, which is valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let target = want.unwrap_or(lim.rlim_max);
    if target <= lim.rlim_cur {
        return;
    }
    let new = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max.max(target),
    };
    // SAFETY: setrlimit only reads the `struct rlimit` passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        log::warn!(
            "cannot raise the open-file limit to {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads and children it starts).
fn block_shutdown_signals() {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers to it;
    // pthread_sigmask reads it and changes only this thread's mask.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Blocks SIGTERM and SIGINT in every thread and waits for them on a thread of their own:
/// once connected, a signal shuts the connection down cleanly; before, it removes the socket
/// file and exits.
fn spawn_signal_thread(
    shutdown: Arc<Mutex<Option<ShutdownHandle>>>,
    socket_files: Option<Arc<SocketFiles>>,
) -> Result<(), String> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds valid signal numbers
    // to that initialised set; pthread_sigmask reads it and changes only this thread's mask,
    // which the threads spawned later inherit.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        set.assume_init()
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            log::info!("signal {sig}: shutting down");
            match shutdown.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(handle) => handle.shutdown(),
                None => {
                    if let Some(files) = &socket_files {
                        files.remove();
                    }
                    std::process::exit(0);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_that_cannot_start_stops_the_daemon_only_when_required() {
        match guard_start_failed(TruncateGuard::Required, "no eventfd") {
            Err(e) => assert!(
                e.contains("no eventfd") && e.contains("--truncate-guard required"),
                "{e}"
            ),
            Ok(_) => panic!("required serves without its guard"),
        }
        assert!(matches!(
            guard_start_failed(TruncateGuard::On, "no eventfd"),
            Ok(None)
        ));
    }
}
