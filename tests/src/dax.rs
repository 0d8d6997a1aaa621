//! Helpers shared by the DAX tests without a VM (`tests/tests/dax_e2e.rs`, `dax_leak.rs`): a
//! process-wide lock, and counts and lookups over this process's descriptors and mappings.

use std::sync::{Mutex, MutexGuard};

/// Takes the process-wide lock of the DAX tests, so nothing else opens files or maps memory
/// while one of them counts. A test that panicked while holding it does not poison it.
pub fn serialized() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The number of entries of the directory `path` (e.g. a `/proc/<pid>/fd`); panics if it cannot
/// be listed.
pub fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("list {path}: {e}"))
        .count()
}

/// The number of this process's open file descriptors.
pub fn fd_count() -> usize {
    count_dir("/proc/self/fd")
}

/// The number of this process's memory mappings (lines of `/proc/self/maps`).
pub fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// The permissions (`r--s`, `---p`, ...) of this process's mapping containing `addr`.
pub fn perms_at(addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then(|| perms.to_string())
    })
}
