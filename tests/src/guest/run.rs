//! One guest run end to end: initramfs, daemon, QEMU, serial markers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::daemon::{self, Daemon, DaemonError};
use super::initramfs::{self, InitramfsError};
use super::kernel::{self, GuestKernel, KernelError};
use super::qemu::{self, FsDevice, QemuConfig, QemuError, QemuOutcome};
use super::serial::{self, SerialReport};

/// Errors setting up or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// QEMU is not installed.
    #[error("qemu-system-x86_64 not found (install qemu-system-x86: scripts/deps.sh)")]
    NoQemu,
    /// No QEMU new enough for the DAX window ([`qemu::find_dax_qemu`]).
    #[error(
        "no QEMU >= {} for the DAX window (run scripts/deps.sh, or set VFSDAX_QEMU_DAX)",
        qemu::DAX_QEMU_MIN
    )]
    NoDaxQemu(#[source] QemuError),
    /// The mount options cannot go on the kernel command line.
    #[error("mount options {0:?} cannot go on the guest's kernel command line (no spaces, quotes or empty options)")]
    BadMountOpts(String),
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
    /// The DAX checks (tests/guest/dax.sh), for a guest with a DAX window
    /// ([`FsDevice::Generic`], mounted with `dax=...`).
    Dax,
    /// The truncation repro (tests/guest/repro.sh, [`super::repro`]).
    Repro,
    /// Time sequential and random reads of a 64 MiB file and print `BENCHNS` lines and
    /// `DATA dax` (tests/guest/daxbench.sh, `guest-dax-bench`).
    DaxBench,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 6] = [
        Mode::Workload,
        Mode::Demo,
        Mode::Bench,
        Mode::Dax,
        Mode::Repro,
        Mode::DaxBench,
    ];

    /// The name on the kernel command line (`vfsdax.mode=`); `/init` runs `/<name>.sh`
    /// ([`initramfs::MODE_SCRIPTS`]).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Workload => "workload",
            Mode::Demo => "demo",
            Mode::Bench => "bench",
            Mode::Dax => "dax",
            Mode::Repro => "repro",
            Mode::DaxBench => "daxbench",
        }
    }
}

/// What is needed on the host to boot a guest.
#[derive(Debug, Clone)]
pub struct GuestSetup {
    /// `qemu-system-x86_64` (for [`GuestSetup::detect_dax`], the QEMU >= 11.1 of
    /// `scripts/deps.sh`).
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

