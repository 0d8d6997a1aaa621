//! The truncation repro on a stock VMM: a real guest task maps a DAX file and reads it, a host
//! process truncates the file, the task reads the same page again (tests/guest/repro.sh).
//! With QEMU 11.1 and nothing in between, QEMU dies of SIGBUS and the whole VM is gone; the
//! outcome says so in one line a script can check ([`ReproOutcome::line`]).
//!
//! Used by `guest-repro` (scripts/repro-truncate-qemu.sh) and the tests.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use super::helper::{build_static_helper, HelperError};
use super::qemu::FsDevice;
use super::run::{run_guest_with, GuestError, GuestRun, GuestSetup, Mode, RunOptions};
use super::scratch::ScratchDir;

/// Errors running the repro (what happens to the VM is the outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// The scratch directory or the share's files could not be made.
    #[error("cannot prepare the share")]
    Share(#[source] std::io::Error),
    /// The guest helper could not be built.
    #[error("cannot build the guest helper daxtool")]
    Helper(#[source] HelperError),
    /// The guest could not be run.
    #[error("cannot run the guest")]
    Guest(#[source] GuestError),
}

/// Size of the file the guest maps: 8 MiB, a whole number of 2 MiB chunks (so QEMU 11.1 can
/// map it).
pub const VICTIM_SIZE: u64 = 8 << 20;

/// What happened to the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmFate {
    /// QEMU was killed by a signal (SIGBUS: 7, what a shell reports as exit 135).
    KilledBySignal(i32),
    /// QEMU exited with this status code after the guest powered off.
    Exited(i32),
    /// QEMU hung until the timeout.
    Hung,
}

/// What happened to the guest task that touched the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFate {
    /// It got SIGBUS (what a host process gets for a truncated mapping).
    Sigbus,
    /// It read these 16 bytes (hex) from the page.
    Read(String),
    /// It never reported (the VM died first).
    Unknown,
}

/// The repro's outcome, from the guest's serial log and QEMU's exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReproOutcome {
    /// The VM.
    pub vm: VmFate,
    /// The task.
    pub task: TaskFate,
    /// Whether the guest read a file from the share after the task's access.
    pub share_serving: bool,
    /// The 16 bytes (hex) the task read before the truncation, if it got that far.
    pub before: Option<String>,
}

impl ReproOutcome {
    /// Reads the outcome from the serial log and QEMU's exit status (`None`: killed by the
    /// harness at the timeout).
    pub fn classify(serial: &str, status: Option<std::process::ExitStatus>) -> ReproOutcome {
        let vm = match status {
            None => VmFate::Hung,
            Some(s) => match (s.signal(), s.code()) {
                (Some(sig), _) => VmFate::KilledBySignal(sig),
                (None, Some(code)) => VmFate::Exited(code),
                (None, None) => VmFate::Hung,
            },
        };
        let mut dumps = Vec::new();
        let mut task = TaskFate::Unknown;
        let mut share_serving = false;
        for line in serial.lines().map(str::trim) {
            if line == "MMAP SIGBUS" {
                task = TaskFate::Sigbus;
            } else if let Some(h) = line.strip_prefix("MMAP ") {
                dumps.push(h.trim().to_owned());
            } else if line.starts_with("REPRO SHARE ok") {
                share_serving = true;
            }
        }
        if task == TaskFate::Unknown && dumps.len() >= 2 {
            task = TaskFate::Read(dumps[1].clone());
        }
        ReproOutcome {
            vm,
            task,
            share_serving,
            before: dumps.first().cloned(),
        }
    }

    /// Whether the VM survived the truncation (the guest powered off by itself).
    pub fn vm_alive(&self) -> bool {
        self.vm == VmFate::Exited(0)
    }

    /// One line for scripts: `vm=alive|killed|hung qemu=... task=... share=...`.
    pub fn line(&self) -> String {
        let (vm, qemu) = match &self.vm {
            VmFate::KilledBySignal(7) => ("killed", "SIGBUS(exit-135)".to_string()),
            VmFate::KilledBySignal(s) => ("killed", format!("signal-{s}(exit-{})", 128 + s)),
            VmFate::Exited(0) => ("alive", "exit-0".to_string()),
            VmFate::Exited(c) => ("exited", format!("exit-{c}")),
            VmFate::Hung => ("hung", "timeout".to_string()),
        };
        let task = match &self.task {
            TaskFate::Sigbus => "SIGBUS".to_string(),
            TaskFate::Read(h) if h.bytes().all(|b| b == b'0') => "read-zeros".to_string(),
            TaskFate::Read(h) => format!("read-{h}"),
            TaskFate::Unknown => "none".to_string(),
        };
        let share = if self.share_serving {
            "serving"
        } else {
            "unknown"
        };
        format!("vm={vm} qemu={qemu} task={task} share={share}")
    }
}

/// A finished repro: the outcome and the whole run (logs).
pub struct Repro {
    /// The outcome.
    pub outcome: ReproOutcome,
    /// The guest run, with the serial, QEMU and daemon logs.
    pub run: GuestRun,
    /// How the host truncation went (`truncate -s 0`): its exit status or why it failed.
    pub truncate: Result<std::process::ExitStatus, String>,
}

