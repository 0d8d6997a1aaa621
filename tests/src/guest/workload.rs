//! The guest workload's contract (tests/guest/workload.sh): the steps it must report, and what
//! it must leave in the share, checked from the host.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::md5::md5_hex;
use super::serial::SerialReport;

/// Every step the guest must report as `ok`, in order (`mount` comes from /init).
pub const EXPECTED_STEPS: &[&str] = &[
    "mount",
    "create",
    "write",
    "readback",
    "append",
    "stat",
    "rename",
    "rename_replace",
    "rename_dir",
    "chmod",
    "truncate_shrink",
    "truncate_grow",
    "symlink",
    "hardlink",
    "unlink",
    "readdir",
    "utimes",
    "statfs",
    "rmdir_nonempty",
    "enoent",
    "umount",
];

/// Number of files the `readdir` step creates in `many/`.
pub const READDIR_ENTRIES: usize = 500;

/// `2001-02-03 04:05:06 UTC`, the time the `utimes` step sets.
pub const UTIMES_EPOCH: i64 = 981_173_106;

/// (f_blocks, f_frsize) of the filesystem holding `path`, from the host's view.
fn statvfs_blocks(path: &Path) -> Result<(u64, u64), String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st` is a writable
    // statvfs; statvfs(3) writes only into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((st.f_blocks as u64, st.f_frsize as u64))
}

/// Checks what the workload left in `share` against what a correct filesystem must hold and
/// against the `DATA` values the guest printed. Returns one line per problem; empty means all
/// is well.
pub fn verify_share(share: &Path, report: &SerialReport) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let p = |name: &str| share.join(name);
    let read = |name: &str| fs::read(share.join(name)).ok();
    let meta = |name: &str| fs::symlink_metadata(share.join(name)).ok();
    let absent = |name: &str| fs::symlink_metadata(share.join(name)).is_err();
    let data = |key: &str| report.data.get(key).cloned().unwrap_or_default();

    // create, write, append, stat
    check(
        meta("empty").map(|m| m.is_file() && m.len() == 0) == Some(true),
        "empty: not an empty regular file".into(),
    );
    check(
        read("hello").as_deref() == Some(b"hello\n"),
        "hello: content is not \"hello\\n\"".into(),
    );
    match read("big") {
        Some(big) => {
            check(
                big.len() == 4 << 20,
                format!("big: {} bytes, want 4 MiB", big.len()),
            );
            let (host, guest) = (md5_hex(&big), data("big_md5"));
            check(
                host == guest,
                format!("big: md5 on the host {host}, guest wrote {guest:?}"),
            );
        }
        None => check(false, "big: missing".into()),
    }
    match read("app") {
        Some(app) => {
            check(
                app.len() == (1 << 20) + 3000,
                format!("app: {} bytes, want 1051576", app.len()),
            );
            let (host, guest) = (md5_hex(&app), data("app_md5"));
            check(
                host == guest,
                format!("app: md5 on the host {host}, guest wrote {guest:?}"),
            );
        }
        None => check(false, "app: missing".into()),
    }
    check(
        read("log").as_deref() == Some(b"one\ntwo\n"),
        "log: content is not \"one\\ntwo\\n\"".into(),
    );

    // renames
    check(
        read("r2").as_deref() == Some(b"b\n"),
        "r2: content is not \"b\\n\" after replace".into(),
    );
    for gone in ["r1", "r3", "mvsrc", "d1", "u", "e", "h3"] {
        check(absent(gone), format!("{gone}: still exists"));
    }
    check(
        read("d2/f").as_deref() == Some(b"x\n"),
        "d2/f: missing or wrong content".into(),
    );
    check(
        read("dir/moved").as_deref() == Some(b"y\n"),
        "dir/moved: missing or wrong content".into(),
    );

    // chmod
    let mode = |name: &str| meta(name).map(|m| format!("{:o}", m.permissions().mode() & 0o7777));
    check(
        mode("m").as_deref() == Some("640"),
        format!("m: mode {:?}, want 640", mode("m")),
    );
    check(
        mode("dir").as_deref() == Some("700"),
        format!("dir: mode {:?}, want 700", mode("dir")),
    );

    // truncate shrink then grow: "abcd" and 4096 zero bytes
    let mut want_t = b"abcd".to_vec();
    want_t.resize(4100, 0);
    check(
        read("t") == Some(want_t),
        "t: not \"abcd\" followed by 4096 zero bytes".into(),
    );

    // symlinks are stored as written, never followed by the daemon
    let target = |name: &str| fs::read_link(p(name)).ok();
    check(
        target("sl") == Some("hello".into()),
        format!("sl: target {:?}, want hello", target("sl")),
    );
    check(
        target("abs") == Some("/etc/passwd".into()),
        format!("abs: target {:?}, want /etc/passwd", target("abs")),
    );

    // hard links
    match (meta("h1"), meta("h2")) {
        (Some(a), Some(b)) => {
            check(a.nlink() == 2, format!("h1: {} links, want 2", a.nlink()));
            check(
                a.ino() == b.ino(),
                "h1 and h2 are not the same inode".into(),
            );
        }
        _ => check(false, "h1 or h2: missing".into()),
    }

    // readdir
    match fs::read_dir(p("many")) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut want: Vec<String> = (1..=READDIR_ENTRIES).map(|i| format!("f{i}")).collect();
            want.sort();
            check(
                names == want,
                format!(
                    "many/: {} entries, want f1..f{READDIR_ENTRIES}",
                    names.len()
                ),
            );
        }
        Err(e) => check(false, format!("many/: {e}")),
    }

    // utimes
    let mtime = meta("ut").map(|m| m.mtime());
    check(
        mtime == Some(UTIMES_EPOCH),
        format!("ut: mtime {mtime:?}, want {UTIMES_EPOCH}"),
    );

    // statfs: the guest saw the host filesystem's size
    match (
        data("statfs_blocks").parse::<u64>(),
        data("statfs_frsize").parse::<u64>(),
    ) {
        (Ok(blocks), Ok(frsize)) => match statvfs_blocks(share).map(|(b, f)| b * f) {
            Ok(host) => check(
                blocks * frsize == host,
                format!("statfs: guest saw {blocks} × {frsize} bytes, host has {host}"),
            ),
            Err(e) => check(false, format!("statfs on the host failed: {e}")),
        },
        _ => check(false, "statfs: the guest printed no numbers".into()),
    }

    // rmdir of a non-empty directory failed and left it alone
    check(
        meta("ne/f").map(|m| m.is_file()) == Some(true),
        "ne/f: missing".into(),
    );
    check(absent("nonexistent"), "nonexistent: exists".into());
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::scratch::ScratchDir;
    use crate::guest::serial;

    #[test]
    fn steps_match_the_guest_script() {
        let script = crate::guest::initramfs::WORKLOAD_SCRIPT;
        for step in &EXPECTED_STEPS[1..] {
            assert!(
                script.contains(&format!("step_{step}() {{")),
                "no step_{step} in workload.sh"
            );
        }
    }

    #[test]
    fn an_empty_share_fails_every_check() {
        let dir = ScratchDir::new("verify-test").unwrap();
        let problems = verify_share(dir.path(), &serial::parse(""));
        for what in [
            "empty", "big", "app", "r2", "m:", "t:", "sl", "h1", "many/", "ut", "statfs", "ne/f",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(what)),
                "no problem about {what}: {problems:#?}"
            );
        }
    }

    /// Builds on the host what a correct run leaves behind, with the DATA lines it prints.
    fn correct_share(dir: &Path) -> String {
        let w = |name: &str, data: &[u8]| fs::write(dir.join(name), data).unwrap();
        let big: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut app = big[..1 << 20].to_vec();
        app.extend_from_slice(&[7u8; 3000]);
        w("empty", b"");
        w("hello", b"hello\n");
        w("big", &big);
        w("app", &app);
        w("log", b"one\ntwo\n");
        w("r2", b"b\n");
        for d in ["d2", "dir", "many", "ne"] {
            fs::create_dir(dir.join(d)).unwrap();
        }
        w("d2/f", b"x\n");
        w("dir/moved", b"y\n");
        fs::set_permissions(dir.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();
        w("m", b"");
        fs::set_permissions(dir.join("m"), fs::Permissions::from_mode(0o640)).unwrap();
        let mut t = b"abcd".to_vec();
        t.resize(4100, 0);
        w("t", &t);
        std::os::unix::fs::symlink("hello", dir.join("sl")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("abs")).unwrap();
        w("h1", b"h\n");
        fs::hard_link(dir.join("h1"), dir.join("h2")).unwrap();
        for i in 1..=READDIR_ENTRIES {
            w(&format!("many/f{i}"), b"");
        }
        w("ut", b"");
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(UTIMES_EPOCH as u64);
        fs::File::options()
            .write(true)
            .open(dir.join("ut"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        w("ne/f", b"");
        let (blocks, frsize) = statvfs_blocks(dir).unwrap();
        format!(
            "DATA big_md5 {}\nDATA app_md5 {}\nDATA statfs_blocks {blocks}\nDATA statfs_frsize {frsize}\n",
            md5_hex(&big),
            md5_hex(&app)
        )
    }

    #[test]
    fn a_correct_share_passes_and_each_defect_is_caught() {
        let dir = ScratchDir::new("verify-ok").unwrap();
        let log = correct_share(dir.path());
        assert_eq!(
            verify_share(dir.path(), &serial::parse(&log)),
            Vec::<String>::new()
        );

        type Spoil = (&'static str, fn(&Path));
        let defects: [Spoil; 5] = [
            ("big", |d| fs::write(d.join("big"), b"short").unwrap()),
            ("m:", |d| {
                fs::set_permissions(d.join("m"), fs::Permissions::from_mode(0o644)).unwrap()
            }),
            ("t:", |d| fs::write(d.join("t"), b"abcd").unwrap()),
            ("many/", |d| fs::remove_file(d.join("many/f77")).unwrap()),
            ("r1", |d| fs::write(d.join("r1"), b"a\n").unwrap()),
        ];
        for (what, spoil) in defects {
            spoil(dir.path());
            let problems = verify_share(dir.path(), &serial::parse(&log));
            assert!(
                problems.iter().any(|p| p.starts_with(what)),
                "{what} not caught: {problems:#?}"
            );
        }
        let wrong_md5 = log.replace("DATA app_md5 ", "DATA app_md5 0");
        let problems = verify_share(dir.path(), &serial::parse(&wrong_md5));
        assert!(
            problems.iter().any(|p| p.starts_with("app")),
            "{problems:#?}"
        );
    }
}
