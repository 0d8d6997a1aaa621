//! The truncated-DAX-page matrix on real KVM:
//! {load, store} × {opted in → apf error, not opted in → mce, zero-fill, stop} ×
//! {truncate to 0, truncate below the accessed page, unlink and recreate the name, truncate then
//! re-extend before the access}, plus fallback edge cells and a zero-filled page that keeps the
//! guest's store across later fence scans.
//!
//! Every cell runs in a child process (this test binary re-executed for that one test) with a
//! time bound, so a VMM crash or hang fails the cell instead of the whole suite. Needs /dev/kvm;
//! skipped, with a visible reason, only where it is absent.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vfsdax_protocol::apf::{
    BROADCAST_TOKEN, DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT, KVM_PV_REASON_PAGE_ERROR,
};
use vfsdax_protocol::report::{Access, ActionTaken, FaultKind, GuestMode};
use vfsdax_refvmm::guest::{layout, port, GuestAccess, GuestConfig, GuestObservation};
use vfsdax_refvmm::scenario::{
    original_word, replacement_word, run_scenario, Backing, LocalFile, Scenario, ScenarioResult,
    Truncation, ACCESS_OFFSET, BASELINE_OFFSET, BELOW_SIZE, MAP_LEN, STORE_VALUE, WINDOW_SIZE,
};
use vfsdax_refvmm::vm::{ReferenceVm, VmSetup, KICK_INTERVAL};
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::mce::{MCG_STATUS_EIPV, MCG_STATUS_MCIP, MCG_STATUS_RIPV};
use vfsdax_vmm_glue::kvm::{Exit, Handled, VcpuOps};

const CHILD_ENV: &str = "VFSDAX_KVM_MATRIX_CHILD";
const CELL_BOUND: Duration = Duration::from_secs(60);
const GUEST_BOUND: Duration = Duration::from_secs(10);
/// Length of the guest's store instruction (`mov [rbx], rcx`): KVM completes a kernel-mode store
/// to a lost page as an MMIO write and exits with RIP past it (the glue rewinds it).
const STORE_LEN: u64 = 3;

