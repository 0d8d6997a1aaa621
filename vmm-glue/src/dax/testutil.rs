//! Helpers shared by the DAX unit tests.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new unlinked temporary file holding `bytes`, opened read-write.
pub fn tmpfile(bytes: &[u8]) -> File {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "vfsdax-dax-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temporary file");
    std::fs::remove_file(&path).expect("unlink temporary file");
    f.write_all(bytes).expect("fill temporary file");
    f
}

/// `len` bytes of a recognisable pattern seeded by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The permission string (`r--s`, `---p`, ...) of the host mapping containing `addr`, from
/// `/proc/self/maps`.
pub fn perms_at(addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then(|| perms.to_string())
    })
}

/// Copies `len` bytes at host address `addr`.
///
/// # Safety
/// `[addr, addr + len)` must be mapped readable for the duration of the call.
pub unsafe fn read_at(addr: u64, len: usize) -> Vec<u8> {
    // SAFETY: the caller guarantees the range is mapped readable.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}
