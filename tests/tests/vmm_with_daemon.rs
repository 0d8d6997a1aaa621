//! The reference VMM with its DAX mapping from the real daemon, end to end: `vfsdaxd
//! --cache-size 64M` on a temporary share, `target/debug/vfsdax-vmm --daemon-socket S --path
//! NAME` as its vhost-user frontend (SETUPMAPPING with `fh = -1` through a virtqueue, the daemon's
//! `SHMEM_MAP` into the VMM's window, that window as the KVM memslot), the file truncated between
//! the guest's two accesses by a FUSE SETATTR through the daemon (or by a host process), and the
//! guest's outcome and the JSON fault reports checked from outside the VMM process.
//!
//! The daemon's truncation guard runs with `--truncate-guard-action unmap`: it unmaps the lost
//! range before the truncation, and the glue blames the guest's access on the file that was
//! mapped there, so the guest policy applies and each side reports once (the daemon the
//! truncation, the VMM the access). The last cells check the guard off and the default zero
//! pages.
//!
//! Every cell is bounded in time. Needs /dev/kvm; skipped, with a visible reason, only where it
//! is absent. The binaries are found like the harness finds the daemon (`target/debug`, built
//! there first when missing or stale: `vfsdax_tests::bins`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vfsdax_protocol::apf::KVM_PV_REASON_PAGE_ERROR;
use vfsdax_refvmm::guest::layout::WINDOW_GPA;
use vfsdax_refvmm::scenario::{
    original_word, pattern_bytes, ACCESS_OFFSET, BASELINE_OFFSET, STORE_VALUE,
};
use vfsdax_tests::bins::{self, Bin};
use vfsdax_tests::harness::{daemon_program, error_chain, Daemon, DaemonOptions};

const NAME: &str = "data.bin";
const VMM_BOUND: Duration = Duration::from_secs(60);
const GPA: u64 = WINDOW_GPA + ACCESS_OFFSET;

/// `vfsdax-vmm` next to the daemon binary in `target/debug` (built first if it is missing or
/// stale).
fn vmm_program() -> PathBuf {
    bins::built(Bin::VfsdaxVmm).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

fn kvm_missing(test: &str) -> bool {
    !vfsdax_tests::require::kvm(test)
}

/// What one run of the VMM left behind.
struct Run {
    status: ExitStatus,
    reports: Vec<Value>,
    summary: Value,
    stderr: String,
    /// (dev, ino) of the share's file before the run.
    identity: (u64, u64),
    host_file: PathBuf,
    daemon: Daemon,
}

/// The daemon's guard as these cells run it: the glue's fault path reports the access.
const GUARD_UNMAP: &[&str] = &["--truncate-guard-action", "unmap"];

/// Starts the daemon (`--cache-size 64M` and `guard`) on a share holding `NAME`, runs the VMM
/// against it with `args` (bounded; with `host`, the file is changed by the VMM as a host
/// process: `--truncate-host`), and collects its output.
fn run_vmm(args: &[&str], host: bool) -> Run {
    run_vmm_guarded(args, host, GUARD_UNMAP)
}

fn run_vmm_guarded(args: &[&str], host: bool, guard: &[&str]) -> Run {
    assert!(daemon_program().is_ok(), "vfsdaxd not built");
    let mut extra_args: Vec<String> = vec!["--cache-size".into(), "64M".into()];
    extra_args.extend(guard.iter().map(|a| a.to_string()));
    let dopts = DaemonOptions {
        extra_args,
        ..Default::default()
    };
    let daemon = Daemon::start(&dopts).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let host_file = daemon.share().join(NAME);
    std::fs::write(&host_file, pattern_bytes(original_word)).expect("write the share's file");
    let md = std::fs::metadata(&host_file).expect("stat the share's file");
    let identity = (md.dev(), md.ino());
    let dir = daemon.share().parent().expect("temp dir").to_path_buf();
    let (out, err) = (dir.join("vmm.out"), dir.join("vmm.err"));
    let mut cmd = Command::new(vmm_program());
    cmd.arg("--daemon-socket")
        .arg(daemon.socket())
        .args(["--path", NAME])
        .args(args);
    if host {
        cmd.arg("--truncate-host").arg(&host_file);
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).expect("out file")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("err file")))
        .spawn()
        .expect("spawn vfsdax-vmm");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for vfsdax-vmm") {
            break s;
        }
        if start.elapsed() > VMM_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vfsdax-vmm {args:?} hung: no exit within {VMM_BOUND:?}\n{}\ndaemon log:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default(),
                daemon.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let reports = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("report line {l:?}: {e}")))
        .collect();
    let summary = stderr
        .lines()
        .find_map(|l| l.split_once("run summary: ").map(|(_, j)| j.to_string()))
        .map(|j| serde_json::from_str(&j).expect("summary JSON"))
        .unwrap_or(Value::Null);
    Run {
        status,
        reports,
        summary,
        stderr,
        identity,
        host_file,
        daemon,
    }
}

