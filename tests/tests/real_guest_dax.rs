//! A real Linux guest (Debian 6.1 cloud kernel, TCG) uses vfsdaxd's DAX window through a stock
//! QEMU >= 11.1 (Debian sid's, installed by scripts/deps.sh; the generic
//! `vhost-user-test-device-pci` with virtio-id 26 is the device with a cache window), and the
//! host checks what it saw against the share (tests/guest/dax.sh, with tests/guest/daxtool.c
//! for statx and shared mappings).
//!
//! QEMU 11.1 maps every range writable and only inside its file (see `dax::frontend` in the
//! daemon), which the daemon finds out at INIT, so the outcome depends on the mount:
//! - `dax=inode` with `--dax-policy always`: files whose size is a multiple of 2 MiB use DAX,
//!   the others the page cache; nothing fails.
//! - `dax=always`: every file uses DAX; ranges QEMU cannot map are declined (`EOPNOTSUPP`),
//!   the rest works, and no host file is harmed.
//! - the defaults (no dax option in the guest, `--dax-policy auto`): no file uses DAX and
//!   nothing fails.
//!
//! Missing QEMU >= 11.1, kernel or C compiler: a failure when `CI` is set, otherwise a
//! visible `SKIPPED` line.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vfsdax_tests::guest::daemon;
use vfsdax_tests::guest::helper::build_static_helper;
use vfsdax_tests::guest::md5::md5_hex;
use vfsdax_tests::guest::run::run_guest_with;
use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::{FsDevice, GuestRun, GuestSetup, Mode, RunOptions};

