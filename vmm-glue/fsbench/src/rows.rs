//! The benchmark rows: what one operation of each row sends, the share they need (made on the
//! host before a daemon starts), and the closed loop that keeps `depth` operations in flight
//! for a while and counts the ones completed.

use std::fs;
use std::io::Write;
use std::mem::size_of;
use std::path::Path;
use std::time::{Duration, Instant};

use vfsdax_driver::ops::DEFAULT_INIT_FLAGS;
use vfsdax_protocol::fuse::flags::fattr;
use vfsdax_protocol::fuse::{
    AttrOut, CreateIn, Dirent, EntryOut, FsyncIn, GetattrIn, InitIn, InitOut, Opcode, OpenIn,
    OpenOut, ReadIn, ReleaseIn, SetattrIn, WriteIn, WriteOut, KERNEL_MINOR_VERSION, KERNEL_VERSION,
    ROOT_ID,
};
use vm_memory::ByteValued;

use crate::conn::{Conn, ConnError};

/// Files in `files/` (LOOKUP names, and one GETATTR/SETATTR target per slot).
const NAMED_FILES: usize = 100;
/// Entries of `dir1000/`.
pub const DIR_ENTRIES: usize = 1000;
/// Size of `data` (read) and `wdata` (written): larger than any row's stride.
const DATA_SIZE: u64 = 64 << 20;
/// READDIRPLUS buffer (what a guest's `getdents64` of 32 KiB asks for).
const READDIR_BUF: u32 = 32 << 10;
/// The 4 KiB written by the small-file mix.
const SMALL: u32 = 4096;

/// Errors of preparing the share or running a row.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// Making the share on the host failed.
    #[error("preparing the share at {path}: {source}")]
    Share {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A request failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// A reply had other content than expected.
    #[error("{0}")]
    Unexpected(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, RowError>;

/// One benchmark row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    /// GETATTR of an existing file.
    Getattr,
    /// LOOKUP of an existing name.
    Lookup,
    /// CREATE, RELEASE, UNLINK (and FORGET, not waited for).
    CreateUnlink,
    /// READ of this many bytes, sequential through a 64 MiB file in the page cache.
    Read(u32),
    /// WRITE of this many bytes, sequential through a 64 MiB file.
    Write(u32),
    /// OPENDIR, READDIRPLUS until the end of a 1,000-entry directory, RELEASEDIR.
    Readdirplus,
    /// SETATTR of the mode.
    Setattr,
    /// CREATE, WRITE 4 KiB, FSYNC, RELEASE, GETATTR, UNLINK (and FORGET).
    Mix,
}

/// Every row, in table order.
pub const ALL_ROWS: [Row; 10] = [
    Row::Getattr,
    Row::Lookup,
    Row::CreateUnlink,
    Row::Read(4096),
    Row::Read(1 << 20),
    Row::Write(4096),
    Row::Write(1 << 20),
    Row::Readdirplus,
    Row::Setattr,
    Row::Mix,
];

impl Row {
    /// The row's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Row::Getattr => "GETATTR ops/s",
            Row::Lookup => "LOOKUP ops/s",
            Row::CreateUnlink => "CREATE+RELEASE+UNLINK /s",
            Row::Read(4096) => "READ 4 KiB MB/s",
            Row::Read(_) => "READ 1 MiB MB/s",
            Row::Write(4096) => "WRITE 4 KiB MB/s",
            Row::Write(_) => "WRITE 1 MiB MB/s",
            Row::Readdirplus => "READDIRPLUS 1000 dirs/s",
            Row::Setattr => "SETATTR ops/s",
            Row::Mix => "small-file mix files/s",
        }
    }

    /// A short name for `--rows`.
    pub fn key(self) -> &'static str {
        match self {
            Row::Getattr => "getattr",
            Row::Lookup => "lookup",
            Row::CreateUnlink => "create",
            Row::Read(4096) => "read4k",
            Row::Read(_) => "read1m",
            Row::Write(4096) => "write4k",
            Row::Write(_) => "write1m",
            Row::Readdirplus => "readdirplus",
            Row::Setattr => "setattr",
            Row::Mix => "mix",
        }
    }

    /// Whether the row's figure is a data rate (MB/s) rather than operations per second.
    pub fn is_data(self) -> bool {
        matches!(self, Row::Read(_) | Row::Write(_))
    }

    /// Whether the row counts as metadata for the targets (the mix has its own target).
    pub fn is_metadata(self) -> bool {
        !self.is_data() && self != Row::Mix
    }
}

