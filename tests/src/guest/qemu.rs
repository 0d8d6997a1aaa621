//! Running `qemu-system-x86_64` (TCG) with a vhost-user-fs device, a hard timeout, and the serial
//! console captured to a file; finding the QEMU >= 11.1 whose generic vhost-user device gives the
//! guest a DAX window ([`FsDevice::Generic`], installed by `scripts/deps.sh`).

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
    /// The DAX-capable QEMU is not there.
    #[error("{0} does not exist or is not executable")]
    NoDaxQemu(PathBuf),
    /// `<qemu> --version` could not be run.
    #[error("cannot run {program} --version")]
    Version {
        /// The QEMU binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `<qemu> --version` did not print a `QEMU emulator version X.Y.Z` line.
    #[error("{program} --version does not say which QEMU it is: {output:?}")]
    UnknownVersion {
        /// The QEMU binary.
        program: PathBuf,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// The QEMU is older than [`DAX_QEMU_MIN`].
    #[error("{program} is QEMU {version}, older than {DAX_QEMU_MIN}")]
    TooOld {
        /// The QEMU binary.
        program: PathBuf,
        /// Its version.
        version: QemuVersion,
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

/// A QEMU version, as `qemu-system-x86_64 --version` prints it (`QEMU emulator version X.Y.Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// X.
    pub major: u32,
    /// Y.
    pub minor: u32,
    /// Z (0 when QEMU prints only `X.Y`).
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The oldest QEMU with the generic vhost-user device the DAX tests use
/// ([`FsDevice::Generic`]): 11.1.
pub const DAX_QEMU_MIN: QemuVersion = QemuVersion {
    major: 11,
    minor: 1,
    micro: 0,
};

/// Finds the version in the output of `qemu-system-x86_64 --version`: the first line
/// `QEMU emulator version X.Y[.Z]`, whatever follows (such as ` (Debian 1:11.1.3+ds-1)`).
pub fn parse_qemu_version(output: &str) -> Option<QemuVersion> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("QEMU emulator version ")?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let mut parts = rest[..end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let micro = match parts.next() {
            Some(z) => z.parse().ok()?,
            None => 0,
        };
        Some(QemuVersion {
            major,
            minor,
            micro,
        })
    })
}

/// Runs `<qemu> --version` and parses what it prints ([`parse_qemu_version`]).
pub fn qemu_version(qemu: &Path) -> Result<QemuVersion, QemuError> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QemuError::Version {
            program: qemu.to_owned(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    parse_qemu_version(&text).ok_or_else(|| QemuError::UnknownVersion {
        program: qemu.to_owned(),
        output: text.trim_end().to_owned(),
    })
}

/// The directory `scripts/deps.sh` installs QEMU from Debian sid into: `$VFSDAX_QEMU_SID_DIR`,
/// or `target/qemu-sid/` under the workspace.
pub fn qemu_sid_dir() -> PathBuf {
    match std::env::var_os("VFSDAX_QEMU_SID_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target")
                .join("qemu-sid")
        }
    }
}

/// Where the DAX-capable QEMU should be: `$VFSDAX_QEMU_DAX`, else the wrapper `vfsdax-qemu` in
/// [`qemu_sid_dir`]. Whether it is there and new enough is [`find_dax_qemu`]'s business.
pub fn dax_qemu_path() -> PathBuf {
    match std::env::var_os("VFSDAX_QEMU_DAX") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => qemu_sid_dir().join("vfsdax-qemu"),
    }
}

/// Finds the QEMU for [`FsDevice::Generic`] ([`dax_qemu_path`]) and checks that it is at least
/// [`DAX_QEMU_MIN`]; returns it with its version.
pub fn find_dax_qemu() -> Result<(PathBuf, QemuVersion), QemuError> {
    let qemu = dax_qemu_path();
    if !process::is_executable(&qemu) {
        return Err(QemuError::NoDaxQemu(qemu));
    }
    let version = qemu_version(&qemu)?;
    if version < DAX_QEMU_MIN {
        return Err(QemuError::TooOld {
            program: qemu,
            version,
        });
    }
    Ok((qemu, version))
}

/// The virtio-fs device QEMU gives the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsDevice {
    /// `vhost-user-fs-pci,queue-size=1024,chardev=c0,tag=<tag>`: the tag is on QEMU's command
    /// line and the guest gets no DAX window (QEMU 7.2 has no shared-memory regions for
    /// vhost-user). The daemon must not be given `--tag`.
    #[default]
    VhostUserFs,
    /// The generic vhost-user device of QEMU >= 11.1 ([`DAX_QEMU_MIN`]) as a virtio-fs device:
    /// `vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024`
    /// (a high-priority and one request queue; the config space is the 36-byte tag and the
    /// number of request queues). The daemon supplies the tag from its config space, so it
    /// must run with `--tag <tag>`, and the DAX window as a shared-memory region (its
    /// `--cache-size`).
    Generic,
}

