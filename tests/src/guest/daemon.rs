//! Starting and stopping a vhost-user-fs daemon (`vfsdaxd`, or the reference `virtiofsd`).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process;

/// Errors starting a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The daemon named by `VFSDAX_DAEMON` is not an executable.
    #[error("{0} (VFSDAX_DAEMON) is not an executable")]
    NotBuilt(PathBuf),
    /// Our own daemon could not be built.
    #[error("cannot provide vfsdaxd")]
    Build(#[from] crate::bins::BuildError),
    /// The program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The daemon binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file for the daemon (its log, a stale socket) could not be handled.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before its socket appeared.
    #[error("{program} exited ({status}) before creating {socket}; its stderr:\n{stderr}")]
    Exited {
        /// The daemon binary.
        program: PathBuf,
        /// The socket it should have created.
        socket: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The socket did not appear in time.
    #[error("{program} did not create {socket} within {timeout:?}; its stderr:\n{stderr}")]
    NoSocket {
        /// The daemon binary.
        program: PathBuf,
        /// The socket it should have created.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// What it printed.
        stderr: String,
    },
}

/// The command line `vfsdaxd` and `virtiofsd` both understand for serving `shared_dir` on
/// `socket` with the `--cache` mode `cache` (`never`, `auto`, `always`, `metadata`) and their
/// secure defaults (`--sandbox namespace --seccomp kill`, capabilities dropped). No `--tag`: the tag comes from QEMU's `-device ...,tag=`, and a
/// daemon that offers the CONFIG protocol feature crashes QEMU 7.1–8.0.
pub fn virtiofs_args(socket: &Path, shared_dir: &Path, cache: &str) -> Vec<OsString> {
    vec![
        "--socket-path".into(),
        socket.into(),
        "--shared-dir".into(),
        shared_dir.into(),
        "--cache".into(),
        cache.into(),
    ]
}

/// The cargo profile directory (e.g. `target/debug`) the running executable was built into:
/// its own directory, or the parent of `deps/` for test binaries.
pub fn profile_dir_of(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir.parent().map(Path::to_owned)
    } else {
        Some(dir.to_owned())
    }
}

/// Our `vfsdaxd`: `$VFSDAX_DAEMON` if set, else `vfsdaxd` in the running executable's cargo
/// profile directory (tests run from `target/debug/deps/`), built first if it is missing or
/// older than its sources ([`crate::bins`]).
pub fn vfsdaxd_path() -> Result<PathBuf, DaemonError> {
    let path = match std::env::var_os("VFSDAX_DAEMON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::bins::built(crate::bins::Bin::Vfsdaxd)?,
    };
    if process::is_executable(&path) {
        Ok(path)
    } else {
        Err(DaemonError::NotBuilt(path))
    }
}

/// The reference peer `virtiofsd`: on `PATH`, or in `~/.cargo/bin`.
pub fn virtiofsd_path() -> Option<PathBuf> {
    process::find_in_path("virtiofsd").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/virtiofsd");
        process::is_executable(&p).then_some(p)
    })
}

/// A running daemon; it is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    program: PathBuf,
    socket: PathBuf,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `program args...` with stdout and stderr going to `stderr_path`, and waits up to
    /// `timeout` for it to create the Unix socket `socket` (a stale one is removed first).
    pub fn start(
        program: &Path,
        args: &[OsString],
        socket: &Path,
        stderr_path: &Path,
        timeout: Duration,
    ) -> Result<Self, DaemonError> {
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| DaemonError::Prepare { path, source }
        };
        match fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(prepare(socket)(e)),
            _ => {}
        }
        let log = fs::File::create(stderr_path).map_err(prepare(stderr_path))?;
        let log2 = log.try_clone().map_err(prepare(stderr_path))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(|source| DaemonError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let mut daemon = Daemon {
            child,
            program: program.to_owned(),
            socket: socket.to_owned(),
            stderr_path: stderr_path.to_owned(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(DaemonError::Exited {
                    program: daemon.program.clone(),
                    socket: daemon.socket.clone(),
                    status,
                    stderr: daemon.stderr(),
                });
            }
            let is_socket = fs::symlink_metadata(socket)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if is_socket {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::NoSocket {
                    program: daemon.program.clone(),
                    socket: daemon.socket.clone(),
                    timeout,
                    stderr: daemon.stderr(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon has printed so far (stdout and stderr).
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether it has exited, and how (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `grace` for the daemon to exit by itself (as it should once its frontend
    /// disconnects), then stops it. Returns its exit status if it exited by itself.
    pub fn wait_or_stop(mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        process::terminate(&mut self.child, Duration::from_secs(3));
        let _ = fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_from_test_and_bin_locations() {
        assert_eq!(
            profile_dir_of(Path::new("/r/target/debug/deps/real_guest-0123")),
            Some(PathBuf::from("/r/target/debug"))
        );
        assert_eq!(
            profile_dir_of(Path::new("/r/target/debug/guest-demo")),
            Some(PathBuf::from("/r/target/debug"))
        );
    }

    #[test]
    fn daemon_args_are_virtiofsd_compatible() {
        let args = virtiofs_args(Path::new("/s.sock"), Path::new("/share"), "never");
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "--socket-path /s.sock --shared-dir /share --cache never"
        );
        assert!(!args.contains(&"--tag"));
    }

    #[test]
    fn start_reports_an_early_exit_with_its_output() {
        let dir = crate::guest::scratch::ScratchDir::new("daemon-test").unwrap();
        let err = Daemon::start(
            Path::new("/bin/sh"),
            &["-c".into(), "echo bad flag >&2; exit 3".into()],
            &dir.path().join("s.sock"),
            &dir.path().join("stderr"),
            Duration::from_secs(10),
        )
        .err()
        .expect("sh exits without creating a socket");
        let msg = err.to_string();
        assert!(msg.contains("bad flag") && msg.contains("exited"), "{msg}");
    }
}
