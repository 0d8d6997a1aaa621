//! FUSE request building and reply parsing for the host-side driver (pure, no I/O).

use std::mem::size_of;

use vfsdax_protocol::fuse::{
    AttrOut, Dirent, DirentPlus, EntryOut, GetxattrOut, InHeader, InitOut, LseekOut, Opcode,
    OpenOut, OutHeader, StatfsOut, WriteOut,
};
use vm_memory::ByteValued;

/// Largest errno a reply may carry (`MAX_ERRNO` in the kernel).
pub const MAX_ERRNO: i32 = 4095;

/// Errors of request encoding and reply parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FuseError {
    /// The daemon answered with an error.
    #[error("the daemon answered errno {0}")]
    Errno(i32),
    /// The reply is shorter than `fuse_out_header`.
    #[error("reply of {0} bytes is shorter than fuse_out_header")]
    ShortReply(usize),
    /// `fuse_out_header.len` disagrees with what the device wrote.
    #[error("fuse_out_header.len is {header} but the device wrote {written} bytes")]
    LenMismatch {
        /// The header's `len`.
        header: u32,
        /// Bytes the device reported in the used element.
        written: u32,
    },
    /// The reply is for another request.
    #[error("reply for unique {got} while waiting for {want}")]
    UniqueMismatch {
        /// Expected id.
        want: u64,
        /// Id in the reply.
        got: u64,
    },
    /// The error field is positive or out of the errno range.
    #[error("fuse_out_header.error {0} is not zero or a negated errno")]
    BadError(i32),
    /// An error reply carries a body.
    #[error("an error reply carries {0} body bytes")]
    ErrorWithBody(usize),
    /// The body does not have the size of the reply structure.
    #[error("reply body of {got} bytes where {want} were expected")]
    BodySize {
        /// Expected bytes.
        want: usize,
        /// Bytes received.
        got: usize,
    },
    /// A name contains a NUL byte and cannot be encoded.
    #[error("a name contains a NUL byte")]
    NulInName,
    /// A request is larger than `u32::MAX`.
    #[error("a request of {0} bytes does not fit fuse_in_header.len")]
    TooLarge(usize),
    /// A directory record is truncated or malformed.
    #[error("malformed directory record at byte {0}")]
    BadDirent(usize),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, FuseError>;

/// Caller identity placed in every request header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid.
    pub pid: u32,
}

/// Encodes a whole request: `fuse_in_header` (with `len` of everything) followed by `parts`.
pub fn encode_request(
    opcode: Opcode,
    unique: u64,
    nodeid: u64,
    caller: Caller,
    parts: &[&[u8]],
) -> Result<Vec<u8>> {
    let total = size_of::<InHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
    let len = u32::try_from(total).map_err(|_| FuseError::TooLarge(total))?;
    let header = InHeader {
        len,
        opcode: opcode as u32,
        unique,
        nodeid,
        uid: caller.uid,
        gid: caller.gid,
        pid: caller.pid,
        total_extlen: 0,
        padding: 0,
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(header.as_slice());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// A name as FUSE sends it: the bytes followed by NUL. The bytes are not checked for `/`, so
/// bad-input tests can send such names.
pub fn name_bytes(name: &[u8]) -> Result<Vec<u8>> {
    if name.contains(&0) {
        return Err(FuseError::NulInName);
    }
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name);
    v.push(0);
    Ok(v)
}

/// Checks a reply's `fuse_out_header` against the request and returns the body.
///
/// `written` is the length the device put in the used element; `buf` holds at least that many
/// bytes read back from the writable buffers.
pub fn parse_reply(buf: &[u8], written: u32, unique: u64) -> Result<&[u8]> {
    let written_usize = written as usize;
    let hdr_size = size_of::<OutHeader>();
    if written_usize < hdr_size || buf.len() < hdr_size {
        return Err(FuseError::ShortReply(written_usize.min(buf.len())));
    }
    let hdr: OutHeader = read_struct(buf).ok_or(FuseError::ShortReply(buf.len()))?;
    if hdr.len != written || buf.len() < written_usize {
        return Err(FuseError::LenMismatch {
            header: hdr.len,
            written,
        });
    }
    if hdr.unique != unique {
        return Err(FuseError::UniqueMismatch {
            want: unique,
            got: hdr.unique,
        });
    }
    let body = &buf[hdr_size..written_usize];
    match hdr.error {
        0 => Ok(body),
        e if (-MAX_ERRNO..0).contains(&e) => {
            if !body.is_empty() {
                return Err(FuseError::ErrorWithBody(body.len()));
            }
            Err(FuseError::Errno(-e))
        }
        e => Err(FuseError::BadError(e)),
    }
}

/// Copies a plain-data structure out of the first `size_of::<T>()` bytes of `bytes` (no
/// alignment needed), or `None` if there are fewer.
pub fn read_struct<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let src = bytes.get(..size_of::<T>())?;
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(src);
    Some(v)
}

