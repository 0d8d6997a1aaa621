//! Finding the guest kernel that `scripts/deps.sh` extracts (a Debian `linux-image-*-cloud-amd64`
//! package) and the modules a virtio-fs guest needs, in load order.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::elf::{self, ElfError};
use super::modinfo::{self, ModInfo, ModinfoError};

/// The modules a guest needs to mount virtio-fs over virtio-pci, as the caller asks for them;
/// [`find_kernel`] adds what they depend on and orders them.
pub const VIRTIOFS_MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio",
    "virtio_pci",
    "fuse",
    "virtiofs",
];

/// Errors finding the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No `boot/vmlinuz-*` in the directory.
    #[error("no guest kernel (boot/vmlinuz-*) in {0}; run scripts/deps.sh")]
    NoKernel(PathBuf),
    /// No `lib/modules/<release>/` for the kernel found.
    #[error("no module directory {0} for the guest kernel")]
    NoModules(PathBuf),
    /// A directory or file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A module file is not a usable ELF file.
    #[error("kernel module {path} is unreadable")]
    Elf {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ElfError,
    },
    /// The modules cannot be ordered.
    #[error("cannot order the guest's kernel modules")]
    Order(#[source] ModinfoError),
}

/// One kernel module file and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Name and dependencies from `.modinfo`.
    pub info: ModInfo,
    /// Path of the `.ko` file.
    pub path: PathBuf,
}

/// A guest kernel and the modules to load, in order.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The kernel image (`boot/vmlinuz-<release>`).
    pub vmlinuz: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Modules to `insmod`, each after its dependencies.
    pub modules: Vec<KernelModule>,
}

/// The directory `scripts/deps.sh` extracts the kernel into: `$VFSDAX_GUEST_DIR`, or
/// `target/guest-kernel/` under the repository.
pub fn guest_dir() -> PathBuf {
    match std::env::var_os("VFSDAX_GUEST_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("guest-kernel"),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Sort key that orders kernel releases numerically (`6.1.0-9` before `6.1.0-10`).
fn release_key(release: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut digits = String::new();
    let mut text = String::new();
    for c in release.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((
                    digits.parse().unwrap_or(u64::MAX),
                    std::mem::take(&mut text),
                ));
                digits.clear();
            }
            text.push(c);
        }
    }
    key
}

/// Finds the newest kernel in `dir` (a `dpkg-deb -x` of a kernel package) and its virtio-fs
/// modules, ordered for loading.
pub fn find_kernel(dir: &Path) -> Result<GuestKernel, KernelError> {
    let boot = dir.join("boot");
    let mut releases: Vec<String> = match fs::read_dir(&boot) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_owned)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    releases.sort_by_key(|r| release_key(r));
    let release = releases
        .pop()
        .ok_or_else(|| KernelError::NoKernel(dir.to_owned()))?;
    let module_dir = dir.join("lib").join("modules").join(&release);
    if !module_dir.is_dir() {
        return Err(KernelError::NoModules(module_dir));
    }
    let mut files = BTreeMap::new();
    index_modules(&module_dir, &mut files)?;
    let mut failure = None;
    let order = modinfo::load_order(&VIRTIOFS_MODULES, |name| {
        let path = files.get(name)?;
        match read_modinfo(path, name) {
            Ok(info) => Some(info),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let modules = order
        .map_err(KernelError::Order)?
        .into_iter()
        .map(|info| KernelModule {
            path: files[&info.name].clone(),
            info,
        })
        .collect();
    Ok(GuestKernel {
        vmlinuz: boot.join(format!("vmlinuz-{release}")),
        release,
        modules,
    })
}

fn read_modinfo(path: &Path, name: &str) -> Result<ModInfo, KernelError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let section = elf::section(&data, ".modinfo")
        .map_err(|source| KernelError::Elf {
            path: path.to_owned(),
            source,
        })?
        .unwrap_or_default();
    let mut info = modinfo::parse_modinfo(section, name);
    // The file name is what we look modules up by; trust it over a differing name= field.
    info.name = name.to_owned();
    Ok(info)
}

/// Maps module names to `.ko` files under `dir`, recursively.
fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), KernelError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            index_modules(&path, out)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(modinfo::normalise(stem), path.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_order_is_numeric() {
        let mut r = vec![
            "6.1.0-10-cloud-amd64",
            "6.1.0-9-cloud-amd64",
            "6.1.0-56-cloud-amd64",
        ];
        r.sort_by_key(|r| release_key(r));
        assert_eq!(
            r,
            [
                "6.1.0-9-cloud-amd64",
                "6.1.0-10-cloud-amd64",
                "6.1.0-56-cloud-amd64"
            ]
        );
    }

    #[test]
    fn finds_the_newest_kernel_and_orders_its_modules() {
        use crate::guest::elf::testing::fake_elf;
        let dir = crate::guest::scratch::ScratchDir::new("kernel-test").unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        for r in ["6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"] {
            fs::write(root.join(format!("boot/vmlinuz-{r}")), b"kernel").unwrap();
        }
        let mods = root.join("lib/modules/6.1.0-10-cloud-amd64/kernel");
        let fake = [
            ("drivers/virtio/virtio_ring.ko", ""),
            ("drivers/virtio/virtio_pci_modern_dev.ko", ""),
            ("drivers/virtio/virtio_pci_legacy_dev.ko", ""),
            ("drivers/virtio/virtio.ko", "virtio_ring"),
            (
                "drivers/virtio/virtio_pci.ko",
                "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
            ),
            ("fs/fuse/fuse.ko", "extra-dep"),
            ("fs/fuse/virtiofs.ko", "fuse,virtio,virtio_ring"),
            ("lib/extra-dep.ko", ""),
            ("drivers/net/virtio_net.ko", "virtio,net_failover"),
        ];
        for (path, deps) in fake {
            let file = mods.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            let info = format!("license=GPL\0depends={deps}\0");
            fs::write(
                &file,
                fake_elf(&[(".text", b"x"), (".modinfo", info.as_bytes())], &[]),
            )
            .unwrap();
        }
        let k = find_kernel(root).unwrap();
        assert_eq!(k.release, "6.1.0-10-cloud-amd64");
        assert_eq!(k.vmlinuz, root.join("boot/vmlinuz-6.1.0-10-cloud-amd64"));
        let names: Vec<&str> = k.modules.iter().map(|m| m.info.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
                "virtio_pci",
                "extra_dep",
                "fuse",
                "virtiofs"
            ]
        );
        assert!(k.modules[5].path.ends_with("lib/extra-dep.ko"));

        fs::remove_file(mods.join("fs/fuse/fuse.ko")).unwrap();
        let err = find_kernel(root).unwrap_err().to_string();
        assert!(err.contains("order"), "{err}");
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let err = find_kernel(Path::new("/nonexistent/vfsdax")).unwrap_err();
        assert!(err.to_string().contains("scripts/deps.sh"), "{err}");
    }
}
