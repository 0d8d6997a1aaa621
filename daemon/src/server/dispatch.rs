//! One request end to end: header checks, argument decoding, the filesystem call, the reply.

use std::mem::size_of;
use std::sync::atomic::Ordering;

use vfsdax_protocol::fuse::{
    flags, AttrOut, EntryOut, GetxattrOut, InHeader, InitOut, LseekOut, Opcode, OpenOut, StatfsOut,
    WriteOut,
};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

use super::chain::{Reader, Writer};
use super::init::{negotiate, InitOutcome};
use super::reply::{attr_out, entry_out, out_header, statfs_out, DirentBuf, OUT_HEADER_SIZE};
use super::request::{decode, expects_reply, Errno, Request};
use super::{errno_of, Server, ServerError};
use crate::dax::Mapper;
use crate::filesystem::{Context, FileSystem, XattrReply};

/// Size of `fuse_in_header`.
const IN_HEADER_SIZE: usize = size_of::<InHeader>();

/// Largest argument block read into host memory for one request (WRITE data is not: it goes
/// straight from guest memory to the file). The biggest legitimate one is SETXATTR with a
/// 64 KiB value.
pub const MAX_ARGS_LEN: usize = 1 << 20;

/// What a request produced.
enum Outcome {
    /// Reply with this body.
    Reply(Vec<u8>),
    /// The reply (of this many bytes in total) is already in the writer.
    Written(usize),
    /// The opcode takes no reply.
    NoReply,
}

fn body<T: ByteValued>(v: T) -> Outcome {
    Outcome::Reply(v.as_slice().to_vec())
}

fn empty() -> Outcome {
    Outcome::Reply(Vec::new())
}

/// Turns a filesystem error into the errno to answer.
fn fs_err(e: std::io::Error) -> Errno {
    errno_of(&e)
}

/// Size of the fixed reply body of a request, checked against the writer's room before the
/// filesystem is called (so that an entry the guest cannot receive is never looked up).
fn fixed_reply_size(req: &Request<'_>) -> usize {
    match req {
        Request::Init(_) => size_of::<InitOut>(),
        Request::Lookup { .. }
        | Request::Symlink { .. }
        | Request::Mknod { .. }
        | Request::Mkdir { .. }
        | Request::Link { .. } => size_of::<EntryOut>(),
        Request::Getattr { .. } | Request::Setattr(_) => size_of::<AttrOut>(),
        Request::Open(_) | Request::Opendir(_) => size_of::<OpenOut>(),
        Request::Create { .. } => size_of::<EntryOut>() + size_of::<OpenOut>(),
        Request::Write(_) | Request::CopyFileRange(_) => size_of::<WriteOut>(),
        Request::Statfs => size_of::<StatfsOut>(),
        Request::Lseek(_) => size_of::<LseekOut>(),
        Request::Getxattr { size: 0, .. } | Request::Listxattr { size: 0 } => {
            size_of::<GetxattrOut>()
        }
        _ => 0,
    }
}

/// The header, or what could be read of a short one.
enum Header {
    Full(InHeader),
    /// Fewer than `fuse_in_header` bytes; `unique` if at least its bytes were there.
    Short {
        unique: u64,
    },
}

fn read_header<B: BitmapSlice>(r: &mut Reader<'_, B>) -> Header {
    if r.available_bytes() >= IN_HEADER_SIZE {
        if let Ok(h) = r.read_obj::<InHeader>() {
            return Header::Full(h);
        }
    }
    let mut buf = [0u8; IN_HEADER_SIZE];
    let n = r.available_bytes().min(IN_HEADER_SIZE);
    let unique = match r.read_exact(&mut buf[..n]) {
        Ok(()) if n >= 16 => u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()),
        _ => 0,
    };
    Header::Short { unique }
}

/// Writes a reply with `errno` (0 for success) and `body`; returns its length.
fn send<B: BitmapSlice>(
    w: &mut Writer<'_, B>,
    unique: u64,
    errno: i32,
    body: &[u8],
) -> Result<usize, ServerError> {
    let body = if errno == 0 { body } else { &[] };
    let header = out_header(unique, errno, body.len());
    w.write_obj(header).map_err(ServerError::WriteReply)?;
    w.write_all(body).map_err(ServerError::WriteReply)?;
    Ok(OUT_HEADER_SIZE + body.len())
}

