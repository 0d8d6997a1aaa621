//! The daemon's truncation guard without a VM: the real `vfsdaxd --cache-size 64M` (guard on by
//! default, zero pages), the host-side driver as its frontend and the glue's `DaxWindow` as the
//! VMM. Files are mapped with FUSE SETUPMAPPING; a host process (or the guest, through FUSE)
//! shrinks them; the test then reads every byte of the window in its own process: a page lost
//! to the truncation would raise SIGBUS and kill the test, so a passing test is a VMM that
//! survived. The window must show the file's bytes up to the new end and zeros after it, and the
//! daemon must have written one report per truncation.
//!
//! The share lies under the system temp dir (ext4 here, where the kernel announces truncations
//! before they happen); one test puts it on tmpfs (`/dev/shm`), where it does not.

use std::fs::{File, OpenOptions};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vfsdax_protocol::fuse::flags::fattr;
use vfsdax_protocol::fuse::SetattrIn;
use vfsdax_tests::dax::{
    count_dir, fd_count, guard_reports, maps_count, perms_at, serialized, start_dax,
    start_dax_with, DaxSession, MIB2, NO_FH, R, W,
};
use vfsdax_tests::harness::{pattern, DaemonOptions};
use vfsdax_tests::workload::disconnect_and_expect_success;
use vfsdax_vmm_glue::dax::FileIdentity;

/// Reads `[moffset, moffset + len)` of the window into a vector (a lost page kills the test).
fn read_window(d: &DaxSession, moffset: u64, len: u64) -> Vec<u8> {
    d.window_bytes(moffset, len).to_vec()
}

