//! Running `qemu-system-x86_64` (TCG) with a vhost-user-fs device, a hard timeout, and the serial
//! console captured to a file.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process;

/// Errors running QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The QEMU binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for QEMU failed.
    #[error("cannot wait for QEMU")]
    Wait(#[source] std::io::Error),
    /// A log file could not be created.
    #[error("cannot create {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How long QEMU may still run after the caller gave up on it (see
/// [`QemuConfig::run_watching`]).
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

/// Finds `qemu-system-x86_64`: `$VFSDAX_QEMU`, else on `PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    match std::env::var_os("VFSDAX_QEMU") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        _ => process::find_in_path("qemu-system-x86_64"),
    }
}

/// How to run one guest.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line after `console=ttyS0`.
    pub append: String,
    /// The vhost-user daemon's socket.
    pub socket: PathBuf,
    /// The virtio-fs tag the device announces.
    pub tag: String,
    /// Guest RAM in MiB (shared memfd so the daemon can map it).
    pub mem_mib: u32,
    /// Where the guest's serial console goes.
    pub serial_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    /// QEMU's pidfile, used to kill it for sure.
    pub pidfile: PathBuf,
    /// Hard limit on the run.
    pub timeout: Duration,
}

impl QemuConfig {
    /// The QEMU command line (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mem = self.mem_mib;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |s: &str| args.push(s.into());
        for s in ["-accel", "tcg", "-M", "q35", "-cpu", "max", "-smp", "1"] {
            push(s);
        }
        push("-m");
        push(&format!("{mem}M"));
        push("-object");
        push(&format!("memory-backend-memfd,id=mem,size={mem}M,share=on"));
        push("-numa");
        push("node,memdev=mem");
        push("-chardev");
        let mut chardev = OsString::from("socket,id=c0,path=");
        chardev.push(&self.socket);
        args.push(chardev);
        let mut push = |s: &str| args.push(s.into());
        push("-device");
        push(&format!(
            "vhost-user-fs-pci,queue-size=1024,chardev=c0,tag={}",
            self.tag
        ));
        for s in ["-nodefaults", "-display", "none", "-no-reboot"] {
            push(s);
        }
        let path_arg = |prefix: &str, p: &Path| {
            let mut s = OsString::from(prefix);
            s.push(p);
            s
        };
        args.push("-serial".into());
        args.push(path_arg("file:", &self.serial_log));
        args.push("-pidfile".into());
        args.push(self.pidfile.clone().into());
        args.push("-kernel".into());
        args.push(self.kernel.clone().into());
        args.push("-initrd".into());
        args.push(self.initrd.clone().into());
        args.push("-append".into());
        args.push(format!("console=ttyS0 {}", self.append).trim_end().into());
        args
    }

    /// Runs QEMU to completion or until the timeout; QEMU is always gone when this returns.
    pub fn run(&self) -> Result<QemuOutcome, QemuError> {
        self.run_watching(|| false)
    }

    /// Like [`QemuConfig::run`], but polls `give_up` while QEMU runs: once it returns true
    /// (say, the daemon died, so the guest would only hang), QEMU gets [`GIVE_UP_GRACE`] to
    /// exit by itself and is then killed.
    pub fn run_watching(
        &self,
        mut give_up: impl FnMut() -> bool,
    ) -> Result<QemuOutcome, QemuError> {
        let log = fs::File::create(&self.qemu_log).map_err(|source| QemuError::Log {
            path: self.qemu_log.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| QemuError::Log {
            path: self.qemu_log.clone(),
            source,
        })?;
        let _ = fs::remove_file(&self.pidfile);
        let start = Instant::now();
        let child = Command::new(&self.qemu)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                program: self.qemu.clone(),
                source,
            })?;
        let mut guard = QemuGuard {
            child,
            pidfile: self.pidfile.clone(),
        };
        let deadline = start + self.timeout;
        let mut gave_up = false;
        let status = guard.wait_until(deadline, || {
            if !gave_up && give_up() {
                gave_up = true;
                return Some(Instant::now() + GIVE_UP_GRACE);
            }
            None
        })?;
        drop(guard);
        Ok(QemuOutcome {
            status,
            // QEMU that exits by itself within the grace period was shutting down anyway
            // (the daemon exits when QEMU closes the connection at power-off).
            gave_up: gave_up && status.is_none(),
            elapsed: start.elapsed(),
            serial: read_lossy(&self.serial_log),
            qemu_log: read_lossy(&self.qemu_log),
        })
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Kills QEMU (our child, and whatever its pidfile names if that is still a QEMU) when dropped.
struct QemuGuard {
    child: Child,
    pidfile: PathBuf,
}

impl QemuGuard {
    /// Waits for exit until `deadline`, which `shorten` may bring forward; `None` means QEMU
    /// was still running at the deadline.
    fn wait_until(
        &mut self,
        mut deadline: Instant,
        mut shorten: impl FnMut() -> Option<Instant>,
    ) -> Result<Option<ExitStatus>, QemuError> {
        loop {
            if let Some(status) = self.child.try_wait().map_err(QemuError::Wait)? {
                return Ok(Some(status));
            }
            if let Some(sooner) = shorten() {
                deadline = deadline.min(sooner);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        process::terminate(&mut self.child, Duration::from_secs(3));
        if let Some(pid) = process::read_pidfile(&self.pidfile) {
            if process::cmdline_contains(pid, &self.pidfile.to_string_lossy()) {
                process::kill_pid(pid);
            }
        }
        let _ = fs::remove_file(&self.pidfile);
    }
}

/// What a QEMU run produced.
#[derive(Debug, Clone)]
pub struct QemuOutcome {
    /// QEMU's exit status, or `None` if it was killed (timeout, or given up on).
    pub status: Option<ExitStatus>,
    /// Whether QEMU was killed because the caller's `give_up` check fired (and QEMU did not
    /// exit by itself within [`GIVE_UP_GRACE`]).
    pub gave_up: bool,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Everything the guest printed on its serial console.
    pub serial: String,
    /// QEMU's own output.
    pub qemu_log: String,
}

impl QemuOutcome {
    /// Whether the run was stopped by the timeout.
    pub fn timed_out(&self) -> bool {
        self.status.is_none() && !self.gave_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_what_vhost_user_fs_needs() {
        let cfg = QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            append: "quiet vfsdax.mode=demo".into(),
            socket: "/run/s.sock".into(),
            tag: "share".into(),
            mem_mib: 1024,
            serial_log: "/tmp/serial.log".into(),
            qemu_log: "/tmp/qemu.log".into(),
            pidfile: "/tmp/qemu.pid".into(),
            timeout: Duration::from_secs(1),
        };
        let args: Vec<String> = cfg
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-accel tcg",
            "-M q35",
            "-m 1024M",
            "-object memory-backend-memfd,id=mem,size=1024M,share=on",
            "-numa node,memdev=mem",
            "-chardev socket,id=c0,path=/run/s.sock",
            "-device vhost-user-fs-pci,queue-size=1024,chardev=c0,tag=share",
            "-serial file:/tmp/serial.log",
            "-pidfile /tmp/qemu.pid",
            "-kernel /k/vmlinuz",
            "-initrd /k/initrd",
            "-no-reboot",
            "-nodefaults",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert_eq!(args.last().unwrap(), "console=ttyS0 quiet vfsdax.mode=demo");
    }
}