impl Run {
    /// The truncation guard's JSON reports in the daemon's log.
    fn guard_reports(&mut self) -> Vec<Value> {
        self.daemon
            .log_text()
            .lines()
            .filter_map(|l| {
                l.split_once("truncation guard: {")
                    .map(|(_, j)| format!("{{{j}"))
            })
            .map(|j| serde_json::from_str(&j).unwrap_or_else(|e| panic!("guard report {j}: {e}")))
            .collect()
    }

    /// Exactly one guard report, for the share's file, cut to `size_after`, with `action`.
    fn the_guard_report(&mut self, action: &str, size_after: u64) -> Value {
        let reports = self.guard_reports();
        let ctx = self.context();
        assert_eq!(
            reports.len(),
            1,
            "one guard report expected
{ctx}"
        );
        let r = reports[0].clone();
        let (dev, ino) = self.identity;
        assert_eq!(r["dev"].as_u64(), Some(dev), "{ctx}");
        assert_eq!(r["ino"].as_u64(), Some(ino), "{ctx}");
        assert_eq!(r["size_after"].as_u64(), Some(size_after), "{ctx}");
        assert_eq!(r["action"], action, "{ctx}");
        assert!(!r["ranges"].as_array().is_none_or(Vec::is_empty), "{ctx}");
        r
    }

    fn context(&mut self) -> String {
        format!(
            "status {}\nreports {:?}\nstderr:\n{}\ndaemon log:\n{}",
            self.status,
            self.reports,
            self.stderr,
            self.daemon.log_text()
        )
    }

    /// The one report: a truncated page at the accessed offset of the share's file, now
    /// `size_now` bytes, handled by `action`.
    fn the_report(&mut self, action: &str, access: &str, size_now: u64) -> Value {
        // The daemon reported the truncation once, the VMM the access once.
        self.the_guard_report("unmap", size_now);
        let ctx = self.context();
        assert_eq!(self.reports.len(), 1, "one report expected\n{ctx}");
        let r = self.reports[0].clone();
        assert_eq!(r["kind"], "truncated-page", "{ctx}");
        assert_eq!(r["action"]["action"], action, "{ctx}");
        assert_eq!(r["access"], access, "{ctx}");
        assert_eq!(r["gpa"].as_u64(), Some(GPA), "{ctx}");
        assert_eq!(r["window_offset"].as_u64(), Some(ACCESS_OFFSET), "{ctx}");
        assert_eq!(r["file_offset"].as_u64(), Some(ACCESS_OFFSET), "{ctx}");
        assert_eq!(r["file_size_now"].as_u64(), Some(size_now), "{ctx}");
        let (dev, ino) = self.identity;
        assert_eq!(r["file"]["dev"].as_u64(), Some(dev), "file identity\n{ctx}");
        assert_eq!(r["file"]["ino"].as_u64(), Some(ino), "file identity\n{ctx}");
        // The VMM names the file as its descriptor's link reads: the host path, or, when the
        // daemon opened it inside its namespace sandbox (the default), the path in the share.
        let path = r["file"]["path"].as_str().unwrap_or_default();
        let in_share = Path::new("/").join(self.host_file.file_name().unwrap_or_default());
        assert!(
            Path::new(path) == self.host_file || Path::new(path) == in_share,
            "report path {path:?} is neither {} nor {}\n{ctx}",
            self.host_file.display(),
            in_share.display()
        );
        r
    }