/// The daemon's guard reports, waiting up to `timeout` for at least `n` of them.
fn reports(d: &DaxSession, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = guard_reports(&d.s.daemon.log_text());
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Exactly one report, with `trigger`, the new size, and the chunks it cut as (window offset,
/// kept bytes).
#[track_caller]
fn one_report(d: &DaxSession, trigger: &str, size_after: u64, cut: &[(u64, u64)]) -> Value {
    let r = reports(d, 1, Duration::from_secs(5));
    let log = d.s.daemon.log_text();
    assert_eq!(r.len(), 1, "one guard report expected: {r:?}\n{log}");
    let r = r[0].clone();
    assert_eq!(r["trigger"], trigger, "{r}");
    assert_eq!(r["size_after"].as_u64(), Some(size_after), "{r}");
    let got: Vec<(u64, u64)> = r["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|g| {
            (
                g["window_offset"].as_u64().unwrap(),
                g["kept"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, cut, "{r}");
    r
}

/// The file `name` of `chunks` 2 MiB chunks of pattern bytes, mapped chunk i at window offset
/// i * 2 MiB with SETUPMAPPING (fh = -1, as Linux); its bytes and host path.
fn mapped_file(d: &mut DaxSession, name: &str, chunks: u64) -> (Vec<u8>, std::path::PathBuf) {
    let data = pattern((chunks * MIB2) as usize, 9);
    let (node, _) = d.file(name, &data);
    for i in 0..chunks {
        d.map(node, NO_FH, i * MIB2, i * MIB2, MIB2, R)
            .expect("SETUPMAPPING");
    }
    (data, d.s.host(name))
}

/// After a change that must take nothing from the window: no guard report (200 ms given to
/// the guard) and the glue's table as `table` was before.
#[track_caller]
fn assert_nothing_cut(d: &DaxSession, table: &[(u64, u64, u64, bool, FileIdentity)]) {
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        guard_reports(&d.s.daemon.log_text()).is_empty(),
        "{}",
        d.s.daemon.log_text()
    );
    assert_eq!(d.table(), table, "the window is as it was");
}

fn host_truncate(path: &std::path::Path, size: u64) {
    // A separate host process, as a user would do it.
    let st = Command::new("truncate")
        .args(["-s", &size.to_string()])
        .arg(path)
        .status()
        .expect("run truncate");
    assert!(st.success());
}

#[test]
fn a_host_truncation_below_mapped_chunks_leaves_the_file_part_and_zeros() {
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let (data, path) = mapped_file(&mut d, "f", 4);
    let new_size = 3 * (1 << 20) + 100;
    host_truncate(&path, new_size);
    // Not page aligned: the kernel announces the page around the new end; the guard read the
    // exact size from the truncating process.
    let r = one_report(
        &d,
        "pre-content",
        new_size,
        &[(MIB2, (1 << 20) + 4096), (2 * MIB2, 0), (3 * MIB2, 0)],
    );
    assert_eq!(r["size_before"].as_u64(), Some(4 * MIB2), "{r}");
    assert_eq!(r["action"], "zero");
    assert!(
        r["path"].as_str().unwrap_or_default().ends_with("/f"),
        "{r}"
    );
    let window = read_window(&d, 0, 4 * MIB2);
    let n = new_size as usize;
    assert!(window[..n] == data[..n], "the bytes up to the new end");
    assert!(window[n..].iter().all(|&b| b == 0), "zeros after it");
    // The glue holds the file up to the page after the new end, then zero memfds.
    let t = d.table();
    assert_eq!(t[0].0, 0);
    assert_eq!(t[1].0, MIB2);
    assert_eq!(t[1].1, (1 << 20) + 4096);
    assert_eq!(t[0].4, t[1].4, "the same file");
    assert_ne!(t[2].4, t[0].4, "the rest is another (memfd) file");
    // The guest's REMOVEMAPPING of every chunk unmaps exactly what is mapped.
    d.unmap(&[(0, 4 * MIB2)]).expect("REMOVEMAPPING");
    assert!(d.table().is_empty());
    assert_eq!(perms_at(d.base() + MIB2).as_deref(), Some("---p"));
    d.s.assert_serving();
}

#[test]
fn an_open_with_o_trunc_by_a_host_process_is_guarded_before() {
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let (_, path) = mapped_file(&mut d, "f", 2);
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(": > '{}'", path.display()))
        .status()
        .expect("run sh");
    assert!(st.success());
    one_report(&d, "open-truncate", 0, &[(0, 0), (MIB2, 0)]);
    assert!(read_window(&d, 0, 2 * MIB2).iter().all(|&b| b == 0));
    d.s.assert_serving();
}

#[test]
fn ftruncate_through_a_descriptor_opened_before_the_mapping_is_guarded_before() {
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let data = pattern((2 * MIB2) as usize, 3);
    let (node, _) = d.file("f", &data);
    let early = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.s.host("f"))
        .expect("open before the mapping");
    d.map(node, NO_FH, 0, 0, 2 * MIB2, R | W).expect("map");
    early.set_len(4096).expect("ftruncate");
    one_report(&d, "pre-content", 4096, &[(0, 4096), (MIB2, 0)]);
    let w = read_window(&d, 0, 2 * MIB2);
    assert_eq!(w[..4096], data[..4096]);
    assert!(w[4096..].iter().all(|&b| b == 0));
}

#[test]
fn truncations_that_keep_the_mapped_range_change_nothing() {
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let data = pattern((4 * MIB2) as usize, 5);
    let (node, _) = d.file("f", &data);
    d.map(node, NO_FH, 0, 0, MIB2, R)
        .expect("map the first chunk");
    let table = d.table();
    host_truncate(&d.s.host("f"), 2 * MIB2); // above the mapped range
    host_truncate(&d.s.host("f"), 8 * MIB2); // growing
    let f = OpenOptions::new()
        .write(true)
        .open(d.s.host("f"))
        .expect("open");
    f.set_len(3 * MIB2).expect("ftruncate above the range");
    // A punched hole does not shrink the file: the page reads as zeros, nothing is lost.
    // SAFETY: fallocate on an open descriptor with integer arguments.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            8192,
            4096,
        )
    };
    assert_eq!(r, 0, "punch a hole");
    assert_nothing_cut(&d, &table);
    let w = read_window(&d, 0, MIB2);
    assert_eq!(w[..8192], data[..8192]);
    assert!(w[8192..12288].iter().all(|&b| b == 0), "the hole");
    assert_eq!(w[12288..], data[12288..MIB2 as usize]);
}

