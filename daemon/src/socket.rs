//! The vhost-user listening socket: bound from a path (replacing a stale socket file, refusing
//! one that is in use) or inherited as a file descriptor.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vhost::vhost_user::Listener;

/// Errors setting up the listening socket.
#[derive(Debug, Error)]
pub enum SocketError {
    /// Another daemon holds the socket.
    #[error("socket {0} is already in use by another vfsdaxd")]
    InUse(PathBuf),
    /// The socket's lock file could not be opened or locked.
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] io::Error),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The stale socket file could not be removed.
    #[error("cannot remove the stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    /// Binding failed.
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] vhost::vhost_user::Error),
    /// The group for `--socket-group` does not exist.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// The socket's group or mode could not be changed.
    #[error("cannot give {0} to its group")]
    Chown(PathBuf, #[source] io::Error),
    /// The file descriptor passed with `--fd` is not a listening Unix socket.
    #[error("file descriptor {0} is not a socket")]
    FdNotSocket(RawFd),
    /// The file descriptor passed with `--fd` could not be inspected.
    #[error("cannot inspect file descriptor {0}")]
    Fd(RawFd, #[source] io::Error),
}

/// The listening socket, with the lock on its path when vfsdaxd bound it itself.
pub struct ListenSocket {
    /// The listener to hand to the vhost-user daemon.
    pub listener: Listener,
    /// The lock file and its path (`None` for a socket inherited with `--fd`).
    lock: Option<(std::fs::File, PathBuf)>,
}

impl Drop for ListenSocket {
    fn drop(&mut self) {
        // Remove the lock file while still holding the lock, so a daemon starting now either
        // saw it locked or finds it gone.
        if let Some((_file, path)) = &self.lock {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The lock file guarding the socket at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Binds a listening socket at `path`.
///
/// Ownership of the path is an exclusive `flock` on `<path>.lock`, held for the daemon's
/// life: a socket whose lock another daemon holds is in use; a socket file without a held
/// lock is stale and replaced. (Probing by connecting would not do: the daemon there serves
/// exactly one connection and would take the probe for its frontend.) A path that is not a
/// socket is never replaced.
pub fn bind(path: &Path) -> Result<ListenSocket, SocketError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let lock_path = lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| SocketError::Lock(lock_path.clone(), e))?;
    // SAFETY: flock on a descriptor this function owns; it takes no pointers.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            SocketError::InUse(path.to_path_buf())
        } else {
            SocketError::Lock(lock_path, err)
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| SocketError::RemoveStale(path.to_path_buf(), e))?,
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let listener =
        Listener::new(path, false).map_err(|e| SocketError::Bind(path.to_path_buf(), e))?;
    Ok(ListenSocket {
        listener,
        lock: Some((lock, lock_path)),
    })
}

/// Gives the socket file to `group` and lets the group connect (mode 0660).
pub fn set_group(path: &Path, group: &str) -> Result<(), SocketError> {
    let gid = group_id(group).ok_or_else(|| SocketError::UnknownGroup(group.to_string()))?;
    std::os::unix::fs::chown(path, None, Some(gid))
        .map_err(|e| SocketError::Chown(path.to_path_buf(), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| SocketError::Chown(path.to_path_buf(), e))
}

/// Looks a group up by name, or takes a numeric gid.
fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let name = std::ffi::CString::new(group).ok()?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated, `grp` and `buf` are writable for the sizes passed, and
    // `result` is a valid out pointer; getgrnam_r writes only inside them.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getgrnam_r returned success with a non-null result, so it initialised `grp`.
    Some(unsafe { grp.assume_init() }.gr_gid)
}

/// Takes over a listening socket passed as a file descriptor (`--fd`).
pub fn from_fd(fd: RawFd) -> Result<ListenSocket, SocketError> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes a `struct stat` into `st`, which is large enough; an invalid fd
    // makes it fail with EBADF.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(SocketError::Fd(fd, io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(SocketError::FdNotSocket(fd));
    }
    // SAFETY: the caller handed this process the descriptor for it to own (virtiofsd's `--fd`
    // contract), it is open (fstat succeeded) and a socket; nothing else in vfsdaxd uses it.
    let listener = unsafe { Listener::from_raw_fd(fd) };
    Ok(ListenSocket {
        listener,
        lock: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stale_socket_is_replaced_and_locked_one_refused() {
        let dir = std::env::temp_dir().join(format!("vfsdax-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        {
            let _stale = UnixListener::bind(&path).unwrap();
        } // dropped: the file stays, nobody holds its lock
        let live = bind(&path).expect("stale socket replaced");
        assert!(lock_path(&path).exists());
        match bind(&path) {
            Err(SocketError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        assert!(path.exists(), "a refused bind leaves the live socket alone");
        drop(live);
        assert!(!path.exists(), "the socket goes with its daemon");
        assert!(!lock_path(&path).exists(), "so does the lock file");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fd_must_be_a_socket() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert!(matches!(
            from_fd(f.as_raw_fd()),
            Err(SocketError::FdNotSocket(_))
        ));
        assert!(matches!(from_fd(-1), Err(SocketError::Fd(-1, _))));
        assert_eq!(group_id("0"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-vfsdax"), None);
    }
}