/// Reads a reply structure that must be the whole body.
pub fn parse_struct<T: ByteValued + Default>(body: &[u8]) -> Result<T> {
    if body.len() != size_of::<T>() {
        return Err(FuseError::BodySize {
            want: size_of::<T>(),
            got: body.len(),
        });
    }
    read_struct(body).ok_or(FuseError::BodySize {
        want: size_of::<T>(),
        got: body.len(),
    })
}

/// Checks an empty reply body.
pub fn parse_empty(body: &[u8]) -> Result<()> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(FuseError::BodySize {
            want: 0,
            got: body.len(),
        })
    }
}

/// Reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK.
pub fn parse_entry(body: &[u8]) -> Result<EntryOut> {
    parse_struct(body)
}

/// Reply to GETATTR and SETATTR.
pub fn parse_attr(body: &[u8]) -> Result<AttrOut> {
    parse_struct(body)
}

/// Reply to OPEN and OPENDIR.
pub fn parse_open(body: &[u8]) -> Result<OpenOut> {
    parse_struct(body)
}

/// Reply to WRITE and COPY_FILE_RANGE.
pub fn parse_write(body: &[u8]) -> Result<WriteOut> {
    parse_struct(body)
}

/// Reply to STATFS.
pub fn parse_statfs(body: &[u8]) -> Result<StatfsOut> {
    parse_struct(body)
}

/// Reply to INIT.
pub fn parse_init(body: &[u8]) -> Result<InitOut> {
    parse_struct(body)
}

/// Reply to LSEEK.
pub fn parse_lseek(body: &[u8]) -> Result<LseekOut> {
    parse_struct(body)
}

/// Reply to CREATE: an entry followed by the open handle.
pub fn parse_create(body: &[u8]) -> Result<(EntryOut, OpenOut)> {
    let e = size_of::<EntryOut>();
    let want = e + size_of::<OpenOut>();
    if body.len() != want {
        return Err(FuseError::BodySize {
            want,
            got: body.len(),
        });
    }
    Ok((parse_struct(&body[..e])?, parse_struct(&body[e..])?))
}

/// Reply to GETXATTR / LISTXATTR: the size when asked with size 0, the data otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// Size of the value or list (request size was 0).
    Size(u32),
    /// The value, or the NUL-separated list of names.
    Data(Vec<u8>),
}

/// Parses a GETXATTR / LISTXATTR reply for a request with buffer size `asked`.
pub fn parse_xattr(body: &[u8], asked: u32) -> Result<XattrReply> {
    if asked == 0 {
        let out: GetxattrOut = parse_struct(body)?;
        return Ok(XattrReply::Size(out.size));
    }
    if body.len() > asked as usize {
        return Err(FuseError::BodySize {
            want: asked as usize,
            got: body.len(),
        });
    }
    Ok(XattrReply::Data(body.to_vec()))
}

/// One READDIR record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset to resume after this entry.
    pub off: u64,
    /// `DT_*` type.
    pub typ: u32,
    /// Name bytes.
    pub name: Vec<u8>,
}

