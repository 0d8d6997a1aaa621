//! Building the guest's initramfs: busybox-static, the virtio-fs kernel modules, the `/init`,
//! workload, demo, bench, DAX, repro and DAX bench scripts from `tests/guest/`, and the caller's
//! extra files.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::cpio::{CpioError, CpioWriter};
use super::elf;
use super::kernel::KernelModule;

/// The guest's `/init` (tests/guest/init.sh).
pub const INIT_SCRIPT: &str = include_str!("../../guest/init.sh");
/// The POSIX workload (tests/guest/workload.sh), run by `/init` in `workload` mode.
pub const WORKLOAD_SCRIPT: &str = include_str!("../../guest/workload.sh");
/// The demo (tests/guest/demo.sh), run by `/init` in `demo` mode.
pub const DEMO_SCRIPT: &str = include_str!("../../guest/demo.sh");
/// The benchmark (tests/guest/bench.sh), run by `/init` in `bench` mode.
pub const BENCH_SCRIPT: &str = include_str!("../../guest/bench.sh");
/// The DAX checks (tests/guest/dax.sh), run by `/init` in `dax` mode.
pub const DAX_SCRIPT: &str = include_str!("../../guest/dax.sh");
/// The truncation repro (tests/guest/repro.sh), run by `/init` in `repro` mode.
pub const REPRO_SCRIPT: &str = include_str!("../../guest/repro.sh");
/// The DAX read benchmark (tests/guest/daxbench.sh), run by `/init` in `daxbench` mode.
pub const DAX_BENCH_SCRIPT: &str = include_str!("../../guest/daxbench.sh");

/// The script of each mode (see `run::Mode`): `/init` runs `/<mode>.sh` on the mounted share.
pub const MODE_SCRIPTS: &[(&str, &str)] = &[
    ("workload", WORKLOAD_SCRIPT),
    ("demo", DEMO_SCRIPT),
    ("bench", BENCH_SCRIPT),
    ("dax", DAX_SCRIPT),
    ("repro", REPRO_SCRIPT),
    ("daxbench", DAX_BENCH_SCRIPT),
];

/// Errors building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// No busybox binary was found.
    #[error("no busybox found (install busybox-static, or set VFSDAX_BUSYBOX)")]
    NoBusybox,
    /// The busybox found is dynamically linked and would not run in the guest.
    #[error("{0} is not statically linked (install busybox-static)")]
    NotStatic(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The busybox binary is not a usable ELF file.
    #[error("cannot inspect {path}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: elf::ElfError,
    },
    /// An extra file's path inside the initramfs is unusable.
    #[error("cannot put an extra file at {path:?} in the initramfs: {reason}")]
    ExtraPath {
        /// The path asked for.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The archive could not be written.
    #[error("cannot write the initramfs {path}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CpioError,
    },
}

/// Finds a statically linked busybox: `$VFSDAX_BUSYBOX`, else `/bin/busybox` or
/// `/usr/bin/busybox`.
pub fn find_busybox() -> Result<PathBuf, InitramfsError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("VFSDAX_BUSYBOX") {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => vec!["/bin/busybox".into(), "/usr/bin/busybox".into()],
    };
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(InitramfsError::NoBusybox)?;
    let data = fs::read(&path).map_err(|source| InitramfsError::Read {
        path: path.clone(),
        source,
    })?;
    match elf::is_static(&data) {
        Ok(true) => Ok(path),
        Ok(false) => Err(InitramfsError::NotStatic(path)),
        Err(source) => Err(InitramfsError::Elf { path, source }),
    }
}

/// Module file name inside the initramfs (`/lib/modules/<name>.ko`) for `/init` to `insmod`.
fn module_file(m: &KernelModule) -> String {
    format!("lib/modules/{}.ko", m.info.name)
}

