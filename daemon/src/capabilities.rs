//! Capabilities: the daemon keeps only what serving the share needs (`--modcaps` changes the
//! set, virtiofsd's grammar).
//!
//! Before it serves, still single-threaded (capability sets belong to each thread, and threads
//! started later inherit the caller's), the daemon drops every other capability from its
//! bounding set, clears its inheritable and ambient sets and sets its permitted and effective
//! sets to [`keep`] of what it holds. What needs more runs before: the sandbox (`CAP_SYS_ADMIN`,
//! `CAP_SYS_CHROOT`), the open-file limit (`CAP_SYS_RESOURCE`), the truncation guard's fanotify
//! group (`CAP_SYS_ADMIN`).
//!
//! The set is virtiofsd 1.14's (for files of other processes' callers under `--sandbox chroot`
//! or `none`, the truncation guard also needs `CAP_SYS_PTRACE`, see the README): `CHOWN DAC_OVERRIDE FOWNER FSETID SETGID SETUID` for files of
//! any owner, `MKNOD` for the guest's device nodes, `SETFCAP` to remove a file's
//! `security.capability` (setting one is refused in the passthrough whatever the
//! capabilities: the host would honour file capabilities a guest wrote). DAX needs nothing
//! more: the window is changed through the vhost-user channel, and the guard marks and reads
//! files the daemon already holds.
//!
//! Requests run with the caller's fsuid and fsgid (`CAP_SETUID`, `CAP_SETGID`); the kernel
//! clears the file-system capabilities from the effective set while the fsuid is not 0 and
//! restores them from the permitted set after, so a request never has more than its caller.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability};
use thiserror::Error;

/// What the daemon keeps by default.
pub const DEFAULT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// Errors parsing `--modcaps` or changing the sets.
#[derive(Debug, Error)]
pub enum CapabilitiesError {
    /// An entry of `--modcaps` is not `+name` or `-name`.
    #[error("--modcaps entry {0:?} is not +name or -name (e.g. --modcaps=+sys_admin:-mknod)")]
    Syntax(String),
    /// A name that is no capability.
    #[error("--modcaps: {0:?} is not a capability name (e.g. chown, sys_admin)")]
    Unknown(String),
    /// Another thread runs: it would keep every capability.
    #[error("capabilities must be dropped before any thread starts, and {0} threads run")]
    Threads(usize),
    /// The process's threads could not be counted.
    #[error("cannot count the daemon's threads before dropping capabilities")]
    ThreadCount(#[source] std::io::Error),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// The kernel refused a change.
    #[error("cannot {what}")]
    Change {
        /// What was being done.
        what: &'static str,
        /// The library's error.
        #[source]
        source: caps::errors::CapsError,
    },
}

/// One `--modcaps` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modification {
    /// `+name`: keep it too.
    Add(Capability),
    /// `-name`: drop it.
    Remove(Capability),
}

/// Parses virtiofsd's `--modcaps` value: `+name` and `-name` entries separated by `:`, names
/// with or without `CAP_`, in any case (`+sys_admin:-CAP_MKNOD`).
pub fn parse_modcaps(s: &str) -> Result<Vec<Modification>, CapabilitiesError> {
    s.split(':')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (add, name) = match (entry.strip_prefix('+'), entry.strip_prefix('-')) {
                (Some(n), _) => (true, n),
                (_, Some(n)) => (false, n),
                _ => return Err(CapabilitiesError::Syntax(entry.to_string())),
            };
            let cap = Capability::from_str(&caps::to_canonical(name.trim()))
                .map_err(|_| CapabilitiesError::Unknown(name.to_string()))?;
            Ok(if add {
                Modification::Add(cap)
            } else {
                Modification::Remove(cap)
            })
        })
        .collect()
}

/// The set to keep: [`DEFAULT`] with `mods` applied in order.
pub fn keep(mods: &[Modification]) -> HashSet<Capability> {
    let mut set: HashSet<Capability> = DEFAULT.iter().copied().collect();
    for m in mods {
        match *m {
            Modification::Add(c) => set.insert(c),
            Modification::Remove(c) => set.remove(&c),
        };
    }
    set
}