/// Makes the share's content: `files/f0..f99`, `dir1000/` with 1,000 files, `work/`, `data`
/// (64 MiB of non-zero bytes) and `wdata` (64 MiB).
pub fn prepare_share(share: &Path) -> Result<()> {
    let err = |p: &Path| {
        let path = p.display().to_string();
        move |source| RowError::Share { path, source }
    };
    for d in ["files", "dir1000", "work"] {
        let p = share.join(d);
        fs::create_dir_all(&p).map_err(err(&p))?;
    }
    for i in 0..NAMED_FILES {
        let p = share.join(format!("files/f{i}"));
        fs::write(&p, b"x").map_err(err(&p))?;
    }
    for i in 0..DIR_ENTRIES {
        let p = share.join(format!("dir1000/entry-{i:04}"));
        fs::write(&p, b"").map_err(err(&p))?;
    }
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8 + 1).collect();
    for name in ["data", "wdata"] {
        let p = share.join(name);
        let mut f = fs::File::create(&p).map_err(err(&p))?;
        for _ in 0..DATA_SIZE >> 20 {
            f.write_all(&chunk).map_err(err(&p))?;
        }
        f.sync_all().map_err(err(&p))?;
    }
    Ok(())
}

/// Node ids and handles a connection needs, found after INIT.
#[derive(Clone, Debug)]
pub struct Share {
    files_dir: u64,
    files: Vec<u64>,
    work_dir: u64,
    dir1000: u64,
    data: (u64, u64),
    wdata: (u64, u64),
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn lookup(conn: &mut Conn, parent: u64, n: &str) -> Result<u64> {
    let body = conn.call(
        Opcode::Lookup,
        parent,
        &[&name(n)],
        size_of::<EntryOut>() as u32,
    )?;
    let e = EntryOut::from_slice(&body[..size_of::<EntryOut>().min(body.len())])
        .ok_or_else(|| RowError::Unexpected(format!("short LOOKUP reply for {n}")))?;
    Ok(e.nodeid)
}

fn open(conn: &mut Conn, nodeid: u64, flags: i32) -> Result<u64> {
    let arg = OpenIn {
        flags: flags as u32,
        open_flags: 0,
    };
    let body = conn.call(
        Opcode::Open,
        nodeid,
        &[arg.as_slice()],
        size_of::<OpenOut>() as u32,
    )?;
    let o = OpenOut::from_slice(&body[..size_of::<OpenOut>().min(body.len())])
        .ok_or_else(|| RowError::Unexpected("short OPEN reply".into()))?;
    Ok(o.fh)
}

/// INIT as a Linux 6.x guest, then the look-ups and opens the rows need.
pub fn init(conn: &mut Conn) -> Result<Share> {
    let arg = InitIn {
        major: KERNEL_VERSION,
        minor: KERNEL_MINOR_VERSION,
        max_readahead: 128 << 10,
        flags: DEFAULT_INIT_FLAGS as u32,
        flags2: (DEFAULT_INIT_FLAGS >> 32) as u32,
        unused: [0; 11],
    };
    conn.call(
        Opcode::Init,
        0,
        &[arg.as_slice()],
        size_of::<InitOut>() as u32,
    )?;
    let files_dir = lookup(conn, ROOT_ID, "files")?;
    let mut files = Vec::new();
    for i in 0..NAMED_FILES {
        files.push(lookup(conn, files_dir, &format!("f{i}"))?);
    }
    let work_dir = lookup(conn, ROOT_ID, "work")?;
    let dir1000 = lookup(conn, ROOT_ID, "dir1000")?;
    let data = lookup(conn, ROOT_ID, "data")?;
    let wdata = lookup(conn, ROOT_ID, "wdata")?;
    let data_fh = open(conn, data, libc::O_RDONLY)?;
    let wdata_fh = open(conn, wdata, libc::O_RDWR)?;
    Ok(Share {
        files_dir,
        files,
        work_dir,
        dir1000,
        data: (data, data_fh),
        wdata: (wdata, wdata_fh),
    })
}

/// Where one slot is in its current operation.
#[derive(Clone, Debug, Default)]
struct Slot {
    step: u8,
    nodeid: u64,
    fh: u64,
    name: Vec<u8>,
    dir_off: u64,
    entries: u64,
    toggle: bool,
}

/// What a measurement gave.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    /// Operations completed before the deadline.
    pub ops: u64,
    /// Payload bytes of those operations (data rows).
    pub bytes: u64,
    /// Directory entries returned (READDIRPLUS).
    pub entries: u64,
    /// Seconds from the start to the deadline.
    pub secs: f64,
}

