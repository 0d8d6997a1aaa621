//! Directory handles: OPENDIR, READDIR and READDIRPLUS across several calls, RELEASEDIR,
//! FSYNCDIR.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;

use vfsdax_protocol::fuse::{dirent_size, direntplus_size, ROOT_ID};

use super::*;

/// One READDIR(PLUS) call with a reply buffer of `size` bytes, as the server would fill it.
/// Returns (name, next offset, entry node id) per entry sent.
fn readdir_once(
    s: &Share,
    ino: Inode,
    h: Handle,
    size: u32,
    offset: u64,
    plus: bool,
) -> Vec<(String, u64, Option<Inode>)> {
    let mut left = size as usize;
    let mut out = Vec::new();
    let mut add = |d: crate::filesystem::DirEntry<'_>, e: Option<Entry>| {
        let need = if plus {
            direntplus_size(d.name.len())
        } else {
            dirent_size(d.name.len())
        };
        if need > left {
            return Ok(0);
        }
        left -= need;
        out.push((
            String::from_utf8(d.name.to_vec()).expect("utf8"),
            d.offset,
            e.map(|e| e.inode),
        ));
        Ok(need)
    };
    s.fs.readdir(ctx(), ino, h, size, offset, plus, &mut add)
        .expect("readdir");
    out
}

/// Reads the whole directory in calls of `size` bytes; returns every entry and the number
/// of calls that returned something.
fn readdir_all(
    s: &Share,
    ino: Inode,
    h: Handle,
    size: u32,
    plus: bool,
) -> (Vec<(String, u64, Option<Inode>)>, usize) {
    let mut all = Vec::new();
    let mut off = 0;
    let mut calls = 0;
    loop {
        let batch = readdir_once(s, ino, h, size, off, plus);
        let Some(last) = batch.last() else {
            return (all, calls);
        };
        calls += 1;
        off = last.1;
        all.extend(batch);
        assert!(calls < 10_000, "readdir does not end");
    }
}

fn populate(s: &Share, n: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    std::fs::create_dir(s.dir.join("big")).expect("mkdir");
    for i in 0..n {
        let name = format!("entry-{i:04}-{}", "x".repeat(i % 40));
        std::fs::write(s.dir.join("big").join(&name), b"").expect("create");
        names.insert(name);
    }
    names
}

#[test]
fn readdir_of_hundreds_of_entries_across_calls() {
    let s = share();
    let names = populate(&s, 700);
    let d = s.lookup_root("big").expect("lookup");
    let (h, _) = s.fs.opendir(ctx(), d.inode, 0).expect("opendir");
    let h = h.expect("handle");
    let (all, calls) = readdir_all(&s, d.inode, h, 4096, false);
    assert!(calls > 5, "only {calls} calls");
    let got: Vec<&str> = all.iter().map(|(n, _, _)| n.as_str()).collect();
    let set: BTreeSet<String> = got.iter().map(|n| n.to_string()).collect();
    // Every entry exactly once, plus . and ..
    assert_eq!(got.len(), names.len() + 2);
    assert!(set.contains(".") && set.contains(".."));
    let without_dots: BTreeSet<String> =
        set.into_iter().filter(|n| n != "." && n != "..").collect();
    assert_eq!(without_dots, names);
    assert!(all.iter().all(|(_, _, e)| e.is_none()));
    // Resuming at a middle offset continues right after that entry.
    let (_, mid_off, _) = &all[300];
    let again = readdir_once(&s, d.inode, h, 4096, *mid_off, false);
    assert_eq!(again[0].0, all[301].0);
    // A tiny buffer holding no entry returns nothing but works.
    assert!(readdir_once(&s, d.inode, h, 10, 0, false).is_empty());
    s.fs.fsyncdir(ctx(), d.inode, false, h).expect("fsyncdir");
    s.fs.releasedir(ctx(), d.inode, 0, h).expect("releasedir");
    assert_eq!(errno(s.fs.releasedir(ctx(), d.inode, 0, h)), libc::EBADF);
}