    /// The VMM exited with `code`, the guest saw the baseline word before the truncation, the
    /// file really is `size` bytes on the host, and the daemon ended cleanly when the VMM
    /// disconnected.
    fn finish(mut self, code: i32, size: u64) {
        let ctx = self.context();
        assert_eq!(self.status.code(), Some(code), "exit status\n{ctx}");
        assert_eq!(
            self.summary["guest"]["baseline"].as_u64(),
            Some(original_word(BASELINE_OFFSET)),
            "the guest read the file through the daemon's mapping\n{ctx}"
        );
        let len = std::fs::metadata(&self.host_file).expect("stat").len();
        assert_eq!(len, size, "host file size after the run\n{ctx}");
        match self.daemon.wait_exit(Duration::from_secs(10)) {
            Some(s) => assert!(s.success(), "daemon exit {s}\n{}", self.context()),
            None => panic!("the daemon did not end after the VMM disconnected\n{ctx}"),
        }
    }
}

#[test]
fn opted_in_load_gets_an_apf_error() {
    if kvm_missing("opted_in_load_gets_an_apf_error") {
        return;
    }
    let mut run = run_vmm(&["--opt-in", "--access", "load"], false);
    let r = run.the_report("apf-error", "read", 0);
    let token = r["action"]["token"].as_u64().expect("token");
    let g = run.summary["guest"].clone();
    let ctx = run.context();
    assert_eq!(
        g["page_fault"][1].as_u64(),
        Some(token),
        "#PF CR2 = token\n{ctx}"
    );
    let ready = g["ready"].as_array().cloned().unwrap_or_default();
    assert!(
        ready.iter().any(|e| e[0].as_u64() == Some(token)
            && e[1].as_u64().unwrap_or(0) & u64::from(KVM_PV_REASON_PAGE_ERROR) != 0),
        "the apf handler got PAGE_ERROR for token {token:#x}: {ready:?}\n{ctx}"
    );
    assert_eq!(
        g["sigbus"].as_u64(),
        Some(1),
        "task killed by the apf error\n{ctx}"
    );
    assert_eq!(g["done"], true, "{ctx}");
    run.finish(0, 0);
}

#[test]
fn not_opted_in_gets_a_machine_check_at_the_gpa() {
    if kvm_missing("not_opted_in_gets_a_machine_check_at_the_gpa") {
        return;
    }
    let mut run = run_vmm(&["--access", "load", "--policy", "mce"], false);
    run.the_report("machine-check", "read", 0);
    let g = run.summary["guest"].clone();
    let ctx = run.context();
    assert_eq!(
        g["machine_check"][0].as_u64(),
        Some(GPA),
        "MCi_ADDR = GPA\n{ctx}"
    );
    assert_eq!(g["sigbus"].as_u64(), Some(2), "{ctx}");
    assert_eq!(g["done"], true, "{ctx}");
    run.finish(0, 0);
}

#[test]
fn zero_fill_gives_the_guest_zeros() {
    if kvm_missing("zero_fill_gives_the_guest_zeros") {
        return;
    }
    let mut run = run_vmm(&["--access", "load", "--policy", "zero-fill"], false);
    run.the_report("zero-fill", "read", 0);
    let g = run.summary["guest"].clone();
    let ctx = run.context();
    assert_eq!(g["value"].as_u64(), Some(0), "the load read zeros\n{ctx}");
    assert_eq!(g["done"], true, "{ctx}");
    run.finish(0, 0);
}

#[test]
fn stop_exits_2_with_a_precise_diagnostic() {
    if kvm_missing("stop_exits_2_with_a_precise_diagnostic") {
        return;
    }
    let mut run = run_vmm(&["--access", "load", "--policy", "stop"], false);
    run.the_report("stop", "read", 0);
    let ctx = run.context();
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("vfsdax-vmm: VM stopped:"))
        .unwrap_or_else(|| panic!("no stop diagnostic\n{ctx}"))
        .to_string();
    // The file as the report names it (see `the_report`).
    let named = format!(
        "mapped from /{} ",
        run.host_file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    assert!(
        line.contains(&named) || line.contains(&run.host_file.display().to_string()),
        "the file is not named in {line:?}"
    );
    for want in [
        format!("file offset {ACCESS_OFFSET:#x}"),
        "the file is now 0 bytes long".to_string(),
        format!("guest-physical address {GPA:#x}"),
    ] {
        assert!(line.contains(&want), "{want:?} missing from {line:?}");
    }
    assert!(!run.stderr.contains("Bad address"), "{ctx}");
    run.finish(2, 0);
}

