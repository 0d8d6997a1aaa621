//! Shared helpers of the in-process vhost-user frontend harness (`tests/tests/harness_*.rs`):
//! start the real daemon on a temporary socket and share, connect the host-side driver
//! ([`vfsdax_driver`]) to it, and compare replies with the host filesystem.
//!
//! The daemon is `vfsdaxd` in the cargo profile directory of the test binary (built first when it
//! is missing or stale, [`crate::bins`]), or the program named by the environment variable
//! `VFSDAX_DAEMON` (e.g. the reference peer virtiofsd).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vfsdax_driver::{ClientError, ClientOptions, FsClient, RawReply};

/// Environment variable naming another daemon program to test.
pub const DAEMON_ENV: &str = "VFSDAX_DAEMON";

/// Errors of the harness set-up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The daemon named by `VFSDAX_DAEMON` does not exist.
    #[error("daemon binary {0} (VFSDAX_DAEMON) not found")]
    NoDaemon(PathBuf),
    /// `vfsdaxd` could not be built.
    #[error("cannot provide vfsdaxd")]
    Build(#[source] crate::bins::BuildError),
    /// A temporary directory could not be made.
    #[error("cannot create the temporary directory {path}")]
    TempDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before listening.
    #[error("the daemon exited ({status}) before creating its socket; its log:\n{log}")]
    EarlyExit {
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        log: String,
    },
    /// The socket did not appear in time.
    #[error("the daemon did not create {0} within 10 s")]
    NoSocket(PathBuf),
    /// Connecting the driver failed.
    #[error("the driver could not connect")]
    Connect(#[source] ClientError),
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Result<Self, HarnessError> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates a fresh, empty directory under `parent` whose name starts with `prefix`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self, HarnessError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| HarnessError::TempDir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The daemon program: `$VFSDAX_DAEMON`, else `vfsdaxd` in the test binary's cargo profile
/// directory (test binaries run from `target/debug/deps`), built first if it is missing or
/// older than its sources.
pub fn daemon_program() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os(DAEMON_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::NoDaemon(p))
        };
    }
    crate::bins::built(crate::bins::Bin::Vfsdaxd).map_err(HarnessError::Build)
}

/// Whether the daemon under test is the reference peer virtiofsd (for printing known
/// differences; assertions stay those of the vfsdax spec).
pub fn peer_is_virtiofsd() -> bool {
    daemon_program()
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().contains("virtiofsd"))
        })
        .unwrap_or(false)
}

/// How to start the daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Pass `--xattr`.
    pub xattr: bool,
    /// More arguments.
    pub extra_args: Vec<String>,
    /// Where the temporary directory (share, socket, log) is made (default: the system temp
    /// dir; say `/dev/shm` for a share on tmpfs).
    pub temp_in: Option<PathBuf>,
}

/// The temporary directory of one daemon: the share (`share/`, empty), a directory next to it
/// (`outside/`), and the paths of the socket (`vhost.sock`) and of the daemon's log
/// (`daemon.log`). Removed with the [`Daemon`] that gets it.
#[derive(Debug)]
pub struct DaemonDirs {
    /// The directory holding the rest.
    pub tmp: TempDir,
    /// The share.
    pub share: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The daemon's output.
    pub log: PathBuf,
}

impl DaemonDirs {
    /// Makes them under `parent` (default: the system temp dir).
    pub fn new(parent: Option<&Path>) -> Result<Self, HarnessError> {
        let tmp = match parent {
            Some(parent) => TempDir::new_in(parent, "vfsdax-harness")?,
            None => TempDir::new("vfsdax-harness")?,
        };
        let share = tmp.path().join("share");
        let mk = |p: &Path| {
            std::fs::create_dir(p).map_err(|source| HarnessError::TempDir {
                path: p.to_path_buf(),
                source,
            })
        };
        mk(&share)?;
        mk(&tmp.path().join("outside"))?;
        Ok(DaemonDirs {
            share,
            socket: tmp.path().join("vhost.sock"),
            log: tmp.path().join("daemon.log"),
            tmp,
        })
    }
}