/// One READDIRPLUS record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryPlus {
    /// The entry (node id 0 means no lookup reference was taken).
    pub entry: EntryOut,
    /// The directory record.
    pub dirent: DirEntry,
}

/// Splits a `fuse_dirent` record (header, name, padding) at the start of `buf`. Returns the
/// entry and the record's padded size.
fn split_dirent(buf: &[u8], at: usize) -> Result<(DirEntry, usize)> {
    let hs = size_of::<Dirent>();
    let d: Dirent = read_struct(buf).ok_or(FuseError::BadDirent(at))?;
    let namelen = d.namelen as usize;
    if namelen == 0 || namelen > 4096 {
        return Err(FuseError::BadDirent(at));
    }
    let name = buf
        .get(hs..hs + namelen)
        .ok_or(FuseError::BadDirent(at))?
        .to_vec();
    let padded = vfsdax_protocol::fuse::dirent_size(namelen);
    if buf.len() < padded {
        return Err(FuseError::BadDirent(at));
    }
    Ok((
        DirEntry {
            ino: d.ino,
            off: d.off,
            typ: d.typ,
            name,
        },
        padded,
    ))
}

/// Parses a READDIR reply body into its records.
pub fn parse_readdir(body: &[u8]) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (e, size) = split_dirent(&body[at..], at)?;
        out.push(e);
        at += size;
    }
    Ok(out)
}

