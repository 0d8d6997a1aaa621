//! A temporary directory for one guest run (sockets, logs, the initramfs, the share).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed when dropped unless the thread is
/// panicking (a failed test leaves its logs behind) or `VFSDAX_KEEP` is set.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `$TMPDIR/vfsdax-<label>-<pid>-<n>`. The path is kept short: it holds Unix
    /// sockets, whose paths are limited to 107 bytes.
    pub fn new(label: &str) -> std::io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// Creates `<parent>/vfsdax-<label>-<pid>-<n>` (say, under `/dev/shm` for a share on
    /// tmpfs).
    pub fn new_in(parent: &Path, label: &str) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("vfsdax-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop and returns its path.
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("VFSDAX_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