#[test]
fn the_guests_own_truncation_is_guarded_before_it_is_made() {
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let data = pattern((2 * MIB2) as usize, 6);
    let (node, _) = d.file("f", &data);
    d.map(node, NO_FH, 0, 0, 2 * MIB2, R).expect("map");
    let arg = SetattrIn {
        valid: fattr::SIZE,
        size: MIB2 + 10,
        ..Default::default()
    };
    d.s.client.setattr(node, &arg).expect("SETATTR size");
    one_report(&d, "guest", MIB2 + 10, &[(MIB2, 4096)]);
    let w = read_window(&d, 0, 2 * MIB2);
    let n = (MIB2 + 10) as usize;
    assert_eq!(w[..n], data[..n]);
    assert!(w[n..].iter().all(|&b| b == 0));
    // OPEN with O_TRUNC of the mapped file: guarded the same way.
    let h = d.open(node, libc::O_RDWR | libc::O_TRUNC);
    let r = reports(&d, 2, Duration::from_secs(5));
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1]["trigger"], "guest");
    assert_eq!(r[1]["size_after"].as_u64(), Some(0));
    assert!(read_window(&d, 0, 2 * MIB2).iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(d.s.host("f")).unwrap().len(), 0);
    d.s.client.release(node, h, 0).expect("RELEASE");
}

#[test]
fn with_the_unmap_action_the_lost_range_is_left_unmapped() {
    let _alone = serialized();
    let mut d = start_dax(&["--truncate-guard-action", "unmap"], 0);
    let (_, path) = mapped_file(&mut d, "f", 2);
    host_truncate(&path, 4096);
    let r = one_report(&d, "pre-content", 4096, &[(0, 4096), (MIB2, 0)]);
    assert_eq!(r["action"], "unmap");
    assert_eq!(perms_at(d.base() + 8192).as_deref(), Some("---p"));
    assert_eq!(perms_at(d.base() + MIB2).as_deref(), Some("---p"));
    // The glue remembers what was there, for a report naming the file.
    let gone = d
        .conn
        .window()
        .table()
        .lookup_unmapped(MIB2)
        .expect("remembered");
    assert_eq!(gone.file_offset, MIB2);
    assert_eq!(d.table().len(), 1, "only the page still inside the file");
}

#[test]
fn with_the_guard_off_the_truncation_reaches_the_window() {
    let _alone = serialized();
    let mut d = start_dax(&["--truncate-guard", "off"], 0);
    let (_, path) = mapped_file(&mut d, "f", 1);
    let table = d.table();
    host_truncate(&path, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(guard_reports(&d.s.daemon.log_text()).is_empty());
    // The glue still maps the (now empty) file there: reading it would kill this process.
    assert_eq!(d.table(), table);
    assert!(d.s.daemon.log_text().contains("truncation guard off"));
}

/// `fanotify` marks the daemon holds, from its `/proc/<pid>/fdinfo`.
fn daemon_marks(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .expect("fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .map(|t| t.lines().filter(|l| l.starts_with("fanotify ino:")).count())
        .sum()
}

/// The daemon's memfds (the probe's and the guard's zero pages).
fn daemon_memfds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("/memfd:"))
        .count()
}

#[test]
fn map_truncate_remap_cycles_leak_nothing() {
    const CYCLES: u64 = 10_000;
    let _alone = serialized();
    let report_file =
        std::env::temp_dir().join(format!("vfsdax-guard-reports-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&report_file);
    let mut d = start_dax(
        &[
            "--truncate-guard-reports",
            report_file.to_str().expect("utf-8"),
        ],
        0,
    );
    let (node, _) = d.file("f", &pattern(MIB2 as usize, 1));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.s.host("f"))
        .expect("open");
    let pid = d.s.daemon.serving_pid();
    let cycle = |d: &mut DaxSession, f: &File, i: u64| {
        f.set_len(MIB2).expect("extend");
        let slot = (i * 7 % 31) * MIB2;
        d.map(node, NO_FH, 0, slot, MIB2, R).expect("map");
        f.set_len(i % 3 * 4096).expect("truncate under the mapping");
        d.unmap(&[(slot, MIB2)]).expect("unmap");
    };
    for i in 0..16 {
        cycle(&mut d, &f, i);
    }
    d.conn.window().table().forget_unmapped();
    let counts = || {
        (
            fd_count(),
            maps_count(),
            count_dir(&format!("/proc/{pid}/fd")),
            daemon_marks(pid),
            daemon_memfds(pid),
        )
    };
    let before = counts();
    let t0 = Instant::now();
    for i in 0..CYCLES {
        cycle(&mut d, &f, i);
    }
    let took = t0.elapsed();
    d.conn.window().table().forget_unmapped();
    // A descriptor the guard's threads hold for a moment (the last change event being
    // handled) is not a leak: a leak is still there a second later.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut after = counts();
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = counts();
    }
    println!(
        "{CYCLES} map/truncate/unmap cycles in {took:?}: (VMM fds, VMM maps, daemon fds, daemon \
         fanotify marks, daemon memfds) {before:?} -> {after:?}"
    );
    assert_eq!(after, before, "something leaked");
    assert_eq!(before.3, 0, "no file is mapped, none is marked");
    // Every cycle cut a chunk; the log is rate limited, so only the first ones are written.
    assert!(!guard_reports(&d.s.daemon.log_text()).is_empty());
    assert!(d.table().is_empty());
    d.s.assert_serving();
    // The counters are exact: one truncation before it took effect and one chunk cut a cycle.
    let DaxSession { conn, s } = d;
    drop(conn);
    let daemon = disconnect_and_expect_success(s);
    let log = daemon.log_text();
    let c = guard_counters(&log);
    let total = CYCLES + 16;
    assert_eq!(
        c,
        GuardCounters {
            before: total,
            after: 0,
            chunks_cut: total,
            failures: 0,
            unguarded_files: 0
        },
        "{log}"
    );
    // And every report is in the reports file (the log's copies are rate-limited).
    let lines = std::fs::read_to_string(&report_file).expect("the reports file");
    let _ = std::fs::remove_file(&report_file);
    let reports: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(reports.len() as u64, total);
    assert!(reports.iter().all(|r| r["trigger"] == "pre-content"));
}