    /// Like [`GuestSetup::detect`], but with the QEMU that can give the guest a DAX window
    /// ([`qemu::find_dax_qemu`]: `$VFSDAX_QEMU_DAX`, else `vfsdax-qemu` in
    /// `$VFSDAX_QEMU_SID_DIR` or `target/qemu-sid/`, at least [`qemu::DAX_QEMU_MIN`]); run it
    /// with [`RunOptions::device`] set to [`FsDevice::Generic`].
    pub fn detect_dax() -> Result<Self, GuestError> {
        let (qemu, _version) = qemu::find_dax_qemu().map_err(GuestError::NoDaxQemu)?;
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
    /// The virtio-fs device; with [`FsDevice::Generic`] (which needs the QEMU of
    /// [`GuestSetup::detect_dax`]) the daemon is given `--tag <tag>`.
    pub device: FsDevice,
    /// Options for the guest's `mount -t virtiofs -o ...` (e.g. `dax=always`), passed as
    /// `vfsdax.mountopts=` on the kernel command line; `None` mounts without `-o`.
    pub mount_opts: Option<String>,
    /// Extra executables for the initramfs: (path inside it, host file), packed with mode 0755
    /// (missing parent directories are added).
    pub extra_files: Vec<(String, PathBuf)>,
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
    /// Defaults for `mode`: tag `vfsdax`, `vhost-user-fs-pci`, no mount options, no extra
    /// files, 1 GiB, `--cache never`, a timeout of `$VFSDAX_GUEST_TIMEOUT` seconds or 240 s
    /// (TCG on a busy 2-core machine is slow).
    pub fn new(mode: Mode) -> Self {
        let secs = std::env::var("VFSDAX_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240);
        Self {
            mode,
            tag: "vfsdax".into(),
            device: FsDevice::default(),
            mount_opts: None,
            extra_files: Vec::new(),
            mem_mib: 1024,
            timeout: Duration::from_secs(secs),
            daemon_start_timeout: Duration::from_secs(20),
            cache: "never".into(),
            daemon_args: Vec::new(),
        }
    }

    /// The guest's kernel command line after `console=ttyS0`.
    fn kernel_append(&self) -> Result<String, GuestError> {
        let mut append = format!(
            "quiet panic=-1 vfsdax.mode={} vfsdax.tag={}",
            self.mode.name(),
            self.tag
        );
        if let Some(opts) = &self.mount_opts {
            let bad = |c: char| c.is_whitespace() || c == '"' || c == '\'';
            if opts.is_empty() || opts.contains(bad) || opts.split(',').any(str::is_empty) {
                return Err(GuestError::BadMountOpts(opts.clone()));
            }
            append.push_str(" vfsdax.mountopts=");
            append.push_str(opts);
        }
        Ok(append)
    }

    /// The daemon's arguments: [`daemon::virtiofs_args`] with `cache`, `--tag` if the device
    /// needs it, then `daemon_args`.
    fn daemon_command_args(&self, socket: &Path, share: &Path) -> Vec<OsString> {
        let mut args = daemon::virtiofs_args(socket, share, &self.cache);
        if self.device.daemon_needs_tag() {
            args.push("--tag".into());
            args.push(self.tag.clone().into());
        }
        args.extend(self.daemon_args.iter().cloned());
        args
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
    /// Errors of the host's actions on `VFSDAX WAIT` lines ([`run_guest_with`]).
    pub host_errors: Vec<String>,
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

/// Boots a guest whose virtio-fs device (`opts.device`) is served by `daemon_program` (started
/// with [`daemon::virtiofs_args`] on `share` with `opts.cache`, `--tag` for
/// [`FsDevice::Generic`], plus `opts.daemon_args`), runs `opts.mode` after mounting with
/// `opts.mount_opts`, and returns what happened. `work` holds the socket, the logs and the
/// initramfs (with `opts.extra_files`). Steps that fail inside the guest are in the report,
/// not errors.
pub fn run_guest(
    setup: &GuestSetup,
    daemon_program: &Path,
    share: &Path,
    opts: &RunOptions,
    work: &Path,
) -> Result<GuestRun, GuestError> {
    run_guest_with(setup, daemon_program, share, opts, work, |_| Ok(()))
}

/// The prefix of the line a guest prints to let the host act before it goes on: `VFSDAX WAIT
/// <path>`. The host runs its action, then creates the file `<share>/<basename of path>`, which
/// the guest waits for (tests/guest/daxtool.c `hold`).
pub const WAIT_MARKER: &str = "VFSDAX WAIT ";

/// [`run_guest`], calling `on_wait(name)` once for every `VFSDAX WAIT <path>` line the guest
/// prints (`name` is the path's last component) while it runs, and then creating
/// `<share>/<name>` so the guest goes on. An action's error is kept in
/// [`GuestRun::host_errors`] (the guest is let go all the same).
pub fn run_guest_with(
    setup: &GuestSetup,
    daemon_program: &Path,
    share: &Path,
    opts: &RunOptions,
    work: &Path,
    mut on_wait: impl FnMut(&str) -> Result<(), String>,
) -> Result<GuestRun, GuestError> {
    let append = opts.kernel_append()?;
    let initrd = work.join("initramfs.cpio");
    initramfs::build_initramfs(
        &setup.busybox,
        &setup.kernel.modules,
        &opts.extra_files,
        &initrd,
    )?;
    let socket = work.join("vhost.sock");
    let args = opts.daemon_command_args(&socket, share);
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
        append,
        socket,
        device: opts.device,
        tag: opts.tag.clone(),
        mem_mib: opts.mem_mib,
        serial_log: work.join("serial.log"),
        qemu_log: work.join("qemu.log"),
        pidfile: work.join("qemu.pid"),
        timeout: opts.timeout,
    };
    let mut daemon = daemon;
    let mut seen = std::collections::BTreeSet::new();
    let mut host_errors = Vec::new();
    let serial_log = cfg.serial_log.clone();
    let outcome = cfg.run_watching(|| {
        if daemon.try_status().is_some() {
            return true;
        }
        let text = std::fs::read(&serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        for name in wait_requests(&text) {
            if seen.insert(name.clone()) {
                if let Err(e) = on_wait(&name) {
                    host_errors.push(format!("{name}: {e}"));
                }
                if let Err(e) = std::fs::write(share.join(&name), b"") {
                    host_errors.push(format!("{name}: cannot create the go-ahead file: {e}"));
                }
            }
        }
        false
    })?;
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
        host_errors,
    })
}

/// The names of the `VFSDAX WAIT <path>` requests in a serial log, in order: each path's last
/// component (a plain file name; anything else is ignored).
pub fn wait_requests(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix(WAIT_MARKER))
        .filter_map(|p| p.trim().rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(str::to_owned)
        .collect()
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

    #[test]
    fn wait_requests_are_plain_names() {
        let serial = "boot\r\nVFSDAX WAIT /mnt/go-1\r\nMMAP 00\nVFSDAX WAIT go-2\n\
                      VFSDAX WAIT /mnt/..\nVFSDAX WAIT \n  VFSDAX WAIT /mnt/go-1\n";
        assert_eq!(wait_requests(serial), ["go-1", "go-2", "go-1"]);
    }

    fn strings(args: &[OsString]) -> String {
        let v: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        v.join(" ")
    }

    #[test]
    fn defaults_keep_the_vhost_user_fs_path() {
        let opts = RunOptions::new(Mode::Workload);
        assert_eq!(opts.device, FsDevice::VhostUserFs);
        assert_eq!(
            opts.kernel_append().unwrap(),
            "quiet panic=-1 vfsdax.mode=workload vfsdax.tag=vfsdax"
        );
        let args = opts.daemon_command_args(Path::new("/s.sock"), Path::new("/share"));
        assert_eq!(
            strings(&args),
            "--socket-path /s.sock --shared-dir /share --cache never"
        );
    }

    #[test]
    fn the_generic_device_gives_the_daemon_the_tag() {
        let mut opts = RunOptions::new(Mode::Dax);
        opts.device = FsDevice::Generic;
        opts.tag = "share0".into();
        opts.daemon_args = vec!["--cache-size".into(), "256M".into()];
        opts.mount_opts = Some("dax=always".into());
        let args = opts.daemon_command_args(Path::new("/s.sock"), Path::new("/share"));
        assert_eq!(
            strings(&args),
            "--socket-path /s.sock --shared-dir /share --cache never --tag share0 \
             --cache-size 256M"
        );
        assert_eq!(
            opts.kernel_append().unwrap(),
            "quiet panic=-1 vfsdax.mode=dax vfsdax.tag=share0 vfsdax.mountopts=dax=always"
        );
    }

    #[test]
    fn mount_options_must_fit_the_kernel_command_line() {
        let mut opts = RunOptions::new(Mode::Demo);
        for bad in ["", "dax=always ro", "a,,b", "dax=\"x\"", "x='y'", ",dax"] {
            opts.mount_opts = Some(bad.into());
            let err = opts.kernel_append().unwrap_err();
            assert!(matches!(err, GuestError::BadMountOpts(_)), "{bad:?}: {err}");
        }
        opts.mount_opts = Some("dax=inode,ro".into());
        assert!(opts
            .kernel_append()
            .unwrap()
            .ends_with(" vfsdax.mountopts=dax=inode,ro"));
    }
}
