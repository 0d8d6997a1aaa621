//! Starting and stopping the daemons under test, with virtiofsd's command line (which vfsdaxd
//! shares): `--socket-path S --shared-dir D --cache auto [--thread-pool-size N]`, everything
//! else at its default (sandbox, seccomp), optionally pinned to CPUs with `taskset`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Errors of starting a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be made.
    #[error("cannot create the log {path}: {source}")]
    Log {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited or never made its socket.
    #[error("{program} did not come up ({why}); its log {log}:\n{text}")]
    NotUp {
        /// The program.
        program: String,
        /// What happened.
        why: String,
        /// The log path.
        log: String,
        /// The log's end.
        text: String,
    },
}

/// A daemon under test.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// Its name in the table.
    pub label: String,
    /// The program.
    pub program: PathBuf,
}

/// How to start a daemon for one configuration.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// The shared directory.
    pub share: &'a Path,
    /// The socket to create.
    pub socket: &'a Path,
    /// Where standard output and error go.
    pub log: &'a Path,
    /// `--thread-pool-size`, if not the default.
    pub pool: Option<usize>,
    /// `taskset -c` CPU list, if pinned.
    pub cpus: Option<&'a str>,
}

/// A running daemon, killed when dropped if it has not exited by then.
pub struct Running {
    child: Child,
}

impl DaemonSpec {
    /// Starts the daemon and waits (up to 10 s) for its socket.
    pub fn start(&self, l: &Launch<'_>) -> Result<Running, DaemonError> {
        let _ = std::fs::remove_file(l.socket);
        let log = File::create(l.log).map_err(|source| DaemonError::Log {
            path: l.log.display().to_string(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| DaemonError::Log {
            path: l.log.display().to_string(),
            source,
        })?;
        let mut cmd = match l.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.arg("--socket-path")
            .arg(l.socket)
            .arg("--shared-dir")
            .arg(l.share)
            .args(["--cache", "auto"]);
        if let Some(n) = l.pool {
            cmd.arg(format!("--thread-pool-size={n}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let mut r = Running { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let not_up = |why: String| DaemonError::NotUp {
            program: self.program.display().to_string(),
            why,
            log: l.log.display().to_string(),
            text: log_tail(l.log),
        };
        while !l.socket.exists() {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(not_up(format!("exited: {status}")));
            }
            if Instant::now() > deadline {
                return Err(not_up("no socket after 10 s".into()));
            }
            sleep(Duration::from_millis(5));
        }
        Ok(r)
    }
}

impl Running {
    /// Waits up to 5 s for the daemon to exit (it does once the frontend hung up), then kills
    /// it.
    pub fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last 2,000 bytes of a log.
fn log_tail(p: &Path) -> String {
    let b = std::fs::read(p).unwrap_or_default();
    String::from_utf8_lossy(&b[b.len().saturating_sub(2000)..]).into_owned()
}

/// The first line of `program --version`.
pub fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown version".into())
}
