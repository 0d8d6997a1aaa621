//! The vhost-user listening socket: bound from a path (replacing a stale socket file, refusing
//! one that is in use) or inherited as a file descriptor.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vhost::vhost_user::Listener;

/// Errors setting up the listening socket.
#[derive(Debug, Error)]
pub enum SocketError {
    /// Another process accepts connections on the socket.
    #[error("socket {0} is already in use by another process")]
    InUse(PathBuf),
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

/// Binds a listening socket at `path`. A socket file nobody listens on is replaced; a socket
/// another process accepts on, or a file that is not a socket, is an error.
pub fn bind(path: &Path) -> Result<Listener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| SocketError::RemoveStale(path.to_path_buf(), e))?,
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    Listener::new(path, false).map_err(|e| SocketError::Bind(path.to_path_buf(), e))
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
pub fn from_fd(fd: RawFd) -> Result<Listener, SocketError> {
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
    Ok(unsafe { Listener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("vfsdax-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        {
            let _stale = UnixListener::bind(&path).unwrap();
        } // dropped: the file stays, nobody listens
        let live = bind(&path).expect("stale socket replaced");
        match bind(&path) {
            Err(SocketError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        drop(live);
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