impl FsDevice {
    /// The value of QEMU's `-device` for this device on chardev `c0`; `tag` is used only by
    /// [`FsDevice::VhostUserFs`].
    pub fn device_arg(self, tag: &str) -> String {
        match self {
            FsDevice::VhostUserFs => {
                format!("vhost-user-fs-pci,queue-size=1024,chardev=c0,tag={tag}")
            }
            FsDevice::Generic => "vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,\
                                  config_size=40,vq_size=1024"
                .to_owned(),
        }
    }

    /// Whether the daemon must announce the tag itself (`--tag`).
    pub fn daemon_needs_tag(self) -> bool {
        self == FsDevice::Generic
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
    /// The virtio-fs device.
    pub device: FsDevice,
    /// The virtio-fs tag the device announces (on the command line for
    /// [`FsDevice::VhostUserFs`]; [`FsDevice::Generic`] gets it from the daemon).
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
        push(&self.device.device_arg(&self.tag));
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

    fn config(device: FsDevice) -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            append: "quiet vfsdax.mode=demo".into(),
            socket: "/run/s.sock".into(),
            device,
            tag: "share".into(),
            mem_mib: 1024,
            serial_log: "/tmp/serial.log".into(),
            qemu_log: "/tmp/qemu.log".into(),
            pidfile: "/tmp/qemu.pid".into(),
            timeout: Duration::from_secs(1),
        }
    }

    fn args_of(cfg: &QemuConfig) -> Vec<String> {
        cfg.args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// What every command line needs, whatever the device.
    const COMMON: [&str; 12] = [
        "-accel tcg",
        "-M q35",
        "-m 1024M",
        "-object memory-backend-memfd,id=mem,size=1024M,share=on",
        "-numa node,memdev=mem",
        "-chardev socket,id=c0,path=/run/s.sock",
        "-serial file:/tmp/serial.log",
        "-pidfile /tmp/qemu.pid",
        "-kernel /k/vmlinuz",
        "-initrd /k/initrd",
        "-no-reboot",
        "-nodefaults",
    ];

    #[test]
    fn command_line_has_what_vhost_user_fs_needs() {
        let cfg = config(FsDevice::default());
        let args = args_of(&cfg);
        let joined = args.join(" ");
        for want in COMMON
            .iter()
            .chain(&["-device vhost-user-fs-pci,queue-size=1024,chardev=c0,tag=share"])
        {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert_eq!(args.last().unwrap(), "console=ttyS0 quiet vfsdax.mode=demo");
        assert!(!FsDevice::VhostUserFs.daemon_needs_tag());
    }

    #[test]
    fn command_line_for_the_generic_device_has_no_tag() {
        let cfg = config(FsDevice::Generic);
        let args = args_of(&cfg);
        let joined = args.join(" ");
        for want in COMMON.iter().chain(&[
            "-device vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,\
             config_size=40,vq_size=1024",
        ]) {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert_eq!(args.iter().filter(|a| *a == "-device").count(), 1);
        assert!(!joined.contains("tag="), "{joined}");
        assert!(!joined.contains("vhost-user-fs-pci"), "{joined}");
        assert_eq!(args.last().unwrap(), "console=ttyS0 quiet vfsdax.mode=demo");
        assert!(FsDevice::Generic.daemon_needs_tag());
    }

    fn v(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    #[test]
    fn parses_qemu_versions() {
        let sid = "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)\n\
                   Copyright (c) 2003-2026 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(parse_qemu_version(sid), Some(v(11, 1, 3)));
        let bookworm = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n";
        assert_eq!(parse_qemu_version(bookworm), Some(v(7, 2, 22)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 11.1.50 (v11.1.0-123-gabc)\n"),
            Some(v(11, 1, 50))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 12.0\n"),
            Some(v(12, 0, 0))
        );
        // A warning before the version line.
        assert_eq!(
            parse_qemu_version("warning: something\r\nQEMU emulator version 11.2.0\r\n"),
            Some(v(11, 2, 0))
        );
        for bad in [
            "",
            "qemu-system-x86_64: command not found",
            "QEMU emulator version \n",
            "QEMU emulator version eleven\n",
            "QEMU emulator version 11\n",
            "QEMU emulator version 11.x.1\n",
            "QEMU emulator version 99999999999.1.0\n",
        ] {
            assert_eq!(parse_qemu_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dax_needs_qemu_11_1() {
        assert_eq!(DAX_QEMU_MIN.to_string(), "11.1.0");
        assert!(v(11, 1, 0) >= DAX_QEMU_MIN);
        assert!(v(11, 1, 3) >= DAX_QEMU_MIN);
        assert!(v(12, 0, 0) >= DAX_QEMU_MIN);
        assert!(v(11, 0, 99) < DAX_QEMU_MIN);
        assert!(v(7, 2, 22) < DAX_QEMU_MIN);
        assert!(v(10, 9, 0) < DAX_QEMU_MIN);
    }

    #[test]
    fn version_of_a_program_that_is_not_qemu() {
        let err = qemu_version(Path::new("/bin/true")).unwrap_err();
        assert!(matches!(err, QemuError::UnknownVersion { .. }), "{err}");
        let err = qemu_version(Path::new("/nonexistent/vfsdax-qemu")).unwrap_err();
        assert!(matches!(err, QemuError::Version { .. }), "{err}");
    }
}
