//! Rendering a run: fault reports as JSON lines, the run summary as JSON, and a readable account
//! of what the guest saw and what the VMM reported (pure functions).

use vfsdax_protocol::apf::{
    KVM_ASYNC_PF_SEND_ALWAYS, KVM_ASYNC_PF_SEND_ERROR, KVM_PV_REASON_PAGE_ERROR,
};
use vfsdax_protocol::report::{Access, ActionTaken, FaultReport};

use crate::guest::{layout, GuestAccess, GuestObservation};
use crate::scenario::{Scenario, ScenarioResult, ACCESS_OFFSET, BASELINE_OFFSET};

use super::MappedFile;

/// Every report of `r` (the stop's last) as one JSON line each.
pub fn report_lines(r: &ScenarioResult) -> Result<Vec<String>, serde_json::Error> {
    r.reports
        .iter()
        .chain(r.stop.as_ref().map(|d| &d.report))
        .map(serde_json::to_string)
        .collect()
}

/// The run summary: what the guest reported, the handler's counters, ioctls and runs.
pub fn summary(r: &ScenarioResult) -> serde_json::Value {
    let g = &r.guest;
    let c = r.counters;
    serde_json::json!({
        "guest": {
            "stage": g.stage,
            "opted_in": g.opted_in,
            "baseline": g.baseline,
            "value": g.value,
            "page_fault": g.page_fault,
            "ready": g.ready,
            "machine_check": g.machine_check,
            "sigbus": g.sigbus,
            "exception": g.exception,
            "done": g.done,
        },
        "counters": {
            "apf_errors": c.apf_errors,
            "machine_checks": c.machine_checks,
            "zero_fills": c.zero_fills,
            "stops": c.stops,
            "unclaimed": c.unclaimed,
            "retries": c.retries,
            "msr_traps": c.msr_traps,
            "deferred_ready": c.deferred_ready,
            "fenced": c.fenced,
        },
        "ioctls": r.ioctls,
        "runs": r.runs,
    })
}

/// `v` as hex, followed by its bytes as text when they are all printable ASCII.
pub fn word(v: u64) -> String {
    let bytes = v.to_le_bytes();
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{v:#018x} (\"{}\")", String::from_utf8_lossy(&bytes))
    } else {
        format!("{v:#018x}")
    }
}

/// One fault report in words.
pub fn describe_report(r: &FaultReport) -> String {
    let mut s = format!("{:?} on vCPU {}", r.kind, r.vcpu);
    if let Some(gpa) = r.gpa {
        s += &format!(", GPA {gpa:#x}");
    }
    s += &format!(", window offset {:#x}", r.window_offset);
    if let Some(f) = &r.file {
        s += &format!(
            ", file {} (dev {:#x}, inode {})",
            f.path.as_deref().unwrap_or("<unknown path>"),
            f.dev,
            f.ino
        );
    }
    if let Some(o) = r.file_offset {
        s += &format!(" at offset {o:#x}");
    }
    if let Some(n) = r.file_size_now {
        s += &format!(", file size now {n}");
    }
    let access = match r.access {
        Access::Read => "read",
        Access::Write => "write",
        Access::Unknown => "unknown access",
    };
    s += &format!(", {access} in {:?} mode", r.guest_mode).to_lowercase();
    let action = match r.action {
        ActionTaken::ApfError { token } => format!("apf error (token {token:#x})"),
        ActionTaken::MachineCheck { bank } => format!("machine check (bank {bank})"),
        ActionTaken::ZeroFill { window_offset, len } => {
            format!("zero-fill of window [{window_offset:#x}, +{len:#x})")
        }
        ActionTaken::Stop => "stop".into(),
        ActionTaken::UnclaimedMmio => "unclaimed MMIO".into(),
    };
    s += &format!("; action: {action}");
    if let Some(why) = &r.fallback_reason {
        s += &format!(" ({why})");
    }
    s + &format!("; reported in {} µs", r.latency_ns / 1000)
}