/// The guard's counters from the daemon's exit line.
#[derive(Debug, PartialEq, Eq)]
struct GuardCounters {
    before: u64,
    after: u64,
    chunks_cut: u64,
    failures: u64,
    unguarded_files: u64,
}

/// Parses "truncation guard: B truncations handled before they took effect, A after; C chunks
/// cut, F failures, U files not guarded before a truncation, ..." (the daemon's exit line).
#[track_caller]
fn guard_counters(log: &str) -> GuardCounters {
    let line = log
        .lines()
        .find(|l| l.contains("truncations handled before they took effect"))
        .unwrap_or_else(|| panic!("no guard counters in the log:\n{log}"));
    let tail = &line[line.find("truncation guard:").expect("prefix")..];
    let n: Vec<u64> = tail
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n.len() >= 5, "{line}");
    GuardCounters {
        before: n[0],
        after: n[1],
        chunks_cut: n[2],
        failures: n[3],
        unguarded_files: n[4],
    }
}

#[test]
fn a_file_on_tmpfs_is_guarded_after_the_fact_and_required_declines_it() {
    let _alone = serialized();
    if !std::path::Path::new("/dev/shm").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "no /dev/shm under CI");
        eprintln!("SKIPPED: no /dev/shm (tmpfs) on this machine");
        return;
    }
    let opts = DaemonOptions {
        temp_in: Some("/dev/shm".into()),
        ..Default::default()
    };
    let mut d = start_dax_with(&opts, 0);
    let (data, _) = mapped_file(&mut d, "f", 1);
    let log = d.s.daemon.log_text();
    assert!(
        log.contains("can be guarded only after a truncation took effect"),
        "the unguardable file is reported\n{log}"
    );
    // The test process truncates; the guard sees it afterwards and cuts the chunk.
    let f = OpenOptions::new()
        .write(true)
        .open(d.s.host("f"))
        .expect("open");
    let t0 = Instant::now();
    f.set_len(4096).expect("ftruncate");
    let r = reports(&d, 1, Duration::from_secs(5));
    let window = t0.elapsed();
    assert_eq!(r.len(), 1, "{}", d.s.daemon.log_text());
    assert_eq!(r[0]["trigger"], "after-the-fact");
    assert_eq!(r[0]["size_before"], Value::Null);
    println!("tmpfs: the window was unsafe for {window:?} after the truncation (until the report)");
    let w = read_window(&d, 0, MIB2);
    assert_eq!(w[..4096], data[..4096]);
    assert!(w[4096..].iter().all(|&b| b == 0));
    let DaxSession { conn, s } = d;
    drop(conn);
    let log = disconnect_and_expect_success(s).log_text();
    assert_eq!(
        guard_counters(&log),
        GuardCounters {
            before: 0,
            after: 1,
            chunks_cut: 1,
            failures: 0,
            unguarded_files: 1
        },
        "{log}"
    );

    // --truncate-guard required: no DAX for a file that cannot be guarded before.
    let opts = DaemonOptions {
        temp_in: Some("/dev/shm".into()),
        extra_args: vec!["--truncate-guard".into(), "required".into()],
        ..Default::default()
    };
    let mut d = start_dax_with(&opts, 0);
    let (node, _) = d.file("g", &pattern(MIB2 as usize, 2));
    assert_eq!(d.map(node, NO_FH, 0, 0, MIB2, R), Err(libc::EOPNOTSUPP));
    assert!(d.table().is_empty());
    // And on the ext4 share of the default daemon the same mapping works.
    let mut e = start_dax(&["--truncate-guard", "required"], 0);
    let (node, _) = e.file("g", &pattern(MIB2 as usize, 2));
    e.map(node, NO_FH, 0, 0, MIB2, R)
        .expect("guardable: mapped");
}

