//! Building the guest's initramfs: busybox-static, the virtio-fs kernel modules, and the
//! `/init`, workload, demo and bench scripts from `tests/guest/`.

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

/// The script of each mode (see `run::Mode`): `/init` runs `/<mode>.sh` on the mounted share.
pub const MODE_SCRIPTS: &[(&str, &str)] = &[
    ("workload", WORKLOAD_SCRIPT),
    ("demo", DEMO_SCRIPT),
    ("bench", BENCH_SCRIPT),
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

/// Writes the initramfs to `out`: busybox at `/bin/busybox`, `modules` (already in load order)
/// under `/lib/modules/` with their order in `/etc/modules.order`, and the scripts.
pub fn build_initramfs(
    busybox: &Path,
    modules: &[KernelModule],
    out: &Path,
) -> Result<(), InitramfsError> {
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
        for dir in [
            "bin",
            "dev",
            "etc",
            "lib",
            "lib/modules",
            "mnt",
            "proc",
            "sys",
            "tmp",
        ] {
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
        Ok(())
    };
    add(&mut w)?;
    w.finish().map_err(write_err)?;
    Ok(())
}