/// Runs `body` in a child process with a bound; the parent asserts it exited cleanly in time.
fn in_child(name: &str, body: fn()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    if !vfsdax_tests::require::kvm(name) {
        return;
    }
    let dir = tempdir(name);
    let out = dir.join("out.txt");
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("VFSDAX_CELL_DIR", &dir)
        .stdout(Stdio::from(
            std::fs::File::create(&out).expect("output file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("err.txt")).expect("error file"),
        ))
        .spawn()
        .expect("spawn the cell");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the cell") {
            break s;
        }
        if start.elapsed() > CELL_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cell {name} hung: no exit within {CELL_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default();
    assert!(status.success(), "cell {name} failed ({status}):\n{text}");
    assert!(
        text.contains("1 passed"),
        "cell {name} did not run its body:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vfsdax-matrix-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guest {
    OptedIn,
    Mce,
    ZeroFill,
    Stop,
}

/// The cell's scenario on Linux's guest model: no `SEND_ALWAYS` (Linux dropped it in 5.8), so
/// only a user-mode access can take the apf error; `user` picks the mode of the access.
fn scenario(access: GuestAccess, guest: Guest, truncation: Truncation, user: bool) -> Scenario {
    let dir = std::env::var_os("VFSDAX_CELL_DIR")
        .map(Into::into)
        .unwrap_or_else(|| tempdir("direct"));
    Scenario {
        access,
        opt_in: guest == Guest::OptedIn,
        send_always: false,
        stock_apf: false,
        guest_mce: true,
        user_mode: user,
        feature_bit: Some(DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
        policy: match guest {
            Guest::OptedIn | Guest::Mce => FallbackPolicy::Mce,
            Guest::ZeroFill => FallbackPolicy::ZeroFill,
            Guest::Stop => FallbackPolicy::Stop,
        },
        truncation,
        file: dir.join("backing"),
        timeout: GUEST_BOUND,
        efault_exits: false,
    }
}

fn run(s: &Scenario) -> ScenarioResult {
    match run_scenario(s) {
        Ok(r) => r,
        Err(e) => panic!(
            "scenario {s:?} failed: {e} ({:?})",
            std::error::Error::source(&e)
        ),
    }
}

fn size_after(t: Truncation) -> u64 {
    match t {
        Truncation::ToZero => 0,
        Truncation::BelowAccessedPage => BELOW_SIZE,
        _ => MAP_LEN,
    }
}

/// RIP the guest handler must see: on the faulting instruction, loads and stores alike (a load
/// is rewound; a user-mode store exits as a bare EFAULT before it completes; a kernel-mode store,
/// which KVM on this host completes as an MMIO write before exiting, is rewound by decoding the
/// instruction that ends at RIP).
fn expected_rip(r: &ScenarioResult) -> u32 {
    r.access_rip as u32
}

fn check_cell(access: GuestAccess, guest: Guest, truncation: Truncation, user: bool) {
    check_scenario(
        scenario(access, guest, truncation, user),
        access,
        guest,
        truncation,
    );
}

/// A kernel-mode cell whose DAX exits reach the glue as the bare `EFAULT` of a host with
/// EPT/NPT (no address: the glue decodes the instruction at RIP).
fn check_efault_cell(access: GuestAccess, guest: Guest, truncation: Truncation) {
    let mut s = scenario(access, guest, truncation, false);
    s.efault_exits = true;
    let efaults = check_scenario(s, access, guest, truncation);
    assert!(efaults >= 1, "the access reached the glue as a bare EFAULT");
}

/// Runs the cell and checks it; returns how many exits reached the glue as a bare `EFAULT`.
fn check_scenario(s: Scenario, access: GuestAccess, guest: Guest, truncation: Truncation) -> u64 {
    let user = s.user_mode;
    let r = run(&s);
    let efaults = r.efaults;
    let g = &r.guest;
    assert_eq!(g.exception, None, "unexpected guest exception: {g:?}");
    assert_eq!(
        g.baseline,
        Some(original_word(BASELINE_OFFSET)),
        "baseline load through the window"
    );
    if guest == Guest::OptedIn {
        assert!(
            g.opted_in.is_some(),
            "guest saw the CPUID bit and registered: {g:?}"
        );
    }
    let faulting = matches!(
        truncation,
        Truncation::ToZero | Truncation::BelowAccessedPage
    );
    if !faulting {
        check_no_fault(&r, access, truncation);
        return efaults;
    }
    let gpa = layout::WINDOW_GPA + ACCESS_OFFSET;
    let want_access = if access == GuestAccess::Load {
        Access::Read
    } else {
        Access::Write
    };
    let report = match (&r.stop, r.reports.as_slice()) {
        (Some(d), []) => d.report.clone(),
        (None, [one]) => one.clone(),
        other => panic!("expected exactly one fault report, got {other:?}"),
    };
    assert_eq!(report.kind, FaultKind::TruncatedPage);
    assert_eq!(report.gpa, Some(gpa));
    assert_eq!(report.window_offset, ACCESS_OFFSET);
    assert_eq!(report.file_offset, Some(ACCESS_OFFSET));
    assert_eq!(report.file_size_now, Some(size_after(truncation)));
    assert_eq!(report.access, want_access);
    let mode = if user {
        GuestMode::User
    } else {
        GuestMode::Kernel
    };
    assert_eq!(report.guest_mode, mode);
    let file = report.file.as_ref().expect("file identity");
    assert!(file.ino != 0);
    assert!(
        file.path.as_deref().is_some_and(|p| p.ends_with("backing")),
        "{file:?}"
    );
    assert!(report.latency_ns > 0);
    match guest {
        Guest::OptedIn => {
            let ActionTaken::ApfError { token } = report.action else {
                panic!("{report:?}")
            };
            let (flags, cr2, rip) = g.page_fault.expect("the #PF handler ran");
            assert_eq!(flags, 1, "apf flags = PAGE_NOT_PRESENT");
            assert_eq!(cr2, token, "CR2 carried the token");
            assert_eq!(rip, expected_rip(&r), "#PF frame RIP");
            assert!(
                g.ready.contains(&(token, KVM_PV_REASON_PAGE_ERROR)),
                "'page ready' with PAGE_ERROR for {token:#x}: {:?}",
                g.ready
            );
            for &(t, f) in &g.ready {
                assert!(
                    t == token || (t == BROADCAST_TOKEN && f == 0),
                    "stray 'page ready' {t:#x}/{f}"
                );
            }
            assert_eq!(g.sigbus, Some(1), "the task got the apf error");
            assert_eq!(g.value, None, "the task did not resume past the access");
            assert!(g.done);
            assert_eq!(r.counters.apf_errors, 1);
            assert_eq!(r.counters.machine_checks, 0);
        }
        Guest::Mce => {
            assert_eq!(report.action, ActionTaken::MachineCheck { bank: 9 });
            assert_eq!(
                report.fallback_reason.as_deref(),
                Some("guest did not opt in to apf errors")
            );
            let (addr, status_hi, mcg, rip) = g.machine_check.expect("the #MC handler ran");
            assert_eq!(addr, gpa, "MCi_ADDR is the faulting GPA");
            // VAL, UC, EN, MISCV, ADDRV, S, AR (bits 63..55 → high half bits 31..23).
            assert_eq!(
                status_hi & 0xff80_0000,
                0xbd80_0000,
                "MCi_STATUS {status_hi:#x}"
            );
            let want_mcg = MCG_STATUS_MCIP | MCG_STATUS_RIPV | MCG_STATUS_EIPV;
            assert_eq!(u64::from(mcg), want_mcg, "MCG_STATUS");
            assert_eq!(rip, expected_rip(&r), "#MC frame RIP");
            assert_eq!(g.sigbus, Some(2));
            assert_eq!(g.value, None);
            assert!(g.done);
        }
        Guest::ZeroFill => {
            let lost_start = if truncation == Truncation::ToZero {
                0
            } else {
                0x2000
            };
            assert_eq!(
                report.action,
                ActionTaken::ZeroFill {
                    window_offset: lost_start,
                    len: MAP_LEN - lost_start
                }
            );
            let want = if access == GuestAccess::Load {
                0
            } else {
                STORE_VALUE
            };
            assert_eq!(
                g.value,
                Some(want),
                "the guest read zeros / its own store back"
            );
            assert_eq!(g.stage, 3);
            assert!(g.done);
            assert_eq!(g.sigbus, None);
            assert_eq!(
                r.file_after.len,
                size_after(truncation),
                "zero-fill did not grow the file"
            );
        }
        Guest::Stop => {
            let d = r.stop.as_ref().expect("the stop policy stopped the VM");
            assert_eq!(d.report.action, ActionTaken::Stop);
            let msg = d.to_string();
            for needle in [
                format!("{gpa:#x}"),
                format!("file offset {ACCESS_OFFSET:#x}"),
                format!("now {} bytes", size_after(truncation)),
                "backing".to_string(),
            ] {
                assert!(msg.contains(&needle), "diagnostic lacks '{needle}': {msg}");
            }
            assert!(!msg.contains("Bad address"));
            assert!(!g.done, "the guest did not run past the access");
            assert_eq!(g.stage, 2);
        }
    }
    efaults
}

fn check_no_fault(r: &ScenarioResult, access: GuestAccess, truncation: Truncation) {
    let g = &r.guest;
    assert!(
        r.reports.is_empty() && r.stop.is_none(),
        "no fault expected: {:?} {:?}",
        r.reports,
        r.stop
    );
    assert_eq!(g.stage, 3);
    assert!(g.done);
    assert_eq!(
        (g.page_fault, g.machine_check, g.sigbus),
        (None, None, None)
    );
    let want = match (access, truncation) {
        (GuestAccess::Store, _) => STORE_VALUE,
        (GuestAccess::Load, Truncation::UnlinkAndRecreate) => original_word(ACCESS_OFFSET),
        (GuestAccess::Load | GuestAccess::HostDriven, _) => 0,
    };
    assert_eq!(g.value, Some(want), "value seen through the window");
    match truncation {
        // The mapping keeps the old inode: the new file under the name is untouched.
        Truncation::UnlinkAndRecreate => assert_eq!(
            r.file_after.word_at_access,
            Some(replacement_word(ACCESS_OFFSET))
        ),
        Truncation::TruncateThenReextend if access == GuestAccess::Store => {
            assert_eq!(
                r.file_after.word_at_access,
                Some(STORE_VALUE),
                "the store reached the file"
            )
        }
        _ => {}
    }
    // Nothing faulted: apart from forwarding the guest's apf MSR writes, the glue added no ioctl.
    assert_eq!(
        r.ioctls,
        r.runs + r.counters.msr_traps,
        "ioctls beyond KVM_RUN on a fault-free run"
    );
}

macro_rules! cells {
    ($($name:ident: $access:ident, $guest:ident, $trunc:ident, $user:expr;)*) => {$(
        #[test]
        fn $name() {
            in_child(stringify!($name), || {
                check_cell(GuestAccess::$access, Guest::$guest, Truncation::$trunc, $user)
            });
        }
    )*};
}

// User mode: every truncation kind × access × policy, the apf error included (Linux takes async
// page faults in user mode only).
cells! {
    user_load_apf_to_zero: Load, OptedIn, ToZero, true;
    user_load_apf_below_page: Load, OptedIn, BelowAccessedPage, true;
    user_load_apf_unlink_recreate: Load, OptedIn, UnlinkAndRecreate, true;
    user_load_apf_reextend: Load, OptedIn, TruncateThenReextend, true;
    user_store_apf_to_zero: Store, OptedIn, ToZero, true;
    user_store_apf_below_page: Store, OptedIn, BelowAccessedPage, true;
    user_store_apf_unlink_recreate: Store, OptedIn, UnlinkAndRecreate, true;
    user_store_apf_reextend: Store, OptedIn, TruncateThenReextend, true;
    user_load_mce_to_zero: Load, Mce, ToZero, true;
    user_load_mce_below_page: Load, Mce, BelowAccessedPage, true;
    user_load_mce_unlink_recreate: Load, Mce, UnlinkAndRecreate, true;
    user_load_mce_reextend: Load, Mce, TruncateThenReextend, true;
    user_store_mce_to_zero: Store, Mce, ToZero, true;
    user_store_mce_below_page: Store, Mce, BelowAccessedPage, true;
    user_store_mce_unlink_recreate: Store, Mce, UnlinkAndRecreate, true;
    user_store_mce_reextend: Store, Mce, TruncateThenReextend, true;
    user_load_zero_fill_to_zero: Load, ZeroFill, ToZero, true;
    user_load_zero_fill_below_page: Load, ZeroFill, BelowAccessedPage, true;
    user_load_zero_fill_unlink_recreate: Load, ZeroFill, UnlinkAndRecreate, true;
    user_load_zero_fill_reextend: Load, ZeroFill, TruncateThenReextend, true;
    user_store_zero_fill_to_zero: Store, ZeroFill, ToZero, true;
    user_store_zero_fill_below_page: Store, ZeroFill, BelowAccessedPage, true;
    user_store_zero_fill_unlink_recreate: Store, ZeroFill, UnlinkAndRecreate, true;
    user_store_zero_fill_reextend: Store, ZeroFill, TruncateThenReextend, true;
    user_load_stop_to_zero: Load, Stop, ToZero, true;
    user_load_stop_below_page: Load, Stop, BelowAccessedPage, true;
    user_load_stop_unlink_recreate: Load, Stop, UnlinkAndRecreate, true;
    user_load_stop_reextend: Load, Stop, TruncateThenReextend, true;
    user_store_stop_to_zero: Store, Stop, ToZero, true;
    user_store_stop_below_page: Store, Stop, BelowAccessedPage, true;
    user_store_stop_unlink_recreate: Store, Stop, UnlinkAndRecreate, true;
    user_store_stop_reextend: Store, Stop, TruncateThenReextend, true;
}

// Kernel mode: what Linux can recover from. A kernel access to a lost page is a machine check
// (recoverable where the kernel copies with an exception-table fix-up, as for user copies and
// DAX reads), zero pages, or a VMM stop; never an apf error (the proposal panics on one).
cells! {
    kernel_load_mce_to_zero: Load, Mce, ToZero, false;
    kernel_load_mce_below_page: Load, Mce, BelowAccessedPage, false;
    kernel_load_mce_unlink_recreate: Load, Mce, UnlinkAndRecreate, false;
    kernel_load_mce_reextend: Load, Mce, TruncateThenReextend, false;
    kernel_store_mce_to_zero: Store, Mce, ToZero, false;
    kernel_store_mce_below_page: Store, Mce, BelowAccessedPage, false;
    kernel_store_mce_unlink_recreate: Store, Mce, UnlinkAndRecreate, false;
    kernel_store_mce_reextend: Store, Mce, TruncateThenReextend, false;
    kernel_load_zero_fill_to_zero: Load, ZeroFill, ToZero, false;
    kernel_load_zero_fill_below_page: Load, ZeroFill, BelowAccessedPage, false;
    kernel_load_zero_fill_unlink_recreate: Load, ZeroFill, UnlinkAndRecreate, false;
    kernel_load_zero_fill_reextend: Load, ZeroFill, TruncateThenReextend, false;
    kernel_store_zero_fill_to_zero: Store, ZeroFill, ToZero, false;
    kernel_store_zero_fill_below_page: Store, ZeroFill, BelowAccessedPage, false;
    kernel_store_zero_fill_unlink_recreate: Store, ZeroFill, UnlinkAndRecreate, false;
    kernel_store_zero_fill_reextend: Store, ZeroFill, TruncateThenReextend, false;
    kernel_load_stop_to_zero: Load, Stop, ToZero, false;
    kernel_load_stop_below_page: Load, Stop, BelowAccessedPage, false;
    kernel_load_stop_unlink_recreate: Load, Stop, UnlinkAndRecreate, false;
    kernel_load_stop_reextend: Load, Stop, TruncateThenReextend, false;
    kernel_store_stop_to_zero: Store, Stop, ToZero, false;
    kernel_store_stop_below_page: Store, Stop, BelowAccessedPage, false;
    kernel_store_stop_unlink_recreate: Store, Stop, UnlinkAndRecreate, false;
    kernel_store_stop_reextend: Store, Stop, TruncateThenReextend, false;
}

macro_rules! efault_cells {
    ($($name:ident: $access:ident, $guest:ident, $trunc:ident;)*) => {$(
        #[test]
        fn $name() {
            in_child(stringify!($name), || {
                check_efault_cell(GuestAccess::$access, Guest::$guest, Truncation::$trunc)
            });
        }
    )*};
}

// Kernel mode as stock KVM with EPT/NPT exits: a bare EFAULT, the address decoded.
efault_cells! {
    efault_load_mce_to_zero: Load, Mce, ToZero;
    efault_load_mce_below_page: Load, Mce, BelowAccessedPage;
    efault_store_mce_to_zero: Store, Mce, ToZero;
    efault_store_mce_below_page: Store, Mce, BelowAccessedPage;
    efault_load_zero_fill_to_zero: Load, ZeroFill, ToZero;
    efault_load_zero_fill_below_page: Load, ZeroFill, BelowAccessedPage;
    efault_store_zero_fill_to_zero: Store, ZeroFill, ToZero;
    efault_store_zero_fill_below_page: Store, ZeroFill, BelowAccessedPage;
    efault_load_stop_to_zero: Load, Stop, ToZero;
    efault_load_stop_below_page: Load, Stop, BelowAccessedPage;
    efault_store_stop_to_zero: Store, Stop, ToZero;
    efault_store_stop_below_page: Store, Stop, BelowAccessedPage;
}

/// Opted in without SEND_ALWAYS: a kernel-mode access goes to the fallback (mce).
#[test]
fn kernel_access_without_send_always_falls_back_to_mce() {
    in_child(
        "kernel_access_without_send_always_falls_back_to_mce",
        || {
            let mut s = scenario(GuestAccess::Load, Guest::OptedIn, Truncation::ToZero, false);
            s.send_always = false;
            let r = run(&s);
            assert!(r.guest.opted_in.is_some());
            let [rep] = r.reports.as_slice() else {
                panic!("{:?}", r.reports)
            };
            assert_eq!(rep.action, ActionTaken::MachineCheck { bank: 9 });
            assert_eq!(
                rep.fallback_reason.as_deref(),
                Some("kernel-mode access without SEND_ALWAYS")
            );
            assert_eq!(r.guest.page_fault, None);
            assert_eq!(r.guest.sigbus, Some(2));
        },
    );
}

/// `mce` policy but the guest left CR4.MCE clear: the next policy (zero-fill) applies.
#[test]
fn mce_without_cr4_mce_degrades_to_zero_fill() {
    in_child("mce_without_cr4_mce_degrades_to_zero_fill", || {
        let mut s = scenario(GuestAccess::Load, Guest::Mce, Truncation::ToZero, false);
        s.guest_mce = false;
        let r = run(&s);
        let [rep] = r.reports.as_slice() else {
            panic!("{:?}", r.reports)
        };
        assert!(
            matches!(rep.action, ActionTaken::ZeroFill { .. }),
            "{rep:?}"
        );
        assert!(
            rep.fallback_reason
                .as_deref()
                .is_some_and(|f| f.contains("CR4.MCE")),
            "{rep:?}"
        );
        assert_eq!(r.guest.value, Some(0));
        assert!(r.guest.done);
    });
}

/// Feature not advertised: a guest that would opt in sees the bit clear and does not register.
#[test]
fn unadvertised_feature_is_not_registered() {
    in_child("unadvertised_feature_is_not_registered", || {
        let mut s = scenario(GuestAccess::Load, Guest::OptedIn, Truncation::ToZero, false);
        s.feature_bit = None;
        let r = run(&s);
        let eax = r.guest.cpuid_eax.expect("guest read CPUID");
        assert_eq!(eax & (1 << DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT), 0);
        assert_eq!(r.guest.opted_in, None);
        assert_eq!(
            r.counters.msr_traps, 0,
            "apf MSRs are not trapped without the feature"
        );
        let [rep] = r.reports.as_slice() else {
            panic!("{:?}", r.reports)
        };
        assert_eq!(
            rep.fallback_reason.as_deref(),
            Some("apf error feature not advertised")
        );
    });
}

/// No truncation at all: the glue adds no ioctl to any exit.
#[test]
fn fault_free_run_adds_no_ioctl() {
    in_child("fault_free_run_adds_no_ioctl", || {
        let s = scenario(GuestAccess::Load, Guest::Mce, Truncation::None, false);
        let r = run(&s);
        assert_eq!(r.guest.value, Some(original_word(ACCESS_OFFSET)));
        assert!(r.reports.is_empty());
        assert!(r.runs > 3, "the guest exited for its port writes");
        assert_eq!(r.ioctls, r.runs);
    });
}

/// User-mode (CPL 3) accesses. On this host KVM never exits for them: with apf registered its own
/// async PF retries the page forever, without apf it retries silently. The glue fences the lost
/// range (at the guest's ACK, or at a kick) so the retry exits to it, as a bare EFAULT here, whose
/// address the glue recovers by decoding the faulting instruction.
fn check_user(access: GuestAccess, opt_in: bool, stock_apf: bool, policy: FallbackPolicy) {
    let mut s = scenario(
        access,
        if opt_in { Guest::OptedIn } else { Guest::Mce },
        Truncation::ToZero,
        true,
    );
    s.user_mode = true;
    s.send_always = false;
    s.stock_apf = stock_apf;
    s.policy = policy;
    let r = run(&s);
    let g = &r.guest;
    assert_eq!(g.exception, None, "{g:?}");
    let [rep] = r.reports.as_slice() else {
        panic!("one report expected: {:?} {:?}", r.reports, g)
    };
    assert_eq!(rep.guest_mode, GuestMode::User);
    assert_eq!(rep.file_size_now, Some(0));
    let gpa = layout::WINDOW_GPA + ACCESS_OFFSET;
    // Exact address: from an MMIO exit, or decoded from the instruction after a bare EFAULT.
    assert_eq!(rep.gpa, Some(gpa), "{rep:?}");
    assert_eq!(rep.window_offset, ACCESS_OFFSET);
    let want_access = if access == GuestAccess::Load {
        Access::Read
    } else {
        Access::Write
    };
    assert_eq!(rep.access, want_access);
    let rips = [r.access_rip as u32];
    for &(t, f) in &g.ready {
        let ours = matches!(rep.action, ActionTaken::ApfError { token } if token == t);
        let kvm = t == BROADCAST_TOKEN || vfsdax_protocol::apf::is_kvm_token_of(t, 0);
        assert!(ours || (kvm && f == 0), "stray 'page ready' {t:#x}/{f}");
    }
    match rep.action {
        ActionTaken::ApfError { token } => {
            assert!(opt_in);
            let (flags, cr2, rip) = g.page_fault.expect("#PF");
            assert_eq!((flags, cr2), (1, token));
            assert!(
                rips.contains(&rip),
                "RIP {rip:#x} vs access at {:#x}",
                r.access_rip
            );
            assert!(g.ready.contains(&(token, KVM_PV_REASON_PAGE_ERROR)));
            assert_eq!(g.sigbus, Some(1));
        }
        ActionTaken::MachineCheck { bank: 9 } => {
            assert!(!opt_in && policy == FallbackPolicy::Mce);
            let (addr, _, _, rip) = g.machine_check.expect("#MC");
            assert_eq!(addr, gpa, "MCi_ADDR is the faulting GPA");
            assert!(rips.contains(&rip));
            assert_eq!(g.sigbus, Some(2));
        }
        ActionTaken::ZeroFill { .. } => {
            assert_eq!(policy, FallbackPolicy::ZeroFill);
            let want = if access == GuestAccess::Load {
                0
            } else {
                STORE_VALUE
            };
            assert_eq!(g.value, Some(want));
        }
        other => panic!("unexpected action {other:?}"),
    }
    assert!(g.done);
}

macro_rules! user_cells {
    ($($name:ident: $access:ident, $opt_in:expr, $stock:expr, $policy:ident;)*) => {$(
        #[test]
        fn $name() {
            in_child(stringify!($name), || {
                check_user(GuestAccess::$access, $opt_in, $stock, FallbackPolicy::$policy)
            });
        }
    )*};
}

user_cells! {
    user_load_apf: Load, true, false, Mce;
    user_store_apf: Store, true, false, Mce;
    user_load_stock_apf_mce: Load, false, true, Mce;
    user_store_stock_apf_zero_fill: Store, false, true, ZeroFill;
    user_load_no_apf_mce: Load, false, false, Mce;
    user_store_no_apf_mce: Store, false, false, Mce;
}

/// A guest bug: the accessed half of the mapping is removed from the window before the access.
fn check_unmapped(access: GuestAccess, user: bool, opt_in: bool) {
    let mut s = scenario(
        access,
        if opt_in { Guest::OptedIn } else { Guest::Mce },
        Truncation::UnmapBeforeAccess,
        user,
    );
    s.user_mode = user;
    s.send_always = !user;
    let r = run(&s);
    let g = &r.guest;
    assert!(
        r.stop.is_none(),
        "a guest bug does not stop the VM: {:?}",
        r.stop
    );
    assert!(!r.reports.is_empty(), "{g:?}");
    let gpa = layout::WINDOW_GPA + ACCESS_OFFSET;
    for rep in &r.reports {
        assert_eq!(rep.kind, FaultKind::UnmappedWindowAccess);
        assert_eq!(rep.gpa, Some(gpa));
        assert_eq!(rep.file, None);
        assert_eq!(
            rep.guest_mode,
            if user {
                GuestMode::User
            } else {
                GuestMode::Kernel
            }
        );
    }
    match r.reports[0].action {
        // Kernel mode exits as MMIO here: loads read all-ones, stores are dropped.
        ActionTaken::UnclaimedMmio => {
            assert_eq!(g.value, Some(u64::MAX));
            assert!(g.done && g.stage == 3);
        }
        ActionTaken::ApfError { token } => {
            assert!(opt_in);
            assert!(g.ready.contains(&(token, KVM_PV_REASON_PAGE_ERROR)));
            assert_eq!(g.sigbus, Some(1));
        }
        ActionTaken::MachineCheck { .. } => {
            assert_eq!(g.machine_check.map(|m| m.0), Some(gpa));
            assert_eq!(g.sigbus, Some(2));
        }
        other => panic!("unexpected action {other:?}"),
    }
    assert!(g.done);
}

macro_rules! unmapped_cells {
    ($($name:ident: $access:ident, $user:expr, $opt_in:expr;)*) => {$(
        #[test]
        fn $name() {
            in_child(stringify!($name), || check_unmapped(GuestAccess::$access, $user, $opt_in));
        }
    )*};
}

unmapped_cells! {
    unmapped_kernel_load: Load, false, false;
    unmapped_kernel_store: Store, false, false;
    unmapped_user_load_mce: Load, true, false;
    unmapped_user_store_apf: Store, true, true;
}

/// Zero-fill gives the guest the lost page to keep: its store into the zero page survives the
/// fence scan of a later kick, and its next load of the page (a second run from the guest's
/// read-back load) reads that store, without another fault or zero-fill.
#[test]
fn zero_filled_store_survives_a_kick() {
    in_child("zero_filled_store_survives_a_kick", || {
        let s = scenario(
            GuestAccess::Store,
            Guest::ZeroFill,
            Truncation::ToZero,
            false,
        );
        let mut local = LocalFile::create(&s.file).expect("backing file");
        let setup = VmSetup {
            feature_bit: s.feature_bit,
            policy: s.policy,
            window_size: WINDOW_SIZE,
        };
        let cfg = GuestConfig {
            access: GuestAccess::Store,
            opt_in: false,
            send_always: s.send_always,
            stock_apf: false,
            enable_mce: s.guest_mce,
            interrupts: true,
            user_mode: false,
            feature_bit: DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
            baseline_offset: BASELINE_OFFSET,
            access_offset: ACCESS_OFFSET,
            store_value: STORE_VALUE,
        };
        let mut vm = ReferenceVm::with_window(&setup, &cfg, local.window()).expect("VM");
        // Run 1: baseline load, truncation, the store (zero-filled) and its read-back.
        let mut first = GuestObservation::default();
        let mut truncated = false;
        let out = vm
            .run(GUEST_BOUND, |p, v| {
                first.record(p, v);
                if p == port::STAGE && v == 2 {
                    truncated = local.mutate(Truncation::ToZero).is_ok();
                }
                p != port::DONE
            })
            .expect("first run");
        assert!(truncated, "the host truncated the file");
        assert_eq!(first.exception, None, "{first:?}");
        assert!(first.done, "{first:?}");
        let [rep] = out.reports.as_slice() else {
            panic!("one report expected: {:?}", out.reports)
        };
        assert!(
            matches!(rep.action, ActionTaken::ZeroFill { .. }),
            "{rep:?}"
        );
        assert_eq!(first.value, Some(STORE_VALUE), "the store's read-back");
        // A kick: the handler scans for lost ranges again (past its scan interval).
        std::thread::sleep(KICK_INTERVAL);
        let v = &mut vm.vcpus[0];
        let fenced_before = v.handler.counters().fenced;
        let kicked = v
            .handler
            .handle(&mut v.vcpu, &Exit::Interrupted, Instant::now());
        assert!(matches!(kicked, Ok(Handled::NotMine)), "{kicked:?}");
        assert_eq!(
            v.handler.counters().fenced,
            fenced_before,
            "the kick fenced the zero-filled page"
        );
        // Run 2: the guest loads the page again, from its read-back load.
        let mut regs = v.vcpu.snapshot().regs;
        regs.rip = v.image.access_rip + STORE_LEN;
        regs.rbx = layout::WINDOW_GPA + ACCESS_OFFSET;
        v.vcpu.stage_regs(&regs);
        let mut second = GuestObservation::default();
        let out = vm
            .run(GUEST_BOUND, |p, v| {
                second.record(p, v);
                p != port::DONE
            })
            .expect("second run");
        assert_eq!(second.exception, None, "{second:?}");
        assert!(second.done, "{second:?}");
        assert_eq!(
            second.value,
            Some(STORE_VALUE),
            "the guest reads its own store back, not a fresh zero page"
        );
        assert!(out.reports.is_empty(), "no second fault: {:?}", out.reports);
        assert!(out.stop.is_none());
        let c = vm.vcpus[0].handler.counters();
        assert_eq!(c.zero_fills, 1, "{c:?}");
        assert_eq!(
            local.file_after().expect("file after").len,
            0,
            "zero-fill did not grow the file"
        );
    });
}