const MIB: usize = 1 << 20;
/// Where the guest's shared mapping of h2m is read while the host writes under it.
const COHERENT_AT: u64 = 65536;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The DAX guest set-up, or `None` after printing why the test is skipped (never in CI).
fn setup_or_skip() -> Option<GuestSetup> {
    match GuestSetup::detect_dax() {
        Ok(setup) => Some(setup),
        Err(e) => {
            let reason = error_chain(&e);
            if std::env::var_os("CI").is_some() {
                panic!("CI is set, so this test may not be skipped: {reason}");
            }
            say(&format!("SKIPPED: {reason}"));
            None
        }
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: different bytes per file and per run position, no dependency.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the host put in the share before the guest booted.
struct HostFiles {
    h4m: Vec<u8>,
    h2m: Vec<u8>,
    small: Vec<u8>,
    odd: Vec<u8>,
    grow: Vec<u8>,
}

fn prepare(share: &Path) -> HostFiles {
    let files = HostFiles {
        h4m: random(4 * MIB, 1),
        h2m: random(2 * MIB, 2),
        small: b"seventeen bytes!\n".to_vec(),
        odd: random(2 * MIB + 3000, 3),
        grow: random(2 * MIB, 4),
    };
    for (name, data) in [
        ("h4m", &files.h4m),
        ("h2m", &files.h2m),
        ("small", &files.small),
        ("odd", &files.odd),
        ("grow", &files.grow),
    ] {
        std::fs::write(share.join(name), data).expect("host file");
    }
    files
}

/// One guest run: the share, what the host wrote under the guest's mapping, the run.
struct DaxRun {
    share: PathBuf,
    files: HostFiles,
    coherent: Vec<u8>,
    run: GuestRun,
    _work: ScratchDir,
}

impl DaxRun {
    fn data(&self, key: &str) -> &str {
        self.run
            .report
            .data
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no DATA {key}\n{}", self.run.diagnostics()))
    }

    fn host(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.share.join(name)).expect("host file")
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.run.diagnostics())
    }

    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    /// The 16-byte hex dumps the guest printed from its shared mapping of h2m.
    fn mmap_dumps(&self) -> Vec<String> {
        self.run
            .qemu
            .serial
            .lines()
            .filter_map(|l| l.trim().strip_prefix("MMAP "))
            .map(|h| h.trim().to_owned())
            .collect()
    }

    /// The daemon's closing `DAX: ...` counters: (setups, refused, removes, chunks mapped).
    fn daemon_counters(&self) -> (u64, u64, u64, u64) {
        let line = self
            .run
            .daemon_log
            .lines()
            .find(|l| l.contains("DAX: ") && l.contains("SETUPMAPPING served"))
            .unwrap_or_else(|| self.fail("the daemon logged no DAX counters"));
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        // The timestamp comes first: take the last six numbers.
        let n = &nums[nums.len() - 6..];
        (n[0], n[1], n[2], n[3])
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Boots a guest mounting with `mount_opts` against `vfsdaxd --cache-size 256M` plus
/// `daemon_extra`, runs tests/guest/dax.sh, and returns what happened.
fn run_dax(
    setup: &GuestSetup,
    label: &str,
    mount_opts: Option<&str>,
    daemon_extra: &[&str],
) -> DaxRun {
    let work = ScratchDir::new(label).expect("scratch directory");
    let share = work.path().join("share");
    std::fs::create_dir(&share).expect("share directory");
    let files = prepare(&share);
    let daxtool = work.path().join("daxtool");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/daxtool.c");
    build_static_helper(&src, &daxtool)
        .unwrap_or_else(|e| panic!("building daxtool: {}", error_chain(&e)));
    let program = daemon::vfsdaxd_path().unwrap_or_else(|e| panic!("{}", error_chain(&e)));

    let mut opts = RunOptions::new(Mode::Dax);
    opts.device = FsDevice::Generic;
    opts.mount_opts = mount_opts.map(str::to_owned);
    opts.cache = "auto".into();
    opts.extra_files = vec![("bin/daxtool".into(), daxtool)];
    opts.daemon_args = ["--cache-size", "256M"]
        .iter()
        .chain(daemon_extra)
        .map(|a| a.into())
        .collect();
    let coherent = random(16, 99);
    let h2m = share.join("h2m");
    let run = run_guest_with(setup, &program, &share, &opts, work.path(), |name| {
        if name != "go-coherent" {
            return Err(format!("unexpected wait {name}"));
        }
        // A host process writes under the guest's mapping.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&h2m)
            .map_err(|e| e.to_string())?;
        f.write_all_at(&coherent, COHERENT_AT)
            .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("guest run: {}", error_chain(&e)));
    say(&format!(
        "{label}: guest run took {:.1} s ({}; work dir {})",
        run.qemu.elapsed.as_secs_f64(),
        run.report.timing_summary(),
        work.path().display()
    ));
    let r = DaxRun {
        share,
        files,
        coherent,
        run,
        _work: work,
    };
    let steps = [
        "dax_flag",
        "read_host_bytes",
        "write_through_dax",
        "mmap_store",
        "host_write_seen_through_mapping",
        "small_files",
        "growing_file",
    ];
    let problems = r.run.report.problems(&steps);
    r.check(problems.is_empty(), &format!("guest steps: {problems:?}"));
    r.check(
        r.run.host_errors.is_empty(),
        &format!("host actions: {:?}", r.run.host_errors),
    );
    r
}

/// What every mount mode must show: the files QEMU can map go through DAX and carry the
/// guest's and the host's bytes both ways, through reads, writes and shared mappings.
fn check_dax_files(r: &DaxRun) {
    for f in ["h4m", "h2m"] {
        r.check(
            r.data(&format!("dax_{f}")) == "1",
            &format!("{f} not accessed through DAX"),
        );
    }
    r.check(
        r.data("md5_h4m") == md5_hex(&r.files.h4m),
        "h4m read through DAX",
    );
    r.check(
        r.data("mmap_md5_h2m") == md5_hex(&r.files.h2m),
        "h2m read through a shared mapping",
    );
    let h4m = r.host("h4m");
    r.check(
        md5_hex(&h4m[MIB..MIB + 4096]) == r.data("wrote_md5"),
        "the guest's write through DAX is not in the host file",
    );
    r.check(
        h4m[..MIB] == r.files.h4m[..MIB],
        "h4m changed outside the write",
    );
    let h2m = r.host("h2m");
    let stored = b"STORED-THROUGH-A-SHARED-MAPPING";
    r.check(
        &h2m[8192..8192 + stored.len()] == stored,
        "the guest's store through its shared mapping is not in the host file",
    );
    let at = COHERENT_AT as usize;
    let dumps = r.mmap_dumps();
    r.check(
        dumps == [hex(&r.files.h2m[at..at + 16]), hex(&r.coherent)],
        &format!(
            "the guest's mapping should show the host's bytes, then the host's new bytes: \
             {dumps:?}"
        ),
    );
    // Growing by whole chunks keeps every range mappable.
    r.check(r.data("grow_size_1") == (4 * MIB).to_string(), "grow size");
    let grow = r.host("grow");
    r.check(
        grow[..2 * MIB] == r.files.grow[..],
        "grow's first chunk changed",
    );
    r.check(
        md5_hex(&grow[2 * MIB..4 * MIB]) == r.data("appended_md5_1"),
        "the appended chunk is not in the host file",
    );
    r.check(
        r.data("md5_grow_1") == md5_hex(&grow[..4 * MIB]),
        "grow read back",
    );
    r.check(
        r.data("grow_size_2") == (4 * MIB + 100).to_string()
            && md5_hex(&grow[4 * MIB..]) == r.data("appended_md5_2"),
        "the 100 appended bytes are not in the host file",
    );
    r.check(
        r.host("new_small") == b"hello dax\nagain\n",
        "new_small on the host",
    );
    // Files the guest only read are unchanged.
    r.check(r.host("small") == r.files.small, "small changed");
    r.check(r.host("odd") == r.files.odd, "odd changed");
    let (setups, _, removes, mapped) = r.daemon_counters();
    r.check(
        setups > 0 && removes > 0 && mapped > 0,
        "the daemon served no SETUPMAPPING/REMOVEMAPPING: the guest used its page cache",
    );
}

fn frontend_was_probed(r: &DaxRun) {
    r.check(
        r.run
            .daemon_log
            .contains("the frontend maps only ranges inside a file"),
        "the daemon did not find out what QEMU 11.1 maps",
    );
}

#[test]
fn dax_inode_uses_dax_for_the_files_qemu_can_map_and_the_page_cache_for_the_rest() {
    let Some(setup) = setup_or_skip() else {
        return;
    };
    let r = run_dax(
        &setup,
        "guest-dax-inode",
        Some("dax=inode"),
        &["--dax-policy", "always"],
    );
    frontend_was_probed(&r);
    check_dax_files(&r);
    for f in ["small", "odd", "new_small"] {
        r.check(
            r.data(&format!("dax_{f}")) == "0",
            &format!("{f} should use the page cache"),
        );
    }
    r.check(r.data("md5_small") == md5_hex(&r.files.small), "small read");
    r.check(r.data("md5_odd") == md5_hex(&r.files.odd), "odd read");
    r.check(
        r.data("md5_new_small") == md5_hex(b"hello dax\nagain\n"),
        "new_small read back",
    );
    r.check(
        r.data("md5_grow_2") == md5_hex(&r.host("grow")),
        "grow read back after growing to a size QEMU cannot map",
    );
    let (_, refused, _, _) = r.daemon_counters();
    r.check(refused == 0, "a SETUPMAPPING was refused with dax=inode");
}

#[test]
fn dax_always_declines_what_qemu_cannot_map_and_harms_nothing() {
    let Some(setup) = setup_or_skip() else {
        return;
    };
    let r = run_dax(&setup, "guest-dax-always", Some("dax=always"), &[]);
    frontend_was_probed(&r);
    check_dax_files(&r);
    for f in ["small", "odd"] {
        r.check(
            r.data(&format!("dax_{f}")) == "1",
            &format!("{f} not in DAX mode"),
        );
    }
    // QEMU 11.1 cannot map a range that reaches past the end of the file: the daemon declines
    // it (EOPNOTSUPP) instead of letting QEMU refuse it (or extend an empty file).
    for key in ["md5_small", "md5_odd", "md5_new_small", "md5_grow_2"] {
        let v = r.data(key);
        r.check(
            v == "ERR Operation_not_supported",
            &format!("{key}: expected the declined read, got {v}"),
        );
    }
    let (_, refused, _, _) = r.daemon_counters();
    r.check(refused > 0, "nothing was declined");
    r.check(
        r.run.daemon_log.contains("dax=always with this frontend"),
        "no warning about dax=always at INIT",
    );
    r.check(
        !r.run.qemu.qemu_log.contains("backing store size 0x11 "),
        "QEMU was asked to map the 17-byte file",
    );
}

#[test]
fn the_defaults_never_give_the_guest_an_error() {
    let Some(setup) = setup_or_skip() else {
        return;
    };
    // No dax option in the guest (Linux then asks per inode), no DAX policy on the daemon.
    let r = run_dax(&setup, "guest-dax-defaults", None, &[]);
    frontend_was_probed(&r);
    for f in ["h4m", "h2m", "small", "odd", "new_small"] {
        r.check(
            r.data(&format!("dax_{f}")) == "0",
            &format!("{f}: DAX with the defaults"),
        );
    }
    for (key, want) in [
        ("md5_h4m", md5_hex(&r.files.h4m)),
        ("mmap_md5_h2m", md5_hex(&r.files.h2m)),
        ("md5_small", md5_hex(&r.files.small)),
        ("md5_odd", md5_hex(&r.files.odd)),
        ("md5_new_small", md5_hex(b"hello dax\nagain\n")),
        ("md5_grow_2", md5_hex(&r.host("grow"))),
    ] {
        let v = r.data(key);
        r.check(v == want, &format!("{key}: {v}"));
    }
    // Through the page cache the guest's mapping keeps the old bytes after the host's write:
    // what makes the same check a proof of DAX in the other modes.
    let at = COHERENT_AT as usize;
    let old = hex(&r.files.h2m[at..at + 16]);
    r.check(
        r.mmap_dumps() == [old.clone(), old],
        "the page-cache mapping saw the host's write",
    );
    let (setups, refused, _, _) = r.daemon_counters();
    r.check(setups == 0 && refused == 0, "no mapping with the defaults");
    r.check(
        r.run.daemon_log.contains("--dax-policy auto marks no file"),
        "the daemon did not say why no file uses DAX",
    );
}
