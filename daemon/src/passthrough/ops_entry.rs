//! Name operations: LOOKUP and everything that creates or removes a name (MKNOD, MKDIR,
//! SYMLINK, LINK, UNLINK, RMDIR, RENAME/RENAME2).

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

use vfsdax_protocol::fuse::flags::{attr, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT};

use super::inode::InodeData;
use super::sys::{self, err};
use super::{names, perm, PassthroughFs};
use crate::filesystem::{Context, Entry, Inode};
use vfsdax_protocol::fuse::flags::init;

/// How many levels [`PassthroughFs::under_share`] climbs at most: a `..` deeper than this
/// below the share's root is refused (`EACCES`). Each level costs two system calls, so one
/// LOOKUP `..` costs at most about 8,000.
const MAX_CLIMB: usize = 4096;

/// The RENAME2 flags passed to the host; anything else is `EINVAL`.
const RENAME_FLAGS: u32 = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT;

impl PassthroughFs {
    /// The reply for `data` with attributes `st`; `parent` (the directory it was found in)
    /// decides the submount flag.
    pub(super) fn make_entry(
        &self,
        data: &InodeData,
        st: libc::stat64,
        parent: Option<&InodeData>,
    ) -> Entry {
        let crosses = parent.is_some_and(|p| {
            p.key.dev != data.key.dev || (p.key.mnt_id != 0 && p.key.mnt_id != data.key.mnt_id)
        });
        let attr_flags = if data.is_dir() && crosses && self.negotiated(init::SUBMOUNTS) {
            attr::SUBMOUNT
        } else {
            0
        };
        Entry {
            inode: data.id,
            generation: 0,
            attr: st,
            attr_flags,
            attr_timeout: self.timeout(),
            entry_timeout: self.timeout(),
        }
    }

    /// LOOKUP of `name` in `parent`: counts one lookup of the result. `.` is `parent`
    /// itself; `..` of the share root is the root.
    pub(super) fn lookup_in(&self, parent: &InodeData, name: &CStr) -> io::Result<Entry> {
        names::check_name(name)?;
        let b = name.to_bytes();
        let dot = names::is_dot(b);
        if dot || (names::is_dotdot(b) && self.is_root_inode(parent)) {
            let target = if dot { parent } else { self.inodes.root() };
            let st = sys::stat_fd(target.fd())?;
            self.inodes.add_ref(target);
            return Ok(self.make_entry(target, st.st, None));
        }
        let file = sys::openat(parent.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        if names::is_dotdot(b) {
            // A directory a host user moved out of the share would let `..` climb to the
            // host's root (a sandbox's root or bind mount stops only some of those walks).
            if !self.under_share(&file)? {
                crate::guest_log!(
                    log::Level::Warn,
                    "LOOKUP .. of node {} refused: the result is outside the share (a directory \
                     was moved out of it)",
                    parent.id
                );
                return Err(err(libc::EACCES));
            }
            return self.entry_of_file(file, None);
        }
        self.entry_of_file(file, Some(parent))
    }

    /// Whether directory `dir` lies under the share's root: climbs `..` from it until it
    /// reaches the root (yes) or a directory that is its own parent, the host's or the
    /// process's root (no), at most [`MAX_CLIMB`] levels.
    fn under_share(&self, dir: &std::fs::File) -> io::Result<bool> {
        let root = &self.inodes.root().key;
        let key = |fd| sys::stat_fd(fd).map(|st| (st.st.st_dev, st.st.st_ino));
        let mut cur = key(dir.as_raw_fd())?;
        let mut up = sys::openat(dir.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for _ in 0..MAX_CLIMB {
            if cur == (root.dev, root.ino) {
                return Ok(true);
            }
            let next = key(up.as_raw_fd())?;
            if next == cur {
                return Ok(false);
            }
            cur = next;
            up = sys::openat(up.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        }
        Ok(false)
    }

    /// Counts one lookup of `file` (an `O_PATH` descriptor) and builds its entry: node id and
    /// attributes are those of that very file, whatever name it has now. `parent` as for
    /// [`Self::make_entry`].
    pub(super) fn entry_of_file(
        &self,
        file: std::fs::File,
        parent: Option<&InodeData>,
    ) -> io::Result<Entry> {
        let st = sys::stat_fd(file.as_raw_fd())?;
        let data = self.inodes.lookup_or_insert(file, &st);
        Ok(self.make_entry(&data, st.st, parent))
    }

    pub(super) fn do_mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        names::check_new_name(name)?;
        if self.cfg.deny_device_nodes {
            perm::check_mknod(mode, rdev)?;
        }
        let p = self.inode(parent)?;
        let mode = mode & !(umask & 0o7777);
        {
            let _creds = self.creds(ctx)?;
            sys::mknodat(p.fd(), name, mode, rdev.into())?;
        }
        // The mode is the one asked for: the daemon runs with umask 0 (no fix-up by name, which
        // a host user could swap for another file).
        self.lookup_in(&p, name)
    }

    pub(super) fn do_mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        names::check_new_name(name)?;
        let p = self.inode(parent)?;
        let mode = mode & 0o7777 & !umask;
        {
            let _creds = self.creds(ctx)?;
            sys::mkdirat(p.fd(), name, mode)?;
        }
        self.lookup_in(&p, name)
    }

    pub(super) fn do_symlink(
        &self,
        ctx: Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        names::check_new_name(name)?;
        let p = self.inode(parent)?;
        {
            let _creds = self.creds(ctx)?;
            // The target is stored as given and never resolved by the daemon.
            sys::symlinkat(linkname, p.fd(), name)?;
        }
        self.lookup_in(&p, name)
    }

    pub(super) fn do_link(
        &self,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        names::check_new_name(newname)?;
        let data = self.inode(inode)?;
        let p = self.inode(newparent)?;
        // Links the file the O_PATH descriptor holds (a symlink links the symlink itself).
        match sys::linkat(data.fd(), sys::EMPTY, p.fd(), newname, libc::AT_EMPTY_PATH) {
            Ok(()) => {}
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the magic link does not, and it
            // resolves to the same file without following it further.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => sys::linkat(
                self.proc_self_fd.as_raw_fd(),
                &sys::fd_name(data.fd()),
                p.fd(),
                newname,
                libc::AT_SYMLINK_FOLLOW,
            )?,
            Err(e) => return Err(e),
        }
        #[cfg(test)]
        self.run_race_hook();
        // The entry is the file linked, not whatever `newname` names by now (a racing
        // rename). A second descriptor of it, in case the guest forgot the id meanwhile.
        self.entry_of_file(data.file.try_clone()?, Some(&p))
    }

    pub(super) fn do_remove(&self, parent: Inode, name: &CStr, dir: bool) -> io::Result<()> {
        self.check_writable()?;
        names::check_new_name(name)?;
        let p = self.inode(parent)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(p.fd(), name, flags)
    }

    pub(super) fn do_rename(
        &self,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(err(libc::EINVAL));
        }
        names::check_new_name(oldname)?;
        names::check_new_name(newname)?;
        let od = self.inode(olddir)?;
        let nd = self.inode(newdir)?;
        sys::renameat2(od.fd(), oldname, nd.fd(), newname, flags)
    }
}