/// The directories every initramfs has.
const DIRS: [&str; 9] = [
    "bin",
    "dev",
    "etc",
    "lib",
    "lib/modules",
    "mnt",
    "proc",
    "sys",
    "tmp",
];

/// Checks an extra file's path inside the initramfs (a leading `/` is allowed) and returns it
/// relative to the archive root.
fn extra_path(path: &str) -> Result<&str, InitramfsError> {
    let bad = |reason| InitramfsError::ExtraPath {
        path: path.to_owned(),
        reason,
    };
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Err(bad("it names no file"));
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` and `..` components are not allowed"));
    }
    if rel.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    Ok(rel)
}

/// Writes the initramfs to `out`: busybox at `/bin/busybox`, `modules` (already in load order)
/// under `/lib/modules/` with their order in `/etc/modules.order`, the scripts, and
/// `extra_files` (path inside the initramfs, host file) as executables (mode 0755), with any
/// missing parent directories. An extra file may not replace another entry.
pub fn build_initramfs(
    busybox: &Path,
    modules: &[KernelModule],
    extra_files: &[(String, PathBuf)],
    out: &Path,
) -> Result<(), InitramfsError> {
    // Check the extra paths before creating anything.
    let extra: Vec<(&str, &Path)> = extra_files
        .iter()
        .map(|(path, host)| Ok((extra_path(path)?, host.as_path())))
        .collect::<Result<_, InitramfsError>>()?;
    let read = |path: &Path| {
        fs::read(path).map_err(|source| InitramfsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let write_err = |source: CpioError| InitramfsError::Write {
        path: out.to_owned(),
        source,
    };
    let file = fs::File::create(out).map_err(|e| write_err(e.into()))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let add = |w: &mut CpioWriter<_>| -> Result<(), InitramfsError> {
        for dir in DIRS {
            w.dir(dir, 0o755).map_err(write_err)?;
        }
        w.char_device("dev/console", 0o600, 5, 1)
            .map_err(write_err)?;
        w.file("bin/busybox", 0o755, &read(busybox)?)
            .map_err(write_err)?;
        w.symlink("bin/sh", "busybox").map_err(write_err)?;
        w.file("init", 0o755, INIT_SCRIPT.as_bytes())
            .map_err(write_err)?;
        for (mode, script) in MODE_SCRIPTS {
            w.file(&format!("{mode}.sh"), 0o755, script.as_bytes())
                .map_err(write_err)?;
        }
        let mut order = String::new();
        for m in modules {
            w.file(&module_file(m), 0o644, &read(&m.path)?)
                .map_err(write_err)?;
            order.push_str(&m.info.name);
            order.push('\n');
        }
        w.file("etc/modules.order", 0o644, order.as_bytes())
            .map_err(write_err)?;
        add_extra_files(w, modules, &extra, &read, &write_err)
    };
    add(&mut w)?;
    w.finish().map_err(write_err)?;
    Ok(())
}

/// Adds the (checked) extra files after everything else, creating their missing parent
/// directories; refuses a path that is already taken.
fn add_extra_files<W: std::io::Write>(
    w: &mut CpioWriter<W>,
    modules: &[KernelModule],
    extra: &[(&str, &Path)],
    read: &dyn Fn(&Path) -> Result<Vec<u8>, InitramfsError>,
    write_err: &dyn Fn(CpioError) -> InitramfsError,
) -> Result<(), InitramfsError> {
    let mut dirs: BTreeSet<String> = DIRS.iter().map(|d| d.to_string()).collect();
    let mut files: BTreeSet<String> = [
        "dev/console",
        "bin/busybox",
        "bin/sh",
        "init",
        "etc/modules.order",
    ]
    .iter()
    .map(|f| f.to_string())
    .chain(MODE_SCRIPTS.iter().map(|(mode, _)| format!("{mode}.sh")))
    .chain(modules.iter().map(module_file))
    .collect();
    for (path, host) in extra {
        let taken = |reason| InitramfsError::ExtraPath {
            path: path.to_string(),
            reason,
        };
        if dirs.contains(*path) || files.contains(*path) {
            return Err(taken("the initramfs already has that path"));
        }
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if files.contains(&parent) {
                return Err(taken("a parent directory is a file in the initramfs"));
            }
            if dirs.insert(parent.clone()) {
                w.dir(&parent, 0o755).map_err(write_err)?;
            }
        }
        w.file(path, 0o755, &read(host)?).map_err(write_err)?;
        files.insert(path.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::scratch::ScratchDir;

    /// The mode and data of the entry called `name` in a newc archive (found by its name).
    fn entry(archive: &[u8], name: &str) -> Option<(u32, Vec<u8>)> {
        let mut at = 0;
        while at + 110 <= archive.len() {
            let field = |i: usize| {
                let hex = std::str::from_utf8(&archive[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name_at = at + 110;
            let this = std::str::from_utf8(&archive[name_at..name_at + namesize - 1]).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            if this == name {
                return Some((mode as u32, archive[data_at..data_at + size].to_vec()));
            }
            at = (data_at + size).next_multiple_of(4);
        }
        None
    }

    #[test]
    fn extra_files_are_executables_with_their_parents() {
        let dir = ScratchDir::new("initramfs-test").unwrap();
        let busybox = dir.path().join("busybox");
        let helper = dir.path().join("helper");
        fs::write(&busybox, b"not really busybox").unwrap();
        fs::write(&helper, b"helper bytes").unwrap();
        let out = dir.path().join("initramfs.cpio");
        let extra = vec![
            ("/bin/daxtest".to_string(), helper.clone()),
            ("opt/vfsdax/helper".to_string(), helper.clone()),
        ];
        build_initramfs(&busybox, &[], &extra, &out).unwrap();
        let archive = fs::read(&out).unwrap();
        assert_eq!(
            entry(&archive, "bin/daxtest"),
            Some((0o100755, b"helper bytes".to_vec()))
        );
        assert_eq!(
            entry(&archive, "opt/vfsdax/helper"),
            Some((0o100755, b"helper bytes".to_vec()))
        );
        assert_eq!(entry(&archive, "opt"), Some((0o040755, vec![])));
        assert_eq!(entry(&archive, "opt/vfsdax"), Some((0o040755, vec![])));
        for (mode, script) in MODE_SCRIPTS {
            let (perm, data) = entry(&archive, &format!("{mode}.sh")).unwrap();
            assert_eq!((perm, data.as_slice()), (0o100755, script.as_bytes()));
        }
        assert_eq!(
            entry(&archive, "bin/busybox").map(|(_, d)| d),
            Some(b"not really busybox".to_vec())
        );
        // Without extra files, none of them.
        build_initramfs(&busybox, &[], &[], &out).unwrap();
        assert_eq!(entry(&fs::read(&out).unwrap(), "opt"), None);
    }

    #[test]
    fn bad_extra_paths_are_refused() {
        let dir = ScratchDir::new("initramfs-bad").unwrap();
        let busybox = dir.path().join("busybox");
        fs::write(&busybox, b"bb").unwrap();
        let out = dir.path().join("initramfs.cpio");
        for path in [
            "",
            "/",
            "a//b",
            "../x",
            "bin/../init",
            "init",
            "bin/sh",
            "dax.sh",
            "tmp",
            "init/x",
        ] {
            let extra = vec![(path.to_string(), busybox.clone())];
            let err = build_initramfs(&busybox, &[], &extra, &out).unwrap_err();
            assert!(
                matches!(err, InitramfsError::ExtraPath { .. }),
                "{path:?}: {err}"
            );
        }
        let extra = vec![("bin/x".to_string(), dir.path().join("missing"))];
        let err = build_initramfs(&busybox, &[], &extra, &out).unwrap_err();
        assert!(matches!(err, InitramfsError::Read { .. }), "{err}");
    }
}