/// Names of `set`, sorted, lower case without `CAP_` (as `--modcaps` takes them).
pub fn names(set: &HashSet<Capability>) -> Vec<String> {
    let mut v: Vec<String> = set
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_lowercase())
        .collect();
    v.sort();
    v
}

/// Drops every capability but `keep` from the calling thread, for good (bounding set too, and
/// `no_new_privs`, so no exec could grant any back): what it keeps, returned, is `keep` ∩
/// what it holds. Must run while the process has one thread (counted through
/// `proc_self_fd`, a descriptor of `/proc/self/fd`, inside a sandbox). Without `CAP_SETPCAP`
/// (not root) the bounding set stays as it is.
pub fn drop_all_but(
    keep: &HashSet<Capability>,
    proc_self_fd: Option<&std::fs::File>,
) -> Result<HashSet<Capability>, CapabilitiesError> {
    let threads =
        crate::sandbox::thread_count_at(proc_self_fd).map_err(CapabilitiesError::ThreadCount)?;
    if threads > 1 {
        return Err(CapabilitiesError::Threads(threads));
    }
    let change = |what| move |source| CapabilitiesError::Change { what, source };
    let held = caps::read(None, CapSet::Permitted).map_err(change("read the permitted set"))?;
    let effective =
        caps::read(None, CapSet::Effective).map_err(change("read the effective set"))?;
    if effective.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            // A capability this kernel does not know (newer than it) cannot be read: absent.
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(change("drop a capability from the bounding set"))?;
            }
        }
    }
    // Without ambient support (kernels before 4.3) there is nothing to clear.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(change("clear the ambient set"))?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(change("clear the inheritable set"))?;
    let kept: caps::CapsHashSet = held.intersection(keep).copied().collect();
    // Effective first: it must stay a subset of the permitted set.
    caps::set(None, CapSet::Effective, &kept).map_err(change("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(change("set the permitted set"))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and changes no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(CapabilitiesError::NoNewPrivs(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(kept.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modcaps_follow_virtiofsd_grammar() {
        let m = parse_modcaps("+sys_admin:-CAP_MKNOD:+Sys_Ptrace").expect("parse");
        assert_eq!(
            m,
            vec![
                Modification::Add(Capability::CAP_SYS_ADMIN),
                Modification::Remove(Capability::CAP_MKNOD),
                Modification::Add(Capability::CAP_SYS_PTRACE),
            ]
        );
        let set = keep(&m);
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(set.contains(&Capability::CAP_SYS_PTRACE));
        assert!(!set.contains(&Capability::CAP_MKNOD));
        assert_eq!(set.len(), DEFAULT.len() + 1);
        // Order matters: the last entry for a name wins.
        assert!(
            !keep(&parse_modcaps("+sys_admin:-sys_admin").expect("parse"))
                .contains(&Capability::CAP_SYS_ADMIN)
        );
        assert!(parse_modcaps("").expect("empty").is_empty());
    }

    #[test]
    fn modcaps_errors_name_the_entry() {
        let e = parse_modcaps("+chown:sys_admin").unwrap_err();
        assert!(
            matches!(e, CapabilitiesError::Syntax(ref s) if s == "sys_admin"),
            "{e}"
        );
        let e = parse_modcaps("+no_such_cap").unwrap_err();
        assert!(
            matches!(e, CapabilitiesError::Unknown(ref s) if s == "no_such_cap"),
            "{e}"
        );
        // A multi-byte first character is no panic.
        assert!(parse_modcaps("é").is_err());
    }

    #[test]
    fn default_set_is_virtiofsds() {
        let names = names(&keep(&[]));
        assert_eq!(
            names,
            [
                "chown",
                "dac_override",
                "fowner",
                "fsetid",
                "mknod",
                "setfcap",
                "setgid",
                "setuid"
            ]
        );
    }
}