fn describe_guest(g: &GuestObservation, out: &mut Vec<String>) {
    if let Some(v) = g.opted_in {
        let v = u64::from(v);
        let mut how = Vec::new();
        if v & KVM_ASYNC_PF_SEND_ERROR != 0 {
            how.push("SEND_ERROR: it wants apf errors");
        }
        if v & KVM_ASYNC_PF_SEND_ALWAYS != 0 {
            how.push("SEND_ALWAYS");
        }
        out.push(format!(
            "guest: registered for async page faults (MSR_KVM_ASYNC_PF_EN = {v:#x}; {})",
            if how.is_empty() {
                "plain".to_string()
            } else {
                how.join(", ")
            }
        ));
    } else {
        out.push("guest: did not register for async page faults (not opted in)".into());
    }
    if let Some(b) = g.baseline {
        out.push(format!(
            "guest: loaded window offset {BASELINE_OFFSET:#x} through DAX: {}",
            word(b)
        ));
    }
}

fn describe_outcome(s: &Scenario, g: &GuestObservation, out: &mut Vec<String>) {
    let verb = match s.access {
        GuestAccess::Load => "loads from",
        GuestAccess::Store => "stores to",
        GuestAccess::HostDriven => "accesses",
    };
    out.push(format!(
        "guest: {verb} window offset {ACCESS_OFFSET:#x} (GPA {:#x}) again",
        layout::WINDOW_GPA + ACCESS_OFFSET
    ));
    if let Some((flags, cr2, _)) = g.page_fault {
        out.push(format!(
            "guest #PF handler: apf flags {flags:#x} (page not present), token {cr2:#x} in CR2: \
             the task sleeps on it"
        ));
    }
    for &(token, flags) in &g.ready {
        if flags & KVM_PV_REASON_PAGE_ERROR != 0 {
            out.push(format!(
                "guest 'page ready' handler: token {token:#x} with PAGE_ERROR: the page is gone"
            ));
        }
    }
    if let Some((addr, status_hi, mcg, _)) = g.machine_check {
        out.push(format!(
            "guest #MC handler: MCi_ADDR = {addr:#x}, MCi_STATUS[63:32] = {status_hi:#x}, \
             MCG_STATUS = {mcg:#x}"
        ));
    }
    match g.sigbus {
        Some(1) => out.push(
            "guest: SIGBUS for the one task that touched the page (apf error); the guest runs on"
                .into(),
        ),
        Some(2) => out.push(
            "guest: the task that touched the page is killed (machine check, memory failure); \
             the guest runs on"
                .into(),
        ),
        Some(other) => out.push(format!("guest: task killed (reason {other})")),
        None => {}
    }
    if let Some(v) = g.value {
        let what = match s.access {
            GuestAccess::Load | GuestAccess::HostDriven => "the load returned",
            GuestAccess::Store => "the store read back",
        };
        out.push(format!("guest: {what} {}", word(v)));
    }
    if let Some(v) = g.exception {
        out.push(format!("guest: unexpected exception, vector {v}"));
    }
    if g.done {
        out.push("guest: finished".into());
    }
}

