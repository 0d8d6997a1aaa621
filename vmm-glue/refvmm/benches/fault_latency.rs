//! Report latency of a truncated DAX page on real KVM: from the faulting exit to the guest's
//! handler running (its first `out`), for the apf-error path and the machine-check path, next to
//! a plain exit round trip (two back-to-back guest `out`s inside the handler, so in the same warm
//! state as the fault path) measured in the same runs. Printed as
//! medians and ratios; absolute numbers vary a lot between hosts (nested KVM here), ratios less.
//!
//! Run: `cargo bench -p vfsdax-refvmm --bench fault_latency` (iterations: `VFSDAX_BENCH_ITERS`,
//! default 200; each iteration is a fresh VM, only the in-guest intervals are timed;
//! `VFSDAX_BENCH_DUMP=1` prints every port write's time relative to the fault exit).

use std::path::Path;
use std::time::{Duration, Instant};

use vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT;
use vfsdax_refvmm::guest::{port, GuestAccess};
use vfsdax_refvmm::scenario::{run_scenario, Scenario, ScenarioResult, Truncation};
use vfsdax_vmm_glue::fault::FallbackPolicy;

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
    cold: Vec<Duration>,
    plain: Vec<Duration>,
    to_handler: Vec<Duration>,
    report: Vec<Duration>,
}

fn measure(path: FaultPath, iters: usize, dir: &Path) -> Samples {
    let mut s = Samples {
        cold: Vec::new(),
        plain: Vec::new(),
        to_handler: Vec::new(),
        report: Vec::new(),
    };
    for _ in 0..iters {
        let scenario = Scenario {
            access: GuestAccess::Load,
            opt_in: path == FaultPath::Apf,
            send_always: true,
            stock_apf: false,
            guest_mce: true,
            user_mode: false,
            feature_bit: Some(DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
            policy: FallbackPolicy::Mce,
            truncation: Truncation::ToZero,
            file: dir.join("backing"),
            timeout: Duration::from_secs(10),
            efault_exits: false,
        };
        let r = match run_scenario(&scenario) {
            Ok(r) => r,
            Err(e) => panic!("scenario failed: {e}"),
        };
        // The handler's first two `out`s are back to back, like the baseline's two.
        let (first, second) = match path {
            FaultPath::Apf => (port::PF_FLAGS, port::PF_CR2),
            FaultPath::Mce => (port::MC_ADDR_LO, port::MC_ADDR_HI),
        };
        let (Some(lo), Some(hi), Some(h), Some(h2), Some(&fault), Some(rep)) = (
            at(&r, port::BASE_LO),
            at(&r, port::BASE_HI),
            at(&r, first),
            at(&r, second),
            r.report_exit_at.first(),
            r.reports.first(),
        ) else {
            panic!("incomplete run: {:?} {:?}", r.guest, r.reports)
        };
        if std::env::var_os("VFSDAX_BENCH_DUMP").is_some() {
            let t0 = fault;
            for (p, v, t) in &r.port_log {
                eprintln!(
                    "port {p:#x} value {v:#x} at {:?} after the fault exit",
                    t.checked_duration_since(t0)
                );
            }
        }
        s.cold.push(hi - lo);
        s.plain.push(h2 - h);
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
    let both = |f: fn(&Samples) -> &Vec<Duration>| {
        median(f(&apf).iter().chain(f(&mce)).copied().collect())
    };
    let plain = both(|s| &s.plain);
    let cold = both(|s| &s.cold);
    println!("fault_latency: {iters} faults per path, medians");
    println!(
        "  plain exit round trip (out -> out)          {:8.1} us   1.00x",
        us(plain)
    );
    println!(
        "  (same, first exits of a fresh VM            {:8.1} us  {:5.2}x)",
        us(cold),
        cold.as_secs_f64() / plain.as_secs_f64()
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