/// A running daemon on a temporary socket, sharing a temporary directory.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    share: PathBuf,
    log: PathBuf,
    tmp: TempDir,
    /// Under `--sandbox namespace` the process started supervises the one that serves.
    supervised: bool,
}

/// The `--sandbox` mode `args` select (the last one given; the default is `namespace`, for
/// vfsdaxd as for virtiofsd).
pub fn sandbox_mode(args: &[String]) -> String {
    let mut mode = "namespace".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--sandbox" {
            if let Some(v) = it.next() {
                mode = v.clone();
            }
        } else if let Some(v) = a.strip_prefix("--sandbox=") {
            mode = v.to_string();
        }
    }
    mode
}

/// Whether the tests run as root (the daemon then holds capabilities to drop).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The children of process `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Daemon {
    /// Starts the daemon and waits for its socket.
    pub fn start(opts: &DaemonOptions) -> Result<Self, HarnessError> {
        let program = daemon_program()?;
        let dirs = DaemonDirs::new(opts.temp_in.as_deref())?;
        let mut cmd = Command::new(&program);
        cmd.arg("--socket-path")
            .arg(&dirs.socket)
            .arg("--shared-dir")
            .arg(&dirs.share)
            .args(["--cache", "never"])
            .args(["--log-level", "debug"]);
        if opts.xattr {
            cmd.arg("--xattr");
        }
        if !running_as_root() && !opts.extra_args.iter().any(|a| a.starts_with("--sandbox")) {
            // The default sandbox needs root: an unprivileged developer's run uses none.
            eprintln!("not root: the daemon runs with --sandbox none (its default needs root)");
            cmd.args(["--sandbox", "none"]);
        }
        cmd.args(&opts.extra_args);
        Self::spawn(cmd, dirs)
    }

    /// Starts `cmd`, which serves `dirs.share` on `dirs.socket` (the daemon, or a program that
    /// runs it, such as `systemd-socket-activate`), with its standard output and error going to
    /// `dirs.log`, and waits for the socket. The process is killed when the [`Daemon`] is
    /// dropped.
    pub fn spawn(mut cmd: Command, dirs: DaemonDirs) -> Result<Self, HarnessError> {
        let DaemonDirs {
            tmp,
            share,
            socket,
            log,
        } = dirs;
        let logfile = File::create(&log).map_err(|source| HarnessError::TempDir {
            path: log.clone(),
            source,
        })?;
        let logfile2 = logfile
            .try_clone()
            .map_err(|source| HarnessError::TempDir {
                path: log.clone(),
                source,
            })?;
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let supervised = sandbox_mode(&args) == "namespace";
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(logfile))
            .stderr(Stdio::from(logfile2));
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: PathBuf::from(cmd.get_program()),
            source,
        })?;
        let mut d = Daemon {
            child,
            socket,
            share,
            log,
            tmp,
            supervised,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(HarnessError::EarlyExit {
                    status,
                    log: d.log_text(),
                });
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NoSocket(d.socket.clone()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// Connects the driver with `opts` (INIT not sent yet).
    pub fn connect(&self, opts: ClientOptions) -> Result<FsClient, HarnessError> {
        FsClient::connect(&self.socket, opts).map_err(HarnessError::Connect)
    }

    /// The shared directory on the host.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// A directory next to the share, outside it (for escape tests).
    pub fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// The process started (under `--sandbox namespace`, the supervisor: signals go here).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process that serves (for its descriptors, threads, capabilities and seccomp state in
    /// `/proc/<pid>`): under `--sandbox namespace` the supervisor's only child (waited for up
    /// to 10 s: the socket exists before the fork), else the process started.
    pub fn serving_pid(&self) -> u32 {
        let pid = self.child.id();
        if !self.supervised {
            return pid;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let [child] = children(pid)[..] {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor {pid} has no single serving child after 10 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the daemon to exit; its exit status, or `None` if it is still
    /// running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// The vhost-user socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The serving child of a supervisor dies of its parent's death (PR_SET_PDEATHSIG):
        // waited for too, so a test ends with no daemon of its own left.
        let served_by = self.supervised.then(|| children(self.child.id()));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        for pid in served_by.unwrap_or_default() {
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A daemon with an initialised driver connected to it.
#[derive(Debug)]
pub struct Session {
    /// The driver (dropped before the daemon).
    pub client: FsClient,
    /// The daemon.
    pub daemon: Daemon,
}

impl Session {
    /// Starts a daemon, connects with `copts` and sends INIT.
    pub fn start_with(dopts: &DaemonOptions, copts: ClientOptions) -> Self {
        let daemon = match Daemon::start(dopts) {
            Ok(d) => d,
            Err(e) => panic!("{}", error_chain(&e)),
        };
        Self::attach(daemon, copts)
    }

    /// Connects to a started daemon with `copts` and sends INIT.
    pub fn attach(daemon: Daemon, copts: ClientOptions) -> Self {
        let mut client = match daemon.connect(copts) {
            Ok(c) => c,
            Err(e) => panic!("{}\ndaemon log:\n{}", error_chain(&e), daemon.log_text()),
        };
        if let Err(e) = client.init() {
            panic!(
                "INIT failed: {}\ndaemon log:\n{}",
                error_chain(&e),
                daemon.log_text()
            );
        }
        Session { client, daemon }
    }

    /// Starts a default daemon and client.
    pub fn start() -> Self {
        Self::start_with(&DaemonOptions::default(), ClientOptions::default())
    }

    /// A path inside the share.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.daemon.share().join(rel)
    }

    /// Asserts the daemon is alive and still answers GETATTR on the root.
    #[track_caller]
    pub fn assert_serving(&mut self) {
        assert!(
            self.daemon.is_alive(),
            "daemon died; log:\n{}",
            self.daemon.log_text()
        );
        let root = std::fs::metadata(self.daemon.share()).expect("stat share");
        match self.client.getattr(vfsdax_protocol::fuse::ROOT_ID, None) {
            Ok(a) => assert_eq!(a.attr.ino, root.ino(), "GETATTR root after bad input"),
            Err(e) => panic!(
                "GETATTR on the root failed after bad input: {}\ndaemon log:\n{}",
                error_chain(&e),
                self.daemon.log_text()
            ),
        }
    }
}

/// The errno of a failed request, panicking with the error if it is not an error reply.
#[track_caller]
pub fn expect_errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error reply, got success: {v:?}"),
        Err(e) => e
            .errno()
            .unwrap_or_else(|| panic!("expected an error reply, got: {}", error_chain(&e))),
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What happened to a hand-made (bad) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply whose header carries this errno (and, if it could, the request's unique).
    ErrorReply {
        /// The errno.
        errno: i32,
        /// The reply's unique.
        unique: u64,
    },
    /// A success reply (never acceptable for bad input).
    Success(RawReply),
    /// The chain came back with nothing written.
    Dropped,
    /// The chain came back with fewer bytes than a reply header.
    Garbage(RawReply),
    /// The chain was not returned within the timeout.
    NotReturned,
}

/// Classifies the result of [`FsClient::send_raw`] / [`FsClient::raw_chain`].
pub fn classify(r: Result<RawReply, ClientError>) -> Outcome {
    match r {
        Ok(raw) if raw.used_len == 0 => Outcome::Dropped,
        Ok(raw) => match raw.header() {
            Some(h) if h.error < 0 && h.len == raw.used_len => Outcome::ErrorReply {
                errno: -h.error,
                unique: h.unique,
            },
            Some(h) if h.error == 0 => Outcome::Success(raw),
            _ => Outcome::Garbage(raw),
        },
        Err(ClientError::Queue(vfsdax_driver::queue::QueueError::Timeout(_))) => {
            Outcome::NotReturned
        }
        Err(e) => panic!("driver error on a raw request: {}", error_chain(&e)),
    }
}

/// Builds a raw request: a `fuse_in_header` with the given fields followed by `body`.
pub fn raw_request(len: u32, opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    use vm_memory::ByteValued;
    let h = vfsdax_protocol::fuse::InHeader {
        len,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut v = h.as_slice().to_vec();
    v.extend_from_slice(body);
    v
}

/// A reproducible byte pattern of `len` bytes (different for each `seed`).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
