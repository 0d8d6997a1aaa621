//! The workspace programs the integration tests start (`vfsdaxd`, `vfsdax-vmm`), built on
//! demand.
//!
//! `cargo test` builds test targets, not the binaries of other packages: in a fresh clone
//! `target/debug/vfsdaxd` does not exist, and after an edit of the daemon it is older than its
//! sources. [`built`] finds the program in the cargo profile directory the running test binary
//! was built into (`target/debug` for `cargo test`, `target/release` for `--release`) and, when
//! it is missing or older than the sources it is built from, runs `cargo build -p PACKAGE --bin
//! NAME` with the same profile and target directory (`$CARGO`, which cargo sets for the tests it
//! runs, else `cargo` on `PATH`). A process builds each program at most once (the threads of
//! one test binary wait for the first); test processes running at the same time take turns
//! through a file lock in the target directory, and the second finds the program fresh.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::guest::daemon::profile_dir_of;

/// A program of the workspace the tests start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    /// The daemon (`vfsdax-daemon`'s `vfsdaxd`).
    Vfsdaxd,
    /// The reference VMM (`vfsdax-refvmm`'s `vfsdax-vmm`).
    VfsdaxVmm,
}

impl Bin {
    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Bin::Vfsdaxd => "vfsdaxd",
            Bin::VfsdaxVmm => "vfsdax-vmm",
        }
    }

    /// The package it belongs to.
    pub fn package(self) -> &'static str {
        match self {
            Bin::Vfsdaxd => "vfsdax-daemon",
            Bin::VfsdaxVmm => "vfsdax-refvmm",
        }
    }

    /// The workspace members (directories) it is built from.
    fn members(self) -> &'static [&'static str] {
        match self {
            Bin::Vfsdaxd => &["protocol", "daemon"],
            Bin::VfsdaxVmm => &["protocol", "vmm-glue"],
        }
    }
}

/// Why a program could not be provided.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BuildError {
    /// The running test binary's path is unknown.
    #[error("cannot locate the running test binary")]
    CurrentExe(#[source] Arc<std::io::Error>),
    /// The test binary does not lie in a cargo profile directory.
    #[error("{0} is not in a cargo target directory")]
    NoProfileDir(PathBuf),
    /// The build lock could not be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// cargo could not be started.
    #[error("cannot run `{command}` to build {bin}")]
    Spawn {
        /// The binary.
        bin: &'static str,
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// cargo failed.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// cargo succeeded but the program is not where it should be.
    #[error("`{command}` succeeded but {path} does not exist")]
    Missing {
        /// The command line.
        command: String,
        /// Where the program should be.
        path: PathBuf,
    },
}

/// The workspace root: the parent of this crate's directory (compile-time path).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The path of `bin`, built first when it is missing or older than its sources (see the module
/// documentation). The result, an error included, is kept for the rest of the process.
pub fn built(bin: Bin) -> Result<PathBuf, BuildError> {
    static DONE: Mutex<Option<HashMap<Bin, Result<PathBuf, BuildError>>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let done = done.get_or_insert_with(HashMap::new);
    if let Some(r) = done.get(&bin) {
        return r.clone();
    }
    let r = build_if_stale(bin);
    done.insert(bin, r.clone());
    r
}

/// The cargo target directory and profile directory the running executable was built into
/// (`target`, `target/debug`).
pub fn build_dirs() -> Result<(PathBuf, PathBuf), BuildError> {
    let exe = std::env::current_exe().map_err(|e| BuildError::CurrentExe(Arc::new(e)))?;
    let profile_dir = profile_dir_of(&exe).ok_or_else(|| BuildError::NoProfileDir(exe.clone()))?;
    let layout = Layout::of(&profile_dir);
    Ok((layout.target_dir, layout.profile_dir))
}

/// Where cargo puts the build of the running executable: the profile directory, the target
/// directory, and the `--target` triple when there is one (`target/<triple>/debug`).
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    profile_dir: PathBuf,
    target_dir: PathBuf,
    triple: Option<String>,
}

impl Layout {
    /// The layout of the profile directory `profile_dir`: cargo marks the target directory's
    /// root with `CACHEDIR.TAG`; one level further up, the middle one is a target triple.
    fn of(profile_dir: &Path) -> Layout {
        let parent = profile_dir.parent().unwrap_or(profile_dir);
        let grandparent = parent.parent();
        match grandparent {
            Some(g) if !parent.join("CACHEDIR.TAG").exists() && g.join("CACHEDIR.TAG").exists() => {
                Layout {
                    profile_dir: profile_dir.to_path_buf(),
                    target_dir: g.to_path_buf(),
                    triple: parent.file_name().map(|n| n.to_string_lossy().into_owned()),
                }
            }
            _ => Layout {
                profile_dir: profile_dir.to_path_buf(),
                target_dir: parent.to_path_buf(),
                triple: None,
            },
        }
    }

    /// The cargo arguments that select this profile, target and target directory.
    fn cargo_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        match self.profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => args.push("--release".to_string()),
            Some(other) => args.extend(["--profile".to_string(), other.to_string()]),
        }
        if let Some(t) = &self.triple {
            args.extend(["--target".to_string(), t.clone()]);
        }
        args.push("--target-dir".to_string());
        args.push(self.target_dir.display().to_string());
        args
    }
}