impl<F: FileSystem> Server<F> {
    /// Serves one request from `r`, replying into `w`; returns the reply's length.
    pub(super) fn handle<B: BitmapSlice>(
        &self,
        r: &mut Reader<'_, B>,
        w: &mut Writer<'_, B>,
        mapper: &dyn Mapper,
    ) -> Result<usize, ServerError> {
        let room = w.available_bytes();
        let h = match read_header(r) {
            Header::Full(h) => h,
            Header::Short { unique } => {
                if room < OUT_HEADER_SIZE {
                    return Err(ServerError::NoRoomForReply { room });
                }
                return send(w, unique, libc::EINVAL, &[]);
            }
        };
        let reply = expects_reply(h.opcode);
        if reply && room < OUT_HEADER_SIZE {
            return Err(ServerError::NoRoomForReply { room });
        }
        let fail = |w: &mut Writer<'_, B>, errno: Errno| {
            if reply {
                send(w, h.unique, errno, &[])
            } else {
                Err(ServerError::BadRequestWithoutReply {
                    opcode: h.opcode,
                    errno,
                })
            }
        };

        // `len` covers the header, the arguments and the extensions.
        let len = h.len as usize;
        if len < IN_HEADER_SIZE || len - IN_HEADER_SIZE > r.available_bytes() {
            return fail(w, libc::EINVAL);
        }
        let body_len = len - IN_HEADER_SIZE;
        let ext_len = usize::from(h.total_extlen) * 8;
        let Some(args_len) = body_len.checked_sub(ext_len) else {
            return fail(w, libc::EINVAL);
        };

        let op = Opcode::from_u32(h.opcode);
        if op != Some(Opcode::Init) && !self.initialized.load(Ordering::Acquire) {
            if !reply {
                // A FORGET racing with DESTROY on another queue: nothing is left to forget.
                return Ok(0);
            }
            return fail(w, libc::EIO);
        }
        let enosys = match op {
            Some(Opcode::Setxattr | Opcode::Getxattr | Opcode::Listxattr | Opcode::Removexattr) => {
                !self.opts.xattr
            }
            Some(Opcode::SetupMapping | Opcode::RemoveMapping) => self.opts.dax_window_size == 0,
            _ => false,
        };
        if enosys {
            return fail(w, libc::ENOSYS);
        }

        // Read the arguments; WRITE's data stays in guest memory.
        let fixed_len = if op == Some(Opcode::Write) {
            args_len.min(size_of::<vfsdax_protocol::fuse::WriteIn>())
        } else if args_len > MAX_ARGS_LEN {
            return fail(w, libc::EINVAL);
        } else {
            args_len
        };
        let mut args = vec![0u8; fixed_len];
        if r.read_exact(&mut args).is_err() {
            return fail(w, libc::EINVAL);
        }
        // What is left of the request proper (WRITE data); extensions are not used.
        r.truncate(args_len - fixed_len);

