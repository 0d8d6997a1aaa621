//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as an initramfs.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A path or file is too large or malformed for the format.
    #[error("cannot store {0:?} in a newc archive")]
    BadEntry(String),
    /// Writing the output failed.
    #[error("cannot write the archive")]
    Io(#[from] io::Error),
}

/// Writes a newc ("070701") cpio archive entry by entry; call [`CpioWriter::finish`] at the end.
///
/// Paths are relative to the archive root (no leading `/`); parents must be added before their
/// children. Every entry is owned by root with mtime 0, so archives are reproducible.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

/// Rounds `n` up to a multiple of four, the format's alignment.
fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<(), CpioError> {
        let pad = pad4(self.written) as usize;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let path = path.trim_start_matches('/');
        if (path.is_empty() && mode != 0) || path.contains('\0') {
            return Err(CpioError::BadEntry(path.to_owned()));
        }
        let size = u32::try_from(data.len()).map_err(|_| CpioError::BadEntry(path.to_owned()))?;
        let namesize =
            u32::try_from(path.len() + 1).map_err(|_| CpioError::BadEntry(path.to_owned()))?;
        let (ino, nlink) = if mode == 0 {
            (0, 1)
        } else {
            self.next_ino += 1;
            (
                self.next_ino - 1,
                if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            )
        };
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(path.as_bytes())?;
        self.put(&[0])?;
        self.align()?;
        self.put(data)?;
        self.align()
    }

    /// Adds a directory with permission bits `perm` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(path, S_IFDIR | (perm & 0o7777), (0, 0), &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(path, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdevmajor, rdevminor, data) of each entry, parsed back.
    type Entry = (String, u32, u32, u32, Vec<u8>);

    fn parse(mut a: &[u8]) -> Vec<Entry> {
        let total = a.len();
        let mut out = Vec::new();
        loop {
            let at = total - a.len();
            assert_eq!(at % 4, 0, "entry at {at} is not aligned");
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            assert_eq!(a[name_end - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(a[110..name_end - 1].to_vec()).unwrap();
            let data_at = name_end + pad4(name_end as u64) as usize;
            let data = a[data_at..data_at + size as usize].to_vec();
            let next = data_at + size as usize;
            a = &a[next + pad4(next as u64) as usize..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn round_trips_every_entry_kind() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("/bin/busybox", 0o755, b"elf!!").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(
            parse(&bytes),
            vec![
                ("bin".into(), 0o040755, 0, 0, vec![]),
                ("bin/busybox".into(), 0o100755, 0, 0, b"elf!!".to_vec()),
                ("bin/sh".into(), 0o120777, 0, 0, b"busybox".to_vec()),
                ("dev".into(), 0o040755, 0, 0, vec![]),
                ("dev/console".into(), 0o020600, 5, 1, vec![]),
                ("empty".into(), 0o100644, 0, 0, vec![]),
            ]
        );
    }

    #[test]
    fn header_layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("ab", 0o644, b"xyz").unwrap();
        let bytes = w.finish().unwrap();
        let head = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            head,
            concat!(
                "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
                "00000003", "00000000", "00000000", "00000000", "00000000", "00000003", "00000000"
            )
        );
        // 110-byte header + "ab\0" = 113, padded to 116; then 3 bytes of data padded to 120.
        assert_eq!(&bytes[110..116], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..120], b"xyz\0");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn rejects_nul_in_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(matches!(
            w.file("a\0b", 0o644, b""),
            Err(CpioError::BadEntry(_))
        ));
    }
}