/// Parses a READDIRPLUS reply body into its records.
pub fn parse_readdirplus(body: &[u8]) -> Result<Vec<DirEntryPlus>> {
    let es = size_of::<EntryOut>();
    debug_assert_eq!(es + size_of::<Dirent>(), size_of::<DirentPlus>());
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let rest = &body[at..];
        let entry: EntryOut = read_struct(rest).ok_or(FuseError::BadDirent(at))?;
        let (dirent, size) = split_dirent(&rest[es..], at)?;
        out.push(DirEntryPlus { entry, dirent });
        // `split_dirent` padded the dirent part; the entry part is a multiple of 8.
        at += es + size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfsdax_protocol::fuse::{dirent_size, direntplus_size, Attr};

    fn out(len: u32, error: i32, unique: u64, body: &[u8]) -> Vec<u8> {
        let mut v = OutHeader { len, error, unique }.as_slice().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn requests_carry_the_total_length_and_ids() {
        let name = name_bytes(b"file").unwrap();
        let req = encode_request(
            Opcode::Lookup,
            7,
            1,
            Caller {
                uid: 5,
                gid: 6,
                pid: 8,
            },
            &[&name],
        )
        .unwrap();
        assert_eq!(req.len(), 40 + 5);
        let h: InHeader = read_struct(&req).unwrap();
        assert_eq!(h.len, 45);
        assert_eq!(h.opcode, 1);
        assert_eq!((h.unique, h.nodeid, h.uid, h.gid, h.pid), (7, 1, 5, 6, 8));
        assert_eq!(&req[40..], b"file\0");
    }

    #[test]
    fn names_with_nul_are_refused_but_slashes_pass() {
        assert_eq!(name_bytes(b"a\0b"), Err(FuseError::NulInName));
        assert_eq!(name_bytes(b"a/b").unwrap(), b"a/b\0");
        assert_eq!(name_bytes(b"").unwrap(), b"\0");
    }

    #[test]
    fn replies_are_checked() {
        let ok = out(24, 0, 9, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse_reply(&ok, 24, 9).unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse_reply(&ok, 24, 10),
            Err(FuseError::UniqueMismatch { want: 10, got: 9 })
        );
        assert_eq!(
            parse_reply(&ok, 20, 9),
            Err(FuseError::LenMismatch {
                header: 24,
                written: 20
            })
        );
        assert_eq!(
            parse_reply(&ok[..10], 10, 9),
            Err(FuseError::ShortReply(10))
        );
        let err = out(16, -2, 9, &[]);
        assert_eq!(parse_reply(&err, 16, 9), Err(FuseError::Errno(2)));
        let err_body = out(24, -2, 9, &[0; 8]);
        assert_eq!(
            parse_reply(&err_body, 24, 9),
            Err(FuseError::ErrorWithBody(8))
        );
        assert_eq!(
            parse_reply(&out(16, 3, 9, &[]), 16, 9),
            Err(FuseError::BadError(3))
        );
        assert_eq!(
            parse_reply(&out(16, -5000, 9, &[]), 16, 9),
            Err(FuseError::BadError(-5000))
        );
    }

    #[test]
    fn typed_replies_need_exact_sizes() {
        let w = WriteOut {
            size: 77,
            padding: 0,
        };
        assert_eq!(parse_write(w.as_slice()).unwrap().size, 77);
        assert_eq!(
            parse_write(&[0; 7]),
            Err(FuseError::BodySize { want: 8, got: 7 })
        );
        let e = EntryOut {
            nodeid: 3,
            attr: Attr {
                ino: 99,
                ..Default::default()
            },
            ..Default::default()
        };
        let o = OpenOut {
            fh: 11,
            ..Default::default()
        };
        let mut body = e.as_slice().to_vec();
        body.extend_from_slice(o.as_slice());
        let (e2, o2) = parse_create(&body).unwrap();
        assert_eq!((e2.nodeid, e2.attr.ino, o2.fh), (3, 99, 11));
        assert!(parse_create(&body[1..]).is_err());
        parse_empty(&[]).unwrap();
        assert!(parse_empty(&[0]).is_err());
    }

    #[test]
    fn xattr_replies_are_size_or_data() {
        let s = GetxattrOut {
            size: 12,
            padding: 0,
        };
        assert_eq!(parse_xattr(s.as_slice(), 0).unwrap(), XattrReply::Size(12));
        assert_eq!(
            parse_xattr(b"abc", 10).unwrap(),
            XattrReply::Data(b"abc".to_vec())
        );
        assert!(parse_xattr(b"abcdef", 4).is_err());
    }

    fn dirent(ino: u64, off: u64, name: &[u8]) -> Vec<u8> {
        let d = Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: 8,
        };
        let mut v = d.as_slice().to_vec();
        v.extend_from_slice(name);
        v.resize(dirent_size(name.len()), 0);
        v
    }

    #[test]
    fn readdir_records_are_split_on_padding() {
        let mut body = dirent(1, 1, b".");
        body.extend(dirent(2, 2, b"longer-name"));
        body.extend(dirent(3, 3, b"12345678"));
        let v = parse_readdir(&body).unwrap();
        let names: Vec<_> = v.iter().map(|e| e.name.clone()).collect();
        assert_eq!(
            names,
            vec![b".".to_vec(), b"longer-name".to_vec(), b"12345678".to_vec()]
        );
        assert_eq!(v[2].off, 3);
        assert!(parse_readdir(&body[..body.len() - 1]).is_err());
        let mut zero = dirent(1, 1, b"x");
        zero[16..20].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse_readdir(&zero), Err(FuseError::BadDirent(0)));
    }

    #[test]
    fn readdirplus_records_carry_entries() {
        let mut body = Vec::new();
        for (i, name) in [&b"a"[..], b"bcdefghij"].iter().enumerate() {
            let e = EntryOut {
                nodeid: 10 + i as u64,
                ..Default::default()
            };
            body.extend_from_slice(e.as_slice());
            body.extend(dirent(20 + i as u64, 1 + i as u64, name));
            assert_eq!(body.len() % 8, 0);
        }
        assert_eq!(body.len(), direntplus_size(1) + direntplus_size(9));
        let v = parse_readdirplus(&body).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].entry.nodeid, 11);
        assert_eq!(v[1].dirent.name, b"bcdefghij");
        assert!(parse_readdirplus(&body[..100]).is_err());
    }
}