        let setxattr_ext = self.flags.load(Ordering::Acquire) & flags::init::SETXATTR_EXT != 0;
        let req = match decode(h.opcode, &args, setxattr_ext) {
            Ok(req) => req,
            Err(errno) => return fail(w, errno),
        };
        if reply && OUT_HEADER_SIZE + fixed_reply_size(&req) > room {
            return fail(w, libc::ERANGE);
        }
        let ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        // A panic in the filesystem is contained to its request: the reply room is written
        // again from its start with EIO, the queue goes on, and a rate-limited line says so.
        let start = w.clone();
        let run = std::panic::AssertUnwindSafe(|| self.execute(ctx, &h, req, r, w, mapper));
        match std::panic::catch_unwind(run) {
            Ok(Ok(Outcome::Reply(body))) => send(w, h.unique, 0, &body),
            Ok(Ok(Outcome::Written(n))) => Ok(n),
            Ok(Ok(Outcome::NoReply)) => Ok(0),
            Ok(Err(errno)) => fail(w, errno),
            Err(_) => {
                crate::guest_log!(
                    log::Level::Error,
                    "request {} (opcode {}) panicked; answered EIO",
                    h.unique,
                    h.opcode
                );
                let mut w = start;
                fail(&mut w, libc::EIO)
            }
        }
    }

    /// Calls the filesystem for `req`.
    fn execute<B: BitmapSlice>(
        &self,
        ctx: Context,
        h: &InHeader,
        req: Request<'_>,
        r: &mut Reader<'_, B>,
        w: &mut Writer<'_, B>,
        mapper: &dyn Mapper,
    ) -> Result<Outcome, Errno> {
        let fs = &self.fs;
        let node = h.nodeid;
        let entry = |e: crate::filesystem::Entry| body(entry_out(&e));
        Ok(match req {
            Request::Init(arg) => {
                match negotiate(&arg, &self.opts, self.page_size, |c| fs.init(c, mapper))? {
                    InitOutcome::Accepted { reply, flags } => {
                        self.flags.store(flags, Ordering::Release);
                        self.initialized.store(true, Ordering::Release);
                        body(reply)
                    }
                    InitOutcome::MajorTooNew(reply) => body(reply),
                }
            }
            Request::Destroy => {
                fs.destroy(mapper);
                self.initialized.store(false, Ordering::Release);
                self.flags.store(0, Ordering::Release);
                empty()
            }
            Request::Lookup { name } => entry(fs.lookup(ctx, node, name).map_err(fs_err)?),
            Request::Forget(arg) => {
                fs.forget(ctx, node, arg.nlookup, mapper);
                Outcome::NoReply
            }
            Request::BatchForget(list) => {
                let pairs: Vec<_> = list.iter().map(|f| (f.nodeid, f.nlookup)).collect();
                fs.batch_forget(ctx, &pairs, mapper);
                Outcome::NoReply
            }
            Request::Getattr { fh } => body(attr_out(&fs.getattr(ctx, node, fh).map_err(fs_err)?)),
            Request::Setattr(arg) => {
                let fh = (arg.valid & flags::fattr::FH != 0).then_some(arg.fh);
                body(attr_out(&fs.setattr(ctx, node, &arg, fh).map_err(fs_err)?))
            }
            Request::Readlink => {
                let target = fs.readlink(ctx, node).map_err(fs_err)?;
                if OUT_HEADER_SIZE + target.len() > w.available_bytes() {
                    return Err(libc::ERANGE);
                }
                Outcome::Reply(target)
            }
            Request::Symlink { name, linkname } => {
                entry(fs.symlink(ctx, linkname, node, name).map_err(fs_err)?)
            }
            Request::Mknod { arg, name } => entry(
                fs.mknod(ctx, node, name, arg.mode, arg.rdev, arg.umask)
                    .map_err(fs_err)?,
            ),
            Request::Mkdir { arg, name } => entry(
                fs.mkdir(ctx, node, name, arg.mode, arg.umask)
                    .map_err(fs_err)?,
            ),
            Request::Unlink { name } => {
                fs.unlink(ctx, node, name).map_err(fs_err)?;
                empty()
            }
            Request::Rmdir { name } => {
                fs.rmdir(ctx, node, name).map_err(fs_err)?;
                empty()
            }
            Request::Rename {
                newdir,
                flags,
                oldname,
                newname,
            } => {
                fs.rename(ctx, node, oldname, newdir, newname, flags)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Link { oldnodeid, name } => {
                entry(fs.link(ctx, oldnodeid, node, name).map_err(fs_err)?)
            }
            Request::Open(arg) => {
                let kill = arg.open_flags & flags::OPEN_KILL_SUIDGID != 0;
                let (fh, open_flags) = fs.open(ctx, node, arg.flags, kill).map_err(fs_err)?;
                body(OpenOut {
                    fh: fh.unwrap_or(0),
                    open_flags,
                    padding: 0,
                })
            }
            Request::Opendir(arg) => {
                let (fh, open_flags) = fs.opendir(ctx, node, arg.flags).map_err(fs_err)?;
                body(OpenOut {
                    fh: fh.unwrap_or(0),
                    open_flags,
                    padding: 0,
                })
            }
            Request::Create { arg, name } => {
                let kill = arg.open_flags & flags::OPEN_KILL_SUIDGID != 0;
                let (e, fh, open_flags) = fs
                    .create(ctx, node, name, arg.mode, arg.flags, arg.umask, kill)
                    .map_err(fs_err)?;
                let mut out = entry_out(&e).as_slice().to_vec();
                out.extend_from_slice(
                    OpenOut {
                        fh: fh.unwrap_or(0),
                        open_flags,
                        padding: 0,
                    }
                    .as_slice(),
                );
                Outcome::Reply(out)
            }
            Request::Read(arg) => return self.read(ctx, h, arg, w),
            Request::Write(arg) => {
                let size = arg.size as usize;
                if size > r.available_bytes() || arg.size > self.max_write() {
                    return Err(libc::EINVAL);
                }
                r.truncate(size);
                let kill = arg.write_flags & flags::WRITE_KILL_SUIDGID != 0;
                let n = fs
                    .write(ctx, node, arg.fh, r, arg.size, arg.offset, kill)
                    .map_err(fs_err)?;
                body(WriteOut {
                    size: n.min(size) as u32,
                    padding: 0,
                })
            }
            Request::Statfs => body(statfs_out(&fs.statfs(ctx, node).map_err(fs_err)?)),
            Request::Release(arg) => {
                let flush = arg.release_flags & flags::RELEASE_FLUSH != 0;
                fs.release(ctx, node, arg.flags, arg.fh, flush)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Fsync(arg) => {
                let datasync = arg.fsync_flags & flags::FSYNC_FDATASYNC != 0;
                fs.fsync(ctx, node, datasync, arg.fh).map_err(fs_err)?;
                empty()
            }
            Request::Flush(arg) => {
                fs.flush(ctx, node, arg.fh, arg.lock_owner)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Readdir { arg, plus } => return self.readdir(ctx, h, arg, plus, w),
            Request::Releasedir(arg) => {
                fs.releasedir(ctx, node, arg.flags, arg.fh)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Fsyncdir(arg) => {
                let datasync = arg.fsync_flags & flags::FSYNC_FDATASYNC != 0;
                fs.fsyncdir(ctx, node, datasync, arg.fh).map_err(fs_err)?;
                empty()
            }
            Request::Access(arg) => {
                fs.access(ctx, node, arg.mask).map_err(fs_err)?;
                empty()
            }
            Request::Fallocate(arg) => {
                fs.fallocate(ctx, node, arg.fh, arg.mode, arg.offset, arg.length)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Lseek(arg) => {
                let offset = fs
                    .lseek(ctx, node, arg.fh, arg.offset, arg.whence)
                    .map_err(fs_err)?;
                body(LseekOut { offset })
            }
            Request::CopyFileRange(arg) => {
                let n = fs
                    .copy_file_range(
                        ctx,
                        node,
                        arg.fh_in,
                        arg.off_in,
                        arg.nodeid_out,
                        arg.fh_out,
                        arg.off_out,
                        arg.len,
                        arg.flags,
                    )
                    .map_err(fs_err)?;
                // The reply field is 32 bits; the guest asks for at most that much at a time.
                let n = u32::try_from(n.min(usize::try_from(arg.len).unwrap_or(usize::MAX)))
                    .unwrap_or(u32::MAX);
                body(WriteOut {
                    size: n,
                    padding: 0,
                })
            }
            Request::Syncfs => {
                fs.syncfs(ctx, node).map_err(fs_err)?;
                empty()
            }
            Request::Setxattr {
                flags,
                setxattr_flags,
                name,
                value,
            } => {
                fs.setxattr(ctx, node, name, value, flags, setxattr_flags)
                    .map_err(fs_err)?;
                empty()
            }
            Request::Getxattr { size, name } => {
                let reply = fs.getxattr(ctx, node, name, size).map_err(fs_err)?;
                xattr_reply(reply, size, w.available_bytes())?
            }
            Request::Listxattr { size } => {
                let reply = fs.listxattr(ctx, node, size).map_err(fs_err)?;
                xattr_reply(reply, size, w.available_bytes())?
            }
            Request::Removexattr { name } => {
                fs.removexattr(ctx, node, name).map_err(fs_err)?;
                empty()
            }
            Request::Interrupt(_) => Outcome::NoReply,
            Request::SetupMapping(arg) => {
                let end = arg.moffset.checked_add(arg.len).ok_or(libc::EINVAL)?;
                if end > self.opts.dax_window_size {
                    return Err(libc::EINVAL);
                }
                fs.setup_mapping(
                    ctx,
                    node,
                    arg.fh,
                    arg.foffset,
                    arg.len,
                    arg.flags,
                    arg.moffset,
                    mapper,
                )
                .map_err(fs_err)?;
                empty()
            }
            Request::RemoveMapping(list) => {
                fs.remove_mapping(ctx, &list, mapper).map_err(fs_err)?;
                empty()
            }
            Request::Unsupported(_) => return Err(libc::ENOSYS),
        })
    }

    /// READ: the file's bytes go straight into the chain after a header written last.
    fn read<B: BitmapSlice>(
        &self,
        ctx: Context,
        h: &InHeader,
        arg: vfsdax_protocol::fuse::ReadIn,
        w: &mut Writer<'_, B>,
    ) -> Result<Outcome, Errno> {
        let mut data = w.split_at(OUT_HEADER_SIZE).map_err(|_| libc::ERANGE)?;
        let size = (arg.size as usize).min(data.available_bytes());
        // Keep the data writer to what the guest asked for.
        let _ = data.split_at(size);
        // `size` is at most `arg.size`, so it fits in a u32.
        let res = self
            .fs
            .read(ctx, h.nodeid, arg.fh, &mut data, size as u32, arg.offset);
        match res {
            Ok(_) => {
                let n = data.bytes_written();
                let header = out_header(h.unique, 0, n);
                w.write_obj(header).map_err(|_| libc::EIO)?;
                Ok(Outcome::Written(OUT_HEADER_SIZE + n))
            }
            Err(e) => Err(fs_err(e)),
        }
    }

    /// The largest WRITE the guest was told it may send.
    fn max_write(&self) -> u32 {
        match self.opts.max_write {
            0 => super::DEFAULT_MAX_WRITE,
            n => n,
        }
    }

    /// READDIR / READDIRPLUS: records packed into at most what the guest asked for.
    fn readdir<B: BitmapSlice>(
        &self,
        ctx: Context,
        h: &InHeader,
        arg: vfsdax_protocol::fuse::ReadIn,
        plus: bool,
        w: &mut Writer<'_, B>,
    ) -> Result<Outcome, Errno> {
        let limit = (arg.size as usize)
            .min(w.available_bytes().saturating_sub(OUT_HEADER_SIZE))
            .min(vfsdax_protocol::fuse::MAX_READDIR_REPLY);
        let mut buf = DirentBuf::new(limit, plus);
        let res = self.fs.readdir(
            ctx,
            h.nodeid,
            arg.fh,
            limit as u32,
            arg.offset,
            plus,
            &mut |d, e| buf.add(d, e.as_ref()),
        );
        match res {
            Ok(()) => Ok(Outcome::Reply(buf.bytes().to_vec())),
            // Entries already packed carry lookups (with plus): send them rather than the error.
            Err(_) if !buf.bytes().is_empty() => Ok(Outcome::Reply(buf.bytes().to_vec())),
            Err(e) => Err(fs_err(e)),
        }
    }
}

/// The reply to GETXATTR / LISTXATTR for a caller's buffer of `size` bytes (0 asks for the
/// size) and `room` bytes of room in the chain.
fn xattr_reply(reply: XattrReply, size: u32, room: usize) -> Result<Outcome, Errno> {
    let count = |n: usize| {
        let size = u32::try_from(n).map_err(|_| libc::E2BIG)?;
        Ok(body(GetxattrOut { size, padding: 0 }))
    };
    match reply {
        XattrReply::Count(n) => count(n as usize),
        XattrReply::Value(v) if size == 0 => count(v.len()),
        XattrReply::Value(v) => {
            if v.len() > size as usize || OUT_HEADER_SIZE + v.len() > room {
                return Err(libc::ERANGE);
            }
            Ok(Outcome::Reply(v))
        }
    }
}
