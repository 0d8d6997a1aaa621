//! Request steps run through a [`Session`] against the real daemon, shared by the tests that
//! serve under a restriction (`tests/tests/sandbox.rs`, `tests/tests/seccomp.rs`): every step
//! names itself, so a daemon killed by its filter or sandbox is reported with its exit status
//! and log. (The guest's workload is [`crate::guest::workload`].)

use std::fmt::Display;
use std::time::Duration;

use vfsdax_driver::{FsClient, XattrReply};
use vfsdax_protocol::fuse::{EntryOut, OpenOut, ROOT_ID};

use crate::harness::{error_chain, peer_is_virtiofsd, Daemon, Session};

/// How long a daemon may take to exit.
pub const EXIT_WAIT: Duration = Duration::from_secs(10);

/// True (after printing why) when the daemon under test is the peer virtiofsd, whose sandbox,
/// filter and command line are its own: the tests of `what` are vfsdaxd's.
pub fn skip_for_peer(what: &str) -> bool {
    if peer_is_virtiofsd() {
        eprintln!("SKIPPED: {what} tests are vfsdaxd's");
        return true;
    }
    false
}

/// The value of a request, or a panic naming the step, the daemon's exit status (SIGSYS = a
/// call outside the seccomp allowlist) and its log.
#[track_caller]
pub fn ok<T, E: std::error::Error>(d: &mut Daemon, what: impl Display, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            let state = match d.wait_exit(Duration::from_millis(200)) {
                Some(st) => format!("the daemon exited: {st} (signal 31 = SIGSYS: see dmesg)"),
                None => "the daemon is still running".to_string(),
            };
            panic!(
                "{what}: {}\n{state}\ndaemon log:\n{}",
                error_chain(&e),
                d.log_text()
            )
        }
    }
}

/// Drops the driver and checks the daemon exits 0 within [`EXIT_WAIT`]; returns the daemon for
/// further checks.
#[track_caller]
pub fn disconnect_and_expect_success(s: Session) -> Daemon {
    let Session { client, mut daemon } = s;
    drop(client);
    let status = daemon
        .wait_exit(EXIT_WAIT)
        .unwrap_or_else(|| panic!("daemon still running; log:\n{}", daemon.log_text()));
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    daemon
}

/// CREATE `name` (read-write, mode 0644) in the root, WRITE `data` at 0 (all of it written)
/// and READ it back; the file stays open.
#[track_caller]
pub fn create_write_read_back(
    d: &mut Daemon,
    c: &mut FsClient,
    name: &[u8],
    data: &[u8],
) -> (EntryOut, OpenOut) {
    let rw = libc::O_RDWR as u32;
    let (n, no) = ok(d, "CREATE", c.create(ROOT_ID, name, rw, 0o644, 0));
    let w = ok(d, "WRITE", c.write(n.nodeid, no.fh, 0, data));
    assert_eq!(w.size as usize, data.len());
    assert_eq!(
        ok(d, "READ back", c.read(n.nodeid, no.fh, 0, 1 << 20)),
        data
    );
    (n, no)
}

/// The names READDIR returns for the open directory `fh` of `nodeid` (a `size`-byte buffer,
/// from offset 0).
#[track_caller]
pub fn readdir_names(
    d: &mut Daemon,
    c: &mut FsClient,
    nodeid: u64,
    fh: u64,
    size: u32,
) -> Vec<Vec<u8>> {
    ok(d, "READDIR", c.readdir(nodeid, fh, 0, size))
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// SETXATTR `user.k` = `v1` on `nodeid`, then `while_set` (more checks of the set attribute),
/// GETXATTR reads `v1` back, LISTXATTR names `user.k` and REMOVEXATTR removes it.
#[track_caller]
pub fn xattr_round_trip(
    d: &mut Daemon,
    c: &mut FsClient,
    nodeid: u64,
    while_set: impl FnOnce(&mut Daemon, &mut FsClient),
) {
    ok(d, "SETXATTR", c.setxattr(nodeid, b"user.k", b"v1", 0));
    while_set(d, c);
    let value = ok(d, "GETXATTR", c.getxattr(nodeid, b"user.k", 64));
    assert_eq!(value, XattrReply::Data(b"v1".to_vec()));
    match ok(d, "LISTXATTR", c.listxattr(nodeid, 4096)) {
        XattrReply::Data(list) => assert!(list.windows(7).any(|w| w == b"user.k\0")),
        other => panic!("LISTXATTR: {other:?}"),
    }
    ok(d, "REMOVEXATTR", c.removexattr(nodeid, b"user.k"));
}
