//! Validation of the names a guest sends. A name is one path component: it is resolved
//! relative to its parent's descriptor, so it must not be able to name anything else.

use std::ffi::CStr;
use std::io;

use super::sys::err;

/// Whether `name` is `.`.
pub(crate) fn is_dot(name: &[u8]) -> bool {
    name == b"."
}

/// Whether `name` is `..`.
pub(crate) fn is_dotdot(name: &[u8]) -> bool {
    name == b".."
}

/// A name for LOOKUP: one non-empty component without `/` (`.` and `..` are allowed and
/// handled by the caller). NUL cannot occur inside a [`CStr`].
pub(crate) fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// A name that a mutation (create, remove, rename, link) works on: as [`check_name`], and
/// never `.` or `..`.
pub(crate) fn check_new_name(name: &CStr) -> io::Result<()> {
    check_name(name)?;
    let b = name.to_bytes();
    if is_dot(b) || is_dotdot(b) {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(r: io::Result<()>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn lookup_names() {
        assert!(check_name(c"a").is_ok());
        assert!(check_name(c".").is_ok());
        assert!(check_name(c"..").is_ok());
        assert!(check_name(c"...").is_ok());
        assert!(check_name(c"a b\\c").is_ok());
        assert_eq!(errno(check_name(c"")), Some(libc::EINVAL));
        assert_eq!(errno(check_name(c"a/b")), Some(libc::EINVAL));
        assert_eq!(errno(check_name(c"/")), Some(libc::EINVAL));
        assert_eq!(errno(check_name(c"../etc")), Some(libc::EINVAL));
    }

    #[test]
    fn mutation_names() {
        assert!(check_new_name(c"file").is_ok());
        assert!(check_new_name(c"..x").is_ok());
        assert_eq!(errno(check_new_name(c".")), Some(libc::EINVAL));
        assert_eq!(errno(check_new_name(c"..")), Some(libc::EINVAL));
        assert_eq!(errno(check_new_name(c"x/")), Some(libc::EINVAL));
        assert_eq!(errno(check_new_name(c"")), Some(libc::EINVAL));
    }
}