#[test]
fn host_truncation_of_a_store_below_the_page_is_an_apf_error() {
    if kvm_missing("host_truncation_of_a_store_below_the_page_is_an_apf_error") {
        return;
    }
    let mut run = run_vmm(
        &[
            "--opt-in",
            "--access",
            "store",
            "--truncation",
            "below-page",
        ],
        true,
    );
    let r = run.the_report("apf-error", "write", 0x1800);
    assert!(r["action"]["token"].as_u64().is_some());
    let ctx = run.context();
    assert_eq!(run.summary["guest"]["sigbus"].as_u64(), Some(1), "{ctx}");
    assert_ne!(
        run.summary["guest"]["value"].as_u64(),
        Some(STORE_VALUE),
        "the store must not appear to have landed\n{ctx}"
    );
    run.finish(0, 0x1800);
}

#[test]
fn with_the_guard_off_the_glue_alone_handles_the_truncation() {
    if kvm_missing("with_the_guard_off_the_glue_alone_handles_the_truncation") {
        return;
    }
    let mut run = run_vmm_guarded(
        &["--opt-in", "--access", "load"],
        false,
        &["--truncate-guard", "off"],
    );
    let ctx = run.context();
    assert!(run.guard_reports().is_empty(), "{ctx}");
    assert_eq!(run.reports.len(), 1, "one report from the glue\n{ctx}");
    assert_eq!(run.reports[0]["action"]["action"], "apf-error", "{ctx}");
    assert_eq!(run.summary["guest"]["sigbus"].as_u64(), Some(1), "{ctx}");
    run.finish(0, 0);
}

#[test]
fn with_zero_pages_the_guard_reports_and_the_guest_reads_zeros() {
    if kvm_missing("with_zero_pages_the_guard_reports_and_the_guest_reads_zeros") {
        return;
    }
    // The default action: the lost range holds zero pages before the truncation, so the
    // guest's access never faults and only the daemon reports.
    let mut run = run_vmm_guarded(&["--opt-in", "--access", "load"], false, &[]);
    let r = run.the_guard_report("zero", 0);
    let ctx = run.context();
    assert_eq!(
        r["trigger"], "guest",
        "a FUSE SETATTR through the daemon\n{ctx}"
    );
    assert!(
        run.reports.is_empty(),
        "no fault report from the glue\n{ctx}"
    );
    assert_eq!(run.summary["guest"]["value"].as_u64(), Some(0), "{ctx}");
    assert_eq!(run.summary["guest"]["sigbus"], Value::Null, "{ctx}");
    run.finish(0, 0);
}

#[test]
fn the_example_vmm_integration_runs_against_the_daemon() {
    // vmm-glue/examples/vmm_integration.rs, the wiring a VMM author copies, really connects,
    // reserves the window the daemon offers, registers it and runs a vCPU through the glue.
    if kvm_missing("the_example_vmm_integration_runs_against_the_daemon") {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let profile = vfsdax_tests::guest::daemon::profile_dir_of(&exe).expect("profile dir");
    let example = profile.join("examples/vmm_integration");
    if !example.exists() {
        // `cargo test` builds the examples of the workspace's packages; a lone test run may not.
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "vfsdax-vmm-glue",
                "--example",
                "vmm_integration",
            ])
            .status()
            .expect("cargo build");
        assert!(st.success());
    }
    let d = Daemon::start(&DaemonOptions {
        extra_args: vec!["--cache-size".into(), "64M".into()],
        ..Default::default()
    })
    .expect("daemon");
    let out = Command::new(&example)
        .arg(d.socket())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("window of 64 MiB at 0x100000000 (memslot 1)"),
        "{stdout}"
    );
}