/// Runs the repro: `daemon_program` with `--cache-size 256M --dax-policy always` and
/// `daemon_args` serves a share
/// holding an 8 MiB `victim` to a QEMU >= 11.1 guest (`setup` from
/// [`GuestSetup::detect_dax`]) mounted with `-o dax=inode` (`--dax-policy always` marks the
/// victim); the host truncates `victim` to 0
/// with `truncate(1)` while the guest task holds its mapping. `work` holds everything.
pub fn run_repro(
    setup: &GuestSetup,
    daemon_program: &Path,
    daemon_args: &[String],
    work: &ScratchDir,
) -> Result<Repro, ReproError> {
    let share = work.path().join("share");
    std::fs::create_dir_all(&share).map_err(ReproError::Share)?;
    let victim = share.join("victim");
    let data: Vec<u8> = (0..VICTIM_SIZE).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&victim, data).map_err(ReproError::Share)?;
    std::fs::write(share.join("alive"), "the share still serves\n").map_err(ReproError::Share)?;
    let daxtool = work.path().join("daxtool");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/daxtool.c");
    build_static_helper(&src, &daxtool).map_err(ReproError::Helper)?;

    let mut opts = RunOptions::new(Mode::Repro);
    opts.device = FsDevice::Generic;
    // The set-up the README recommends with QEMU 11.1: per-file DAX, the victim (a whole
    // number of 2 MiB chunks) marked, the small `alive` file through the page cache.
    opts.mount_opts = Some("dax=inode".into());
    opts.cache = "auto".into();
    opts.extra_files = vec![("bin/daxtool".into(), daxtool)];
    opts.daemon_args = ["--cache-size", "256M", "--dax-policy", "always"]
        .iter()
        .map(|s| s.to_string())
        .chain(daemon_args.iter().cloned())
        .map(Into::into)
        .collect();
    let mut truncate = Err("the guest never asked for the truncation".to_string());
    let run = run_guest_with(setup, daemon_program, &share, &opts, work.path(), |name| {
        if name != "go-truncate" {
            return Err(format!("unexpected wait {name}"));
        }
        // A host process, as a user or another program would do it.
        truncate = Command::new("truncate")
            .args(["-s", "0"])
            .arg(&victim)
            .status()
            .map_err(|e| format!("cannot run truncate: {e}"));
        match &truncate {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("truncate failed: {s}")),
            Err(e) => Err(e.clone()),
        }
    })
    .map_err(ReproError::Guest)?;
    let outcome = ReproOutcome::classify(&run.qemu.serial, run.qemu.status);
    Ok(Repro {
        outcome,
        run,
        truncate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn qemu_killed_by_sigbus() {
        let serial = "VFSDAX BOOTED 1.2\nMMAP 0102030405060708090a0b0c0d0e0f10\n\
                      VFSDAX WAIT /mnt/go-truncate\n";
        // A raw wait status with signal 7 and no exit code.
        let o = ReproOutcome::classify(serial, Some(ExitStatus::from_raw(7)));
        assert_eq!(o.vm, VmFate::KilledBySignal(7));
        assert_eq!(o.task, TaskFate::Unknown);
        assert!(!o.vm_alive());
        assert_eq!(
            o.before.as_deref(),
            Some("0102030405060708090a0b0c0d0e0f10")
        );
        assert_eq!(
            o.line(),
            "vm=killed qemu=SIGBUS(exit-135) task=none share=unknown"
        );
    }

    #[test]
    fn vm_alive_task_sigbus_share_serving() {
        let serial = "MMAP 01\r\nVFSDAX WAIT /mnt/go-truncate\r\nMMAP SIGBUS\r\n\
                      REPRO TASK-EXIT 7\r\nREPRO SHARE ok the share still serves\r\n";
        let o = ReproOutcome::classify(serial, Some(ExitStatus::from_raw(0)));
        assert!(o.vm_alive());
        assert_eq!(o.task, TaskFate::Sigbus);
        assert!(o.share_serving);
        assert_eq!(o.line(), "vm=alive qemu=exit-0 task=SIGBUS share=serving");
    }

    #[test]
    fn task_read_zeros_or_data() {
        let zeros = "MMAP 0102\nMMAP 0000\nREPRO SHARE FAIL x\n";
        let o = ReproOutcome::classify(zeros, Some(ExitStatus::from_raw(0)));
        assert_eq!(o.task, TaskFate::Read("0000".into()));
        assert_eq!(
            o.line(),
            "vm=alive qemu=exit-0 task=read-zeros share=unknown"
        );
        let data = "MMAP 0102\nMMAP 0102\n";
        let o = ReproOutcome::classify(data, None);
        assert_eq!(
            o.line(),
            "vm=hung qemu=timeout task=read-0102 share=unknown"
        );
        // exit(3): status 3 << 8.
        let o = ReproOutcome::classify("", Some(ExitStatus::from_raw(3 << 8)));
        assert_eq!(o.vm, VmFate::Exited(3));
        assert!(o.line().starts_with("vm=exited qemu=exit-3 "));
    }
}