/// A readable account of a run: where the mapping came from, what the guest saw before and after
/// the change (`change` says what changed), the fault reports and how the run ended.
pub fn explain(
    s: &Scenario,
    r: &ScenarioResult,
    mapped: Option<&MappedFile>,
    change: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    match mapped {
        Some(m) => out.push(format!(
            "vfsdaxd: SETUPMAPPING(fh=-1) mapped {} (dev {:#x}, inode {}, {} bytes) at DAX window \
             offset {:#x}, {:#x} bytes, through SHMEM_MAP into the VMM's window (GPA {:#x})",
            m.host_path.as_deref().unwrap_or("the file"),
            m.identity.dev,
            m.identity.ino,
            m.size,
            m.moffset,
            m.len,
            layout::WINDOW_GPA + m.moffset
        )),
        None => out.push(format!(
            "VMM: mapped {} at DAX window offset 0 (GPA {:#x}) itself",
            s.file.display(),
            layout::WINDOW_GPA
        )),
    }
    let g = &r.guest;
    describe_guest(g, &mut out);
    out.push(format!("then: {change}"));
    describe_outcome(s, g, &mut out);
    for rep in r.reports.iter() {
        out.push(format!("VMM report: {}", describe_report(rep)));
    }
    if let Some(d) = &r.stop {
        out.push(format!("VMM: VM stopped: {d}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::FileAfter;
    use vfsdax_protocol::report::{FaultKind, FileRef, GuestMode};
    use vfsdax_vmm_glue::kvm::{FaultCounters, StopDiagnostic};

    fn report() -> FaultReport {
        FaultReport {
            time_unix_ns: 1,
            vcpu: 0,
            kind: FaultKind::TruncatedPage,
            gpa: Some(0x4000_2010),
            window_offset: 0x2010,
            file: Some(FileRef {
                dev: 0xfe00,
                ino: 42,
                path: Some("/srv/share/data.txt".into()),
            }),
            file_offset: Some(0x2010),
            file_size_now: Some(0),
            access: Access::Read,
            guest_mode: GuestMode::Kernel,
            action: ActionTaken::ApfError { token: 0xfff },
            fallback_reason: None,
            latency_ns: 38_000,
        }
    }

    fn result(guest: GuestObservation, stop: Option<StopDiagnostic>) -> ScenarioResult {
        ScenarioResult {
            guest,
            reports: vec![report()],
            stop,
            counters: FaultCounters::default(),
            ioctls: 0,
            runs: 0,
            access_rip: 0,
            file_after: FileAfter {
                len: 0,
                word_at_access: None,
            },
            port_log: Vec::new(),
            report_exit_at: Vec::new(),
            efaults: 0,
        }
    }

    fn scenario() -> Scenario {
        Scenario {
            access: GuestAccess::Load,
            opt_in: true,
            stock_apf: false,
            send_always: true,
            guest_mce: true,
            user_mode: false,
            feature_bit: Some(16),
            policy: vfsdax_vmm_glue::fault::FallbackPolicy::Mce,
            truncation: crate::scenario::Truncation::ToZero,
            file: "/srv/share/data.txt".into(),
            timeout: std::time::Duration::from_secs(1),
            efault_exits: false,
        }
    }

    #[test]
    fn an_apf_error_run_tells_the_guest_story_in_order() {
        let g = GuestObservation {
            stage: 2,
            opted_in: Some(0x901b),
            baseline: Some(u64::from_le_bytes(*b"hello, w")),
            page_fault: Some((1, 0xfff, 0x10000)),
            ready: vec![(u32::MAX, 0), (0xfff, 1)],
            sigbus: Some(1),
            done: true,
            ..GuestObservation::default()
        };
        let lines = explain(&scenario(), &result(g, None), None, "the host truncates it");
        let text = lines.join("\n");
        let order = [
            "mapped /srv/share/data.txt",
            "SEND_ERROR",
            "\"hello, w\"",
            "then: the host truncates it",
            "loads from window offset 0x2010 (GPA 0x40002010)",
            "token 0xfff in CR2",
            "token 0xfff with PAGE_ERROR",
            "SIGBUS",
            "finished",
            "VMM report: TruncatedPage",
        ];
        let mut at = 0;
        for want in order {
            let i = text[at..]
                .find(want)
                .unwrap_or_else(|| panic!("{want:?} missing or out of order in:\n{text}"));
            at += i;
        }
        assert_eq!(lines.iter().filter(|l| l.contains("PAGE_ERROR")).count(), 1);
    }

    #[test]
    fn a_stopped_run_ends_with_the_diagnostic() {
        let g = GuestObservation {
            stage: 2,
            ..GuestObservation::default()
        };
        let mut rep = report();
        rep.action = ActionTaken::Stop;
        let d = StopDiagnostic {
            report: rep,
            reason: "stopping".into(),
        };
        let lines = explain(&scenario(), &result(g, Some(d)), None, "x");
        let last = lines.last().expect("lines");
        assert!(last.starts_with("VMM: VM stopped: vCPU 0 read guest-physical address 0x40002010"));
        assert!(!lines.iter().any(|l| l.contains("finished")));
    }

    #[test]
    fn words_show_text_when_printable() {
        assert_eq!(
            word(u64::from_le_bytes(*b"hello, w")),
            "0x77202c6f6c6c6568 (\"hello, w\")"
        );
        assert_eq!(word(0x0f11_e000_0000_0008), "0x0f11e00000000008");
    }

    #[test]
    fn a_report_names_file_offset_size_and_action() {
        let s = describe_report(&report());
        for want in [
            "GPA 0x40002010",
            "window offset 0x2010",
            "/srv/share/data.txt (dev 0xfe00, inode 42)",
            "at offset 0x2010",
            "file size now 0",
            "read in kernel mode",
            "apf error (token 0xfff)",
            "38 µs",
        ] {
            assert!(s.contains(want), "{want:?} missing from {s:?}");
        }
    }
}
