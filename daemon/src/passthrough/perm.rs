//! Pure permission and mode arithmetic: ACCESS checks for a guest caller, clearing of
//! set-id bits, and whether the process umask needs correcting after a create.

use std::io;

use super::sys::err;

const R: u32 = libc::R_OK as u32;
const W: u32 = libc::W_OK as u32;
const X: u32 = libc::X_OK as u32;

/// Checks `mask` (`R_OK | W_OK | X_OK`, or `F_OK` = 0) for a caller `uid`/`gid` against a
/// file's `mode`, `owner` and `group`, the way the kernel's `generic_permission` does without
/// ACLs. Root passes everything except execute on a non-directory with no execute bit.
/// Only the caller's primary group is known (FUSE does not send supplementary groups).
pub(crate) fn check_access(
    mode: u32,
    owner: u32,
    group: u32,
    uid: u32,
    gid: u32,
    mask: u32,
) -> io::Result<()> {
    let mask = mask & (R | W | X);
    if mask == 0 {
        return Ok(());
    }
    if uid == 0 {
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if mask & X != 0 && !is_dir && mode & 0o111 == 0 {
            return Err(err(libc::EACCES));
        }
        return Ok(());
    }
    let bits = if uid == owner {
        (mode >> 6) & 7
    } else if gid == group {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(err(libc::EACCES))
    }
}

/// The mode of a regular file after a write, truncation or chown by an unprivileged caller:
/// set-user-id cleared, set-group-id cleared when group-executable (without group execute it
/// marks mandatory locking and stays). `None` when nothing changes.
pub(crate) fn mode_without_privs(mode: u32) -> Option<u32> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut m = mode & 0o7777;
    m &= !libc::S_ISUID;
    if m & libc::S_IXGRP != 0 {
        m &= !libc::S_ISGID;
    }
    (m != mode & 0o7777).then_some(m)
}

/// The `rwx` bits a create asked for (`mode` with the guest's `umask` applied), if the host
/// process umask may have removed some of them (the kernel applies it to every create).
/// `None` when no correction is needed. Set-id and sticky bits are not the umask's business.
pub(crate) fn umask_fixup(mode: u32, guest_umask: u32, host_umask: u32) -> Option<u32> {
    let wanted = mode & 0o777 & !guest_umask;
    (wanted & host_umask != 0).then_some(wanted)
}

/// Whether MKNOD may create a file of `mode` with device number `rdev` on the host: no
/// character or block device, except the overlayfs whiteout (character device 0/0), which
/// reaches no device. A device node made by guest root would be a host device node: a host
/// user who can open it (or a container sharing the directory) reaches the host device.
/// FIFOs, sockets and regular files are harmless and allowed. `EPERM` otherwise, as for a
/// caller without `CAP_MKNOD`.
pub(crate) fn check_mknod(mode: u32, rdev: u32) -> io::Result<()> {
    match mode & libc::S_IFMT {
        libc::S_IFCHR if rdev == 0 => Ok(()),
        libc::S_IFCHR | libc::S_IFBLK => Err(err(libc::EPERM)),
        _ => Ok(()),
    }
}

/// The process umask from the text of `/proc/self/status` (`Umask:\t0022`).
pub(crate) fn parse_umask(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: u32 = libc::S_IFREG;
    const DIR: u32 = libc::S_IFDIR;

    fn ok(r: io::Result<()>) -> bool {
        r.is_ok()
    }

    #[test]
    fn owner_group_other_classes() {
        let m = REG | 0o640;
        assert!(ok(check_access(m, 10, 20, 10, 99, R | W)));
        assert!(!ok(check_access(m, 10, 20, 10, 99, X)));
        assert!(ok(check_access(m, 10, 20, 11, 20, R)));
        assert!(!ok(check_access(m, 10, 20, 11, 20, W)));
        assert!(!ok(check_access(m, 10, 20, 11, 21, R)));
        // The owner class applies even when it grants less than "other".
        assert!(!ok(check_access(REG | 0o007, 10, 20, 10, 20, R)));
    }

    #[test]
    fn existence_always_passes() {
        assert!(ok(check_access(REG, 10, 20, 11, 21, 0)));
    }

    #[test]
    fn root_passes_but_needs_some_x_on_files() {
        assert!(ok(check_access(REG, 10, 20, 0, 0, R | W)));
        assert_eq!(
            check_access(REG | 0o666, 10, 20, 0, 0, X)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EACCES)
        );
        assert!(ok(check_access(REG | 0o001, 10, 20, 0, 0, X)));
        assert!(ok(check_access(DIR, 10, 20, 0, 0, X)));
    }

    #[test]
    fn privs_cleared() {
        assert_eq!(mode_without_privs(REG | 0o4755), Some(0o755));
        assert_eq!(mode_without_privs(REG | 0o6755), Some(0o755));
        assert_eq!(mode_without_privs(REG | 0o6745), Some(0o2745));
        // sgid without group-execute stays; nothing to do.
        assert_eq!(mode_without_privs(REG | 0o2745), None);
        assert_eq!(mode_without_privs(REG | 0o755), None);
        assert_eq!(mode_without_privs(DIR | 0o2775), None);
    }

    #[test]
    fn umask_fixup_only_when_host_umask_bites() {
        assert_eq!(umask_fixup(0o644, 0o022, 0o022), None);
        assert_eq!(umask_fixup(0o666, 0o002, 0o022), Some(0o664));
        assert_eq!(umask_fixup(0o777, 0o077, 0o022), None);
        assert_eq!(umask_fixup(REG | 0o666, 0, 0o002), Some(0o666));
        assert_eq!(umask_fixup(0o2775, 0, 0o022), Some(0o775));
    }

    #[test]
    fn umask_from_status() {
        let s = "Name:\tx\nUmask:\t0027\nState:\tR\n";
        assert_eq!(parse_umask(s), Some(0o027));
        assert_eq!(parse_umask("Name:\tx\n"), None);
    }
}