impl Measure {
    /// The row's figure: MB/s (10^6 bytes) for data rows, directories (1,000 entries) per
    /// second for READDIRPLUS (counted by entry, so a listing cut by the deadline counts in
    /// part), operations per second otherwise.
    pub fn figure(&self, row: Row) -> f64 {
        if row.is_data() {
            self.bytes as f64 / self.secs / 1e6
        } else if row == Row::Readdirplus {
            self.entries as f64 / DIR_ENTRIES as f64 / self.secs
        } else {
            self.ops as f64 / self.secs
        }
    }
}

/// The closed loop of one row on one connection.
struct Runner<'a> {
    conn: &'a mut Conn,
    share: &'a Share,
    row: Row,
    counter: u64,
    offset: u64,
    /// Directory entries returned so far (READDIRPLUS).
    entries: u64,
}

impl Runner<'_> {
    /// Sends the current step of `slot`'s operation.
    fn issue(&mut self, i: usize, s: &mut Slot) -> Result<()> {
        let sh = self.share;
        let c = &mut *self.conn;
        let attr_cap = size_of::<AttrOut>() as u32;
        match (self.row, s.step) {
            (Row::Getattr, _) => {
                let arg = GetattrIn::default();
                c.submit(
                    i,
                    Opcode::Getattr,
                    sh.files[i],
                    &[arg.as_slice()],
                    0,
                    attr_cap,
                )?;
            }
            (Row::Lookup, _) => {
                let n = name(&format!("f{}", self.counter % NAMED_FILES as u64));
                self.counter += 1;
                let cap = size_of::<EntryOut>() as u32;
                c.submit(i, Opcode::Lookup, sh.files_dir, &[&n], 0, cap)?;
            }
            (Row::Setattr, _) => {
                s.toggle = !s.toggle;
                let arg = SetattrIn {
                    valid: fattr::MODE,
                    mode: libc::S_IFREG | if s.toggle { 0o600 } else { 0o644 },
                    ..Default::default()
                };
                c.submit(
                    i,
                    Opcode::Setattr,
                    sh.files[i],
                    &[arg.as_slice()],
                    0,
                    attr_cap,
                )?;
            }
            (Row::Read(size), _) | (Row::Write(size), _) => {
                let off = self.offset;
                self.offset = (self.offset + u64::from(size)) % DATA_SIZE;
                if let Row::Read(_) = self.row {
                    let arg = ReadIn {
                        fh: sh.data.1,
                        offset: off,
                        size,
                        ..Default::default()
                    };
                    c.submit(i, Opcode::Read, sh.data.0, &[arg.as_slice()], 0, size)?;
                } else {
                    let arg = WriteIn {
                        fh: sh.wdata.1,
                        offset: off,
                        size,
                        ..Default::default()
                    };
                    let cap = size_of::<WriteOut>() as u32;
                    c.submit(i, Opcode::Write, sh.wdata.0, &[arg.as_slice()], size, cap)?;
                }
            }
            (Row::CreateUnlink | Row::Mix, 0) => {
                s.name = name(&format!("c{i}.{}", self.counter));
                self.counter += 1;
                let arg = CreateIn {
                    flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0o022,
                    open_flags: 0,
                };
                let cap = (size_of::<EntryOut>() + size_of::<OpenOut>()) as u32;
                c.submit(
                    i,
                    Opcode::Create,
                    sh.work_dir,
                    &[arg.as_slice(), &s.name],
                    0,
                    cap,
                )?;
            }
            (Row::CreateUnlink, 1) | (Row::Mix, 3) => {
                let arg = ReleaseIn {
                    fh: s.fh,
                    flags: libc::O_RDWR as u32,
                    ..Default::default()
                };
                c.submit(i, Opcode::Release, s.nodeid, &[arg.as_slice()], 0, 0)?;
            }
            (Row::CreateUnlink, 2) | (Row::Mix, 5) => {
                c.submit(i, Opcode::Unlink, sh.work_dir, &[&s.name], 0, 0)?;
            }
            (Row::Mix, 1) => {
                let arg = WriteIn {
                    fh: s.fh,
                    offset: 0,
                    size: SMALL,
                    ..Default::default()
                };
                let cap = size_of::<WriteOut>() as u32;
                c.submit(i, Opcode::Write, s.nodeid, &[arg.as_slice()], SMALL, cap)?;
            }
            (Row::Mix, 2) => {
                let arg = FsyncIn {
                    fh: s.fh,
                    fsync_flags: 0,
                    padding: 0,
                };
                c.submit(i, Opcode::Fsync, s.nodeid, &[arg.as_slice()], 0, 0)?;
            }
            (Row::Mix, 4) => {
                let arg = GetattrIn::default();
                c.submit(i, Opcode::Getattr, s.nodeid, &[arg.as_slice()], 0, attr_cap)?;
            }
            (Row::Readdirplus, 0) => {
                let arg = OpenIn {
                    flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
                    open_flags: 0,
                };
                let cap = size_of::<OpenOut>() as u32;
                c.submit(i, Opcode::Opendir, sh.dir1000, &[arg.as_slice()], 0, cap)?;
            }
            (Row::Readdirplus, 1) => {
                let arg = ReadIn {
                    fh: s.fh,
                    offset: s.dir_off,
                    size: READDIR_BUF,
                    ..Default::default()
                };
                c.submit(
                    i,
                    Opcode::Readdirplus,
                    sh.dir1000,
                    &[arg.as_slice()],
                    0,
                    READDIR_BUF,
                )?;
            }
            (Row::Readdirplus, _) => {
                let arg = ReleaseIn {
                    fh: s.fh,
                    ..Default::default()
                };
                c.submit(i, Opcode::Releasedir, sh.dir1000, &[arg.as_slice()], 0, 0)?;
            }
            (row, step) => {
                return Err(RowError::Unexpected(format!("{row:?} has no step {step}")));
            }
        }
        Ok(())
    }

    /// Takes the reply of `slot`'s current step; returns the operation's payload bytes once
    /// the operation is complete, `None` while steps remain.
    fn complete(&mut self, i: usize, s: &mut Slot, len: u32) -> Result<Option<u64>> {
        let c = &mut *self.conn;
        let unexpected = |what: &str| RowError::Unexpected(format!("{:?}: {what}", self.row));
        match (self.row, s.step) {
            (Row::Read(size), _) => {
                if len != size {
                    return Err(unexpected(&format!("READ returned {len} bytes")));
                }
                Ok(Some(u64::from(size)))
            }
            (Row::Write(size), _) => {
                let w: WriteOut = c.reply_obj(i, 0)?;
                if w.size != size {
                    return Err(unexpected(&format!("WRITE took {} bytes", w.size)));
                }
                Ok(Some(u64::from(size)))
            }
            (Row::Getattr | Row::Lookup | Row::Setattr, _) => Ok(Some(0)),
            (Row::CreateUnlink | Row::Mix, 0) => {
                let e: EntryOut = c.reply_obj(i, 0)?;
                let o: OpenOut = c.reply_obj(i, size_of::<EntryOut>() as u64)?;
                s.nodeid = e.nodeid;
                s.fh = o.fh;
                s.step += 1;
                Ok(None)
            }
            (Row::CreateUnlink, 2) | (Row::Mix, 5) => {
                c.forget(s.nodeid, 1)?;
                s.step = 0;
                Ok(Some(0))
            }
            (Row::CreateUnlink | Row::Mix, _) => {
                s.step += 1;
                Ok(None)
            }
            (Row::Readdirplus, 0) => {
                let o: OpenOut = c.reply_obj(i, 0)?;
                s.fh = o.fh;
                s.dir_off = 0;
                s.entries = 0;
                s.step = 1;
                Ok(None)
            }
            (Row::Readdirplus, 1) => {
                if len == 0 {
                    s.step = 2;
                    return Ok(None);
                }
                let mut body = vec![0u8; len as usize];
                c.reply_bytes(i, &mut body)?;
                let (n, last) = walk_direntplus(&body).ok_or_else(|| unexpected("bad entry"))?;
                s.entries += n;
                s.dir_off = last;
                self.entries += n;
                Ok(None)
            }
            (Row::Readdirplus, _) => {
                if s.entries < DIR_ENTRIES as u64 {
                    return Err(unexpected(&format!("only {} entries", s.entries)));
                }
                s.step = 0;
                Ok(Some(s.entries))
            }
        }
    }
}

