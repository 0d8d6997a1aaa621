//! Report latency of a truncated DAX page on real KVM: from the faulting exit to the guest's
//! handler running (its first `out`), for the apf-error path and the machine-check path, next to
//! a plain exit round trip (two back-to-back guest `out`s, before the fault and inside the
//! handler) measured in the same runs. Printed as
//! medians and ratios; absolute numbers vary a lot between hosts (nested KVM here), ratios less.
//!
//! Run: `cargo bench -p vfsdax-vmm-glue --bench fault_latency` (iterations: `VFSDAX_BENCH_ITERS`,
//! default 200; each iteration is a fresh VM, only the in-guest intervals are timed).

use std::path::Path;
use std::time::{Duration, Instant};

use vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT;
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::guest::{port, GuestAccess};
use vfsdax_vmm_glue::kvm::scenario::{run_scenario, Scenario, ScenarioResult, Truncation};

#[derive(Clone, Copy, PartialEq, Eq)]
enum FaultPath {
    Apf,
    Mce,
}

fn at(r: &ScenarioResult, p: u16) -> Option<Instant> {
    r.port_log.iter().find(|e| e.0 == p).map(|e| e.2)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Samples {
    plain: Vec<Duration>,
    to_handler: Vec<Duration>,
    report: Vec<Duration>,
}

fn measure(path: FaultPath, iters: usize, dir: &Path) -> Samples {
    let mut s = Samples {
        plain: Vec::new(),
        to_handler: Vec::new(),
        report: Vec::new(),
    };
    for _ in 0..iters {
        let scenario = Scenario {
            access: GuestAccess::Load,
            opt_in: path == FaultPath::Apf,
            send_always: true,
            guest_mce: true,
            feature_bit: Some(DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
            policy: FallbackPolicy::Mce,
            truncation: Truncation::ToZero,
            file: dir.join("backing"),
            timeout: Duration::from_secs(10),
        };
        let r = match run_scenario(&scenario) {
            Ok(r) => r,
            Err(e) => panic!("scenario failed: {e}"),
        };
        let handler_port = if path == FaultPath::Apf {
            port::PF_FLAGS
        } else {
            port::MC_ADDR_LO
        };
        let (Some(lo), Some(hi), Some(h), Some(&fault), Some(rep)) = (
            at(&r, port::BASE_LO),
            at(&r, port::BASE_HI),
            at(&r, handler_port),
            r.report_exit_at.first(),
            r.reports.first(),
        ) else {
            panic!("incomplete run: {:?} {:?}", r.guest, r.reports)
        };
        s.plain.push(hi - lo);
        s.to_handler.push(h - fault);
        s.report.push(Duration::from_nanos(rep.latency_ns));
    }
    s
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        println!("fault_latency: skipped, /dev/kvm does not exist");
        return;
    }
    let iters = std::env::var("VFSDAX_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize);
    let dir = std::env::temp_dir().join(format!("vfsdax-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let apf = measure(FaultPath::Apf, iters, &dir);
    let mce = measure(FaultPath::Mce, iters, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut plain = apf.plain.clone();
    plain.extend(mce.plain.iter().copied());
    let plain = median(plain);
    println!("fault_latency: {iters} faults per path, medians");
    println!(
        "  plain exit round trip (out -> out)          {:8.1} us   1.00x",
        us(plain)
    );
    for (name, s) in [("apf error", apf), ("machine check", mce)] {
        let h = median(s.to_handler);
        let r = median(s.report);
        println!(
            "  {name:<14} fault exit -> guest handler   {:8.1} us  {:5.2}x   (glue work before re-entry {:6.1} us, {:4.2}x)",
            us(h),
            h.as_secs_f64() / plain.as_secs_f64(),
            us(r),
            r.as_secs_f64() / plain.as_secs_f64()
        );
    }
}