/// The newest modification time of the files `bin` is built from: the workspace manifest and
/// lock file, and each member's manifest and `src/` tree. `None` when none of them is found
/// (the sources are not next to the tests): an existing program is then taken as it is.
fn sources_mtime(root: &Path, bin: Bin) -> Option<SystemTime> {
    fn walk(path: &Path, newest: &mut Option<SystemTime>) {
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return;
        };
        if md.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    walk(&e.path(), newest);
                }
            }
        } else if let Ok(t) = md.modified() {
            *newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    }
    let mut newest = None;
    walk(&root.join("Cargo.toml"), &mut newest);
    walk(&root.join("Cargo.lock"), &mut newest);
    for member in bin.members() {
        walk(&root.join(member).join("Cargo.toml"), &mut newest);
        walk(&root.join(member).join("src"), &mut newest);
    }
    newest
}

/// Whether `path` exists and is not older than the sources.
fn fresh(path: &Path, sources: Option<SystemTime>) -> bool {
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    match (sources, md.modified()) {
        (Some(src), Ok(bin)) => bin >= src,
        _ => true,
    }
}

fn build_if_stale(bin: Bin) -> Result<PathBuf, BuildError> {
    let exe = std::env::current_exe().map_err(|e| BuildError::CurrentExe(Arc::new(e)))?;
    let profile_dir = profile_dir_of(&exe).ok_or_else(|| BuildError::NoProfileDir(exe.clone()))?;
    let layout = Layout::of(&profile_dir);
    let path = profile_dir.join(bin.name());
    let root = workspace_root();
    if fresh(&path, sources_mtime(&root, bin)) {
        return Ok(path);
    }

    // Other test processes may be here at the same time: one builds, the next finds it fresh.
    let lock_path = layout.target_dir.join(".vfsdax-tests-build.lock");
    let lock_err = |e| BuildError::Lock {
        path: lock_path.clone(),
        source: Arc::new(e),
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(lock_err)?;
    // SAFETY: flock on a descriptor `lock` owns; it takes no pointers. The lock goes with the
    // descriptor when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(lock_err(std::io::Error::last_os_error()));
    }
    if fresh(&path, sources_mtime(&root, bin)) {
        return Ok(path);
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec![
        "build".to_string(),
        "--package".to_string(),
        bin.package().to_string(),
        "--bin".to_string(),
        bin.name().to_string(),
    ];
    args.extend(layout.cargo_args());
    let command = format!("{} {}", cargo.to_string_lossy(), args.join(" "));
    // Straight to stderr: the test harness does not capture it, so a slow first test says why.
    let _ = writeln!(
        std::io::stderr(),
        "vfsdax-tests: {} is missing or older than its sources: {command}",
        path.display()
    );
    let started = Instant::now();
    let out = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .output()
        .map_err(|e| BuildError::Spawn {
            bin: bin.name(),
            command: command.clone(),
            source: Arc::new(e),
        })?;
    drop(lock);
    if !out.status.success() {
        return Err(BuildError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    if !path.is_file() {
        return Err(BuildError::Missing { command, path });
    }
    let _ = writeln!(
        std::io::stderr(),
        "vfsdax-tests: built {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_plain_and_cross_target_directories() {
        let tmp = std::env::temp_dir().join(format!("vfsdax-bins-{}", std::process::id()));
        let plain = tmp.join("target");
        std::fs::create_dir_all(plain.join("x86_64-unknown-linux-gnu/release")).unwrap();
        std::fs::create_dir_all(plain.join("debug")).unwrap();
        std::fs::write(plain.join("CACHEDIR.TAG"), b"").unwrap();

        let l = Layout::of(&plain.join("debug"));
        assert_eq!(l.target_dir, plain);
        assert_eq!(l.triple, None);
        assert_eq!(
            l.cargo_args(),
            ["--target-dir".to_string(), plain.display().to_string()]
        );

        let l = Layout::of(&plain.join("x86_64-unknown-linux-gnu/release"));
        assert_eq!(l.target_dir, plain);
        assert_eq!(l.triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(
            l.cargo_args()[..3],
            ["--release", "--target", "x86_64-unknown-linux-gnu"]
        );

        let l = Layout::of(&plain.join("profiling"));
        assert_eq!(l.cargo_args()[..2], ["--profile", "profiling"]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_program_older_than_its_sources_is_stale() {
        let tmp = std::env::temp_dir().join(format!("vfsdax-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let prog = tmp.join("prog");
        std::fs::write(&prog, b"").unwrap();
        let t = std::fs::metadata(&prog).unwrap().modified().unwrap();
        assert!(fresh(&prog, Some(t)));
        assert!(fresh(&prog, None), "no sources: taken as it is");
        assert!(!fresh(&prog, Some(t + std::time::Duration::from_secs(1))));
        assert!(!fresh(&tmp.join("absent"), None));
        assert!(sources_mtime(&workspace_root(), Bin::Vfsdaxd).is_some());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