/// Counts the `fuse_direntplus` records of a READDIRPLUS reply and returns the count and the
/// last record's offset, or `None` if a record is malformed.
fn walk_direntplus(body: &[u8]) -> Option<(u64, u64)> {
    let head = size_of::<EntryOut>() + size_of::<Dirent>();
    let (mut at, mut n, mut last) = (0usize, 0u64, 0u64);
    while at < body.len() {
        let rec = body.get(at..at + head)?;
        let d = Dirent::from_slice(&rec[size_of::<EntryOut>()..])?;
        last = d.off;
        n += 1;
        let len = head + d.namelen as usize;
        at += len.div_ceil(8) * 8;
    }
    Some((n, last))
}

/// Runs `row` with `depth` operations in flight for `duration`, then lets the operations in
/// flight finish (uncounted) so the share is left as it was.
pub fn run(
    conn: &mut Conn,
    share: &Share,
    row: Row,
    depth: usize,
    duration: Duration,
) -> Result<Measure> {
    match row {
        Row::Write(size) => (0..depth).try_for_each(|i| conn.fill_payload(i, size))?,
        Row::Mix => (0..depth).try_for_each(|i| conn.fill_payload(i, SMALL))?,
        _ => {}
    }
    let mut r = Runner {
        conn,
        share,
        row,
        counter: 0,
        offset: 0,
        entries: 0,
    };
    let mut slots = vec![Slot::default(); depth];
    let start = Instant::now();
    let end = start + duration;
    for (i, s) in slots.iter_mut().enumerate() {
        r.issue(i, s)?;
    }
    let mut m = Measure::default();
    let mut running = depth;
    let mut stopped = false;
    while running > 0 {
        let (i, len) = r.conn.wait()?;
        let s = &mut slots[i];
        let done = r.complete(i, s, len)?;
        if !stopped && Instant::now() >= end {
            stopped = true;
            m.secs = start.elapsed().as_secs_f64();
            m.entries = r.entries;
        }
        match done {
            Some(n) if !stopped => {
                m.ops += 1;
                if row != Row::Readdirplus {
                    m.bytes += n;
                }
                r.issue(i, s)?;
            }
            Some(_) => running -= 1,
            None => r.issue(i, s)?,
        }
    }
    r.conn.drain_forgets()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(off: u64, name: &[u8]) -> Vec<u8> {
        let d = Dirent {
            ino: 7,
            off,
            namelen: name.len() as u32,
            typ: 8,
        };
        let mut v = EntryOut::default().as_slice().to_vec();
        v.extend_from_slice(d.as_slice());
        v.extend_from_slice(name);
        v.resize(v.len().div_ceil(8) * 8, 0);
        v
    }

    #[test]
    fn direntplus_records_are_counted_up_to_the_last_offset() {
        let mut body = record(1, b"a");
        body.extend(record(2, b"entry-0001"));
        assert_eq!(walk_direntplus(&body), Some((2, 2)));
        assert_eq!(walk_direntplus(&[]), Some((0, 0)));
        assert_eq!(walk_direntplus(&body[..100]), None, "a cut record");
    }

    #[test]
    fn row_keys_are_unique() {
        let mut keys: Vec<_> = ALL_ROWS.iter().map(|r| r.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), ALL_ROWS.len());
    }
}
