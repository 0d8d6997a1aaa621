//! One guest run end to end: initramfs, daemon, QEMU, serial markers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::daemon::{self, Daemon, DaemonError};
use super::initramfs::{self, InitramfsError};
use super::kernel::{self, GuestKernel, KernelError};
use super::qemu::{self, QemuConfig, QemuError, QemuOutcome};
use super::serial::{self, SerialReport};

/// Errors setting up or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// QEMU is not installed.
    #[error("qemu-system-x86_64 not found (install qemu-system-x86: scripts/deps.sh)")]
    NoQemu,
    /// The guest kernel is not available.
    #[error("guest kernel unavailable")]
    Kernel(#[from] KernelError),
    /// The initramfs could not be made.
    #[error("cannot build the guest's initramfs")]
    Initramfs(#[from] InitramfsError),
    /// The daemon could not be started.
    #[error("cannot start the virtio-fs daemon")]
    Daemon(#[from] DaemonError),
    /// QEMU could not be run.
    #[error("cannot run QEMU")]
    Qemu(#[from] QemuError),
}

/// What the guest's `/init` runs after mounting the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The POSIX workload (tests/guest/workload.sh).
    Workload,
    /// List and read the share (tests/guest/demo.sh).
    Demo,
    /// Time a few workloads and print `BENCH` lines (tests/guest/bench.sh).
    Bench,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 3] = [Mode::Workload, Mode::Demo, Mode::Bench];

    /// The name on the kernel command line (`vfsdax.mode=`); `/init` runs `/<name>.sh`
    /// ([`initramfs::MODE_SCRIPTS`]).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Workload => "workload",
            Mode::Demo => "demo",
            Mode::Bench => "bench",
        }
    }
}

/// What is needed on the host to boot a guest.
#[derive(Debug, Clone)]
pub struct GuestSetup {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The guest kernel and its modules.
    pub kernel: GuestKernel,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

impl GuestSetup {
    /// Finds QEMU, the kernel extracted by `scripts/deps.sh` and busybox-static.
    pub fn detect() -> Result<Self, GuestError> {
        let qemu = qemu::find_qemu().ok_or(GuestError::NoQemu)?;
        let kernel = kernel::find_kernel(&kernel::guest_dir())?;
        let busybox = initramfs::find_busybox()?;
        Ok(Self {
            qemu,
            kernel,
            busybox,
        })
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What the guest runs.
    pub mode: Mode,
    /// The virtio-fs tag.
    pub tag: String,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Hard limit on QEMU's run.
    pub timeout: Duration,
    /// How long to wait for the daemon's socket.
    pub daemon_start_timeout: Duration,
    /// The daemon's `--cache` mode ([`daemon::virtiofs_args`]).
    pub cache: String,
    /// Arguments appended to [`daemon::virtiofs_args`] (e.g. `--cache-size 64M`).
    pub daemon_args: Vec<OsString>,
}

impl RunOptions {
    /// Defaults for `mode`: tag `vfsdax`, 1 GiB, `--cache never`, a timeout of `$VFSDAX_GUEST_TIMEOUT` seconds
    /// or 240 s (TCG on a busy 2-core machine is slow).
    pub fn new(mode: Mode) -> Self {
        let secs = std::env::var("VFSDAX_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240);
        Self {
            mode,
            tag: "vfsdax".into(),
            mem_mib: 1024,
            timeout: Duration::from_secs(secs),
            daemon_start_timeout: Duration::from_secs(20),
            cache: "never".into(),
            daemon_args: Vec::new(),
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct GuestRun {
    /// QEMU's outcome, with the serial log.
    pub qemu: QemuOutcome,
    /// The markers parsed from the serial log.
    pub report: SerialReport,
    /// What the daemon printed.
    pub daemon_log: String,
    /// The daemon's exit status if it exited by itself after QEMU went away.
    pub daemon_status: Option<ExitStatus>,
}

impl GuestRun {
    /// A summary for failure messages: how QEMU ended, the end of the serial log, QEMU's output
    /// and the end of the daemon's output.
    pub fn diagnostics(&self) -> String {
        fn tail(s: &str, lines: usize) -> String {
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(lines)..].join("\n")
        }
        let elapsed = self.qemu.elapsed;
        let ended = match self.qemu.status {
            None if self.qemu.gave_up => {
                format!("the daemon exited while the guest ran; QEMU was killed after {elapsed:?}")
            }
            None => format!("QEMU timed out after {elapsed:?} and was killed"),
            Some(s) => format!("QEMU exited ({s}) after {elapsed:?}"),
        };
        format!(
            "{ended}\n--- serial console (last 80 lines) ---\n{}\n--- QEMU output ---\n{}\n\
             --- daemon output (last 40 lines; exit: {:?}) ---\n{}\n",
            tail(&self.qemu.serial, 80),
            self.qemu.qemu_log.trim_end(),
            self.daemon_status,
            tail(&self.daemon_log, 40),
        )
    }
}

/// Boots a guest whose virtio-fs device is served by `daemon_program` (started with
/// [`daemon::virtiofs_args`] on `share` with `opts.cache`, plus `opts.daemon_args`), runs `opts.mode`, and returns what happened.
/// `work` holds the socket, the logs and the initramfs. Steps that fail inside the guest are in
/// the report, not errors.
pub fn run_guest(
    setup: &GuestSetup,
    daemon_program: &Path,
    share: &Path,
    opts: &RunOptions,
    work: &Path,
) -> Result<GuestRun, GuestError> {
    let initrd = work.join("initramfs.cpio");
    initramfs::build_initramfs(&setup.busybox, &setup.kernel.modules, &initrd)?;
    let socket = work.join("vhost.sock");
    let mut args = daemon::virtiofs_args(&socket, share, &opts.cache);
    args.extend(opts.daemon_args.iter().cloned());
    let daemon = Daemon::start(
        daemon_program,
        &args,
        &socket,
        &work.join("daemon.log"),
        opts.daemon_start_timeout,
    )?;
    let cfg = QemuConfig {
        qemu: setup.qemu.clone(),
        kernel: setup.kernel.vmlinuz.clone(),
        initrd,
        append: format!(
            "quiet panic=-1 vfsdax.mode={} vfsdax.tag={}",
            opts.mode.name(),
            opts.tag
        ),
        socket,
        tag: opts.tag.clone(),
        mem_mib: opts.mem_mib,
        serial_log: work.join("serial.log"),
        qemu_log: work.join("qemu.log"),
        pidfile: work.join("qemu.pid"),
        timeout: opts.timeout,
    };
    let mut daemon = daemon;
    let outcome = cfg.run_watching(|| daemon.try_status().is_some())?;
    let daemon_log_path = work.join("daemon.log");
    let daemon_status = daemon.wait_or_stop(Duration::from_secs(5));
    let daemon_log = std::fs::read(&daemon_log_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(GuestRun {
        report: serial::parse(&outcome.serial),
        qemu: outcome,
        daemon_log,
        daemon_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_has_a_script_in_the_initramfs() {
        for mode in Mode::ALL {
            assert!(
                initramfs::MODE_SCRIPTS
                    .iter()
                    .any(|(name, _)| *name == mode.name()),
                "no script for mode {}",
                mode.name()
            );
        }
        assert_eq!(initramfs::MODE_SCRIPTS.len(), Mode::ALL.len());
        // init.sh accepts only lower-case letters as a mode name.
        for (name, _) in initramfs::MODE_SCRIPTS {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        }
    }
}