#[test]
fn readdirplus_counts_lookups_only_for_entries_sent() {
    let s = share();
    let names = populate(&s, 300);
    let d = s.lookup_root("big").expect("lookup");
    let base = s.fs.inode_count();
    let (h, _) = s.fs.opendir(ctx(), d.inode, 0).expect("opendir");
    let h = h.expect("handle");
    let (all, calls) = readdir_all(&s, d.inode, h, 8192, true);
    assert!(calls > 3, "only {calls} calls");
    // Each entry but . and .. comes with a node id; refused entries were forgotten, so the
    // table holds exactly one id per name.
    let mut ids = HashMap::new();
    for (name, _, e) in &all {
        if name == "." || name == ".." {
            assert!(e.is_none());
        } else {
            ids.insert(name.clone(), e.expect("entry with plus"));
        }
    }
    assert_eq!(ids.len(), names.len());
    assert_eq!(s.fs.inode_count(), base + names.len());
    // Each id carries exactly one lookup: one FORGET each empties the table again.
    for id in ids.values() {
        s.fs.forget(ctx(), *id, 1, &NoMapper);
    }
    assert_eq!(s.fs.inode_count(), base);
    // A plain lookup agrees with the id readdirplus gives.
    let (name, _, id) = readdir_once(&s, d.inode, h, 8192, 0, true)
        .into_iter()
        .find(|(n, _, _)| n != "." && n != "..")
        .expect("an entry");
    let e = s.lookup(d.inode, &name).expect("lookup");
    assert_eq!(Some(e.inode), id);
}

#[test]
fn readdir_needs_a_matching_directory_handle() {
    let s = share();
    std::fs::create_dir(s.dir.join("d")).expect("mkdir");
    let d = s.lookup_root("d").expect("d");
    let (h, _) = s.fs.opendir(ctx(), d.inode, 0).expect("opendir");
    let h = h.expect("handle");
    let mut add = |_: crate::filesystem::DirEntry<'_>, _: Option<Entry>| Ok(1);
    assert_eq!(
        errno(s.fs.readdir(ctx(), ROOT_ID, h, 4096, 0, false, &mut add)),
        libc::EBADF
    );
    let mut seen = 0;
    let mut count = |_: crate::filesystem::DirEntry<'_>, _: Option<Entry>| {
        seen += 1;
        Ok(1)
    };
    s.fs.readdir(ctx(), d.inode, h, 4096, 0, false, &mut count)
        .expect("readdir");
    assert_eq!(seen, 2); // . and ..
}

#[test]
fn readdirplus_drops_only_vanished_entries() {
    use crate::passthrough::ops_dir::skip_after_lookup_error;
    let e = std::io::Error::from_raw_os_error;
    assert!(skip_after_lookup_error(&e(libc::ENOENT)));
    for errno in [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOMEM,
        libc::EACCES,
        libc::EIO,
    ] {
        assert!(!skip_after_lookup_error(&e(errno)), "errno {errno}");
    }
    assert!(!skip_after_lookup_error(&std::io::Error::other("no errno")));
}

#[test]
fn readdirplus_sends_entries_whose_lookup_fails_without_attributes() {
    if !crate::passthrough::sys::is_root() {
        eprintln!("skipped: needs root to make a lookup fail through fsuid");
        return;
    }
    let s = share();
    std::fs::create_dir(s.dir.join("locked")).expect("mkdir");
    for name in ["a", "b"] {
        std::fs::write(s.dir.join("locked").join(name), b"").expect("create");
    }
    std::fs::set_permissions(s.dir.join("locked"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let d = s.lookup_root("locked").expect("lookup");
    let (h, _) = s.fs.opendir(ctx(), d.inode, 0).expect("opendir");
    let h = h.expect("handle");
    let base = s.fs.inode_count();
    let got = {
        // A non-zero fsuid drops CAP_DAC_OVERRIDE: the names can be listed through the open
        // handle but not looked up (EACCES), which is not "the entry vanished".
        let _creds = crate::passthrough::sys::FsCredsGuard::new(true, 4321, 4321).expect("creds");
        readdir_once(&s, d.inode, h, 8192, 0, true)
    };
    let mut names: Vec<(String, Option<Inode>)> = got.into_iter().map(|(n, _, e)| (n, e)).collect();
    names.sort();
    let expect: Vec<(String, Option<Inode>)> = [".", "..", "a", "b"]
        .iter()
        .map(|n| (n.to_string(), None))
        .collect();
    assert_eq!(names, expect);
    assert_eq!(s.fs.inode_count(), base);
    // As root the same entries come with node ids.
    let plus = readdir_once(&s, d.inode, h, 8192, 0, true);
    assert!(plus
        .iter()
        .filter(|(n, _, _)| n != "." && n != "..")
        .all(|(_, _, e)| e.is_some()));
}