/// An unaligned truncation by this process under `--sandbox <mode>`: how the guard learnt of it.
fn unaligned_truncation_under(mode: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--sandbox", mode];
    args.extend(extra);
    let mut d = start_dax(&args, 0);
    let (data, _) = mapped_file(&mut d, "f", 1);
    let f = OpenOptions::new()
        .write(true)
        .open(d.s.host("f"))
        .expect("open");
    f.set_len(100).expect("ftruncate");
    let r = reports(&d, 1, Duration::from_secs(5));
    assert_eq!(r.len(), 1, "{}", d.s.daemon.log_text());
    // Safe now, whichever way it was learnt.
    let w = read_window(&d, 0, MIB2);
    assert_eq!(w[..100], data[..100]);
    assert!(w[100..].iter().all(|&b| b == 0));
    assert!(
        r[0]["path"].as_str().is_some_and(|p| p.ends_with("/f")),
        "the report names the file inside the sandbox: {}",
        r[0]
    );
    r[0].clone()
}

#[test]
fn in_a_chroot_sandbox_the_caller_is_seen_with_cap_sys_ptrace() {
    // Without a supervisor the daemon reads the caller's /proc/<tid>/syscall itself: a caller
    // with capabilities the daemon dropped needs CAP_SYS_PTRACE (--modcaps), else the
    // truncation is caught after the fact.
    let _alone = serialized();
    let r = unaligned_truncation_under("chroot", &["--modcaps=+sys_ptrace"]);
    assert_eq!(r["trigger"], "pre-content", "{r}");
    let r = unaligned_truncation_under("chroot", &[]);
    assert_eq!(r["trigger"], "after-the-fact", "{r}");
}

#[test]
fn in_a_namespace_sandbox_the_supervisor_sees_the_caller() {
    // The daemon's PID namespace hides this process; the supervisor outside reads the events
    // and relays the truncation, so it is still caught before it takes effect.
    let _alone = serialized();
    let r = unaligned_truncation_under("namespace", &[]);
    assert_eq!(r["trigger"], "pre-content", "{r}");
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    assert_eq!(
        r["pid"], tid,
        "the host's number of the truncating thread: {r}"
    );
}

#[test]
fn in_a_namespace_sandbox_an_open_with_o_trunc_is_caught_before() {
    let _alone = serialized();
    let mut d = start_dax(&["--sandbox", "namespace", "--seccomp", "kill"], 0);
    let (_, _) = mapped_file(&mut d, "f", 1);
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(d.s.host("f"))
        .expect("open O_TRUNC");
    drop(f);
    let r = reports(&d, 1, Duration::from_secs(5));
    assert_eq!(r.len(), 1, "{}", d.s.daemon.log_text());
    assert_eq!(r[0]["trigger"], "open-truncate", "{}", r[0]);
    assert_eq!(r[0]["size_after"], 0);
    let w = read_window(&d, 0, MIB2);
    assert!(w.iter().all(|&b| b == 0));
    assert!(d.s.daemon.is_alive(), "seccomp allowed the relay");
}

#[test]
fn an_unlinked_and_recreated_file_leaves_the_mapped_one_alone() {
    // The VMM maps the file it was given: a new file under the same name is another file, and
    // truncating it takes nothing from the window.
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let (data, path) = mapped_file(&mut d, "f", 1);
    let table = d.table();
    std::fs::remove_file(&path).expect("unlink");
    std::fs::write(&path, pattern(MIB2 as usize, 3)).expect("recreate");
    host_truncate(&path, 0);
    assert_nothing_cut(&d, &table);
    assert!(
        read_window(&d, 0, MIB2) == data,
        "the unlinked file's bytes"
    );
    d.s.assert_serving();
}

#[test]
fn a_collapsed_range_is_guarded_before() {
    // fallocate(FALLOC_FL_COLLAPSE_RANGE) shortens the file: the last chunk loses its end.
    use std::os::fd::AsRawFd;
    let _alone = serialized();
    let mut d = start_dax(&[], 0);
    let (_, path) = mapped_file(&mut d, "f", 4);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let collapse = 1 << 20;
    // SAFETY: fallocate takes the descriptor, a mode and two offsets; `f` stays open.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_COLLAPSE_RANGE,
            0,
            collapse as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "collapse: {}", std::io::Error::last_os_error());
    let new_size = 4 * MIB2 - collapse;
    assert_eq!(f.metadata().expect("stat").len(), new_size);
    one_report(&d, "pre-content", new_size, &[(3 * MIB2, MIB2 - collapse)]);
    // What the window shows inside the file is the file now (its bytes moved down).
    let mut now = vec![0u8; new_size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut now, 0).expect("read");
    let w = read_window(&d, 0, 4 * MIB2);
    assert!(
        w[..new_size as usize] == now[..],
        "the file's bytes up to its end"
    );
    assert!(
        w[new_size as usize..].iter().all(|&b| b == 0),
        "zeros after it"
    );
    d.s.assert_serving();
}

/// A file system of `kind` in a 320 MiB image, loop-mounted for the test's life.
struct LoopFs {
    dir: std::path::PathBuf,
    image: std::path::PathBuf,
}

impl LoopFs {
    /// `None` (with a printed skip, a failure under `CI`) without root, loop devices or
    /// `mkfs.<kind>`.
    fn mount(kind: &str, test: &str) -> Option<LoopFs> {
        use vfsdax_tests::require::skip;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "loop-mounting a file system needs root");
            return None;
        }
        let base = std::env::temp_dir().join(format!("vfsdax-{kind}-{}", std::process::id()));
        let (dir, image) = (base.with_extension("mnt"), base.with_extension("img"));
        std::fs::create_dir_all(&dir).expect("mount point");
        File::create(&image)
            .and_then(|f| f.set_len(320 << 20))
            .expect("image");
        // A command's failure: it could not run, or its standard error.
        let run = |cmd: &mut Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("{e} (scripts/deps.sh installs mkfs.{kind})")),
        };
        let fs = LoopFs { dir, image };
        let made = run(Command::new(format!("mkfs.{kind}"))
            .arg("-q")
            .arg(&fs.image));
        match made.and_then(|()| {
            run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&fs.image)
                .arg(&fs.dir))
        }) {
            Ok(()) => Some(fs),
            Err(e) => {
                skip(test, &format!("cannot make or mount {kind}: {e}"));
                None
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// On a share on `kind`: a host truncation to a page-aligned size and an `open(O_TRUNC)` are
/// made safe before they take effect (the README's table names these file systems).
fn guarded_before_on(kind: &str) {
    let test = format!("guarded_before_on_{kind}");
    let _alone = serialized();
    let Some(fs) = LoopFs::mount(kind, &test) else {
        return;
    };
    let opts = DaemonOptions {
        temp_in: Some(fs.dir.clone()),
        ..Default::default()
    };
    let mut d = start_dax_with(&opts, 0);
    let (data, path) = mapped_file(&mut d, "f", 2);
    host_truncate(&path, MIB2);
    one_report(&d, "pre-content", MIB2, &[(MIB2, 0)]);
    let w = read_window(&d, 0, 2 * MIB2);
    assert!(w[..MIB2 as usize] == data[..MIB2 as usize]);
    assert!(w[MIB2 as usize..].iter().all(|&b| b == 0));
    let (_, path) = mapped_file(&mut d, "g", 1);
    // Chunk 0 of g lands where f's first chunk was.
    File::options()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open(O_TRUNC)");
    let r = reports(&d, 2, Duration::from_secs(5));
    assert_eq!(r.len(), 2, "{}", d.s.daemon.log_text());
    assert_eq!(r[1]["trigger"], "open-truncate", "{}", r[1]);
    assert!(read_window(&d, 0, MIB2).iter().all(|&b| b == 0));
    d.s.assert_serving();
    drop(d);
    drop(fs);
}

#[test]
fn guarded_before_on_xfs() {
    guarded_before_on("xfs");
}

#[test]
fn guarded_before_on_btrfs() {
    guarded_before_on("btrfs");
}
