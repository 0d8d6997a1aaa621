//! `vfsdax-vmm`: the reference VMM. For now it maps a local backing file into the DAX window
//! itself (a later step gets the mapping from `vfsdaxd`), runs the hand-written test guest on
//! KVM, changes the file under the mapping as asked, and reports every DAX fault as a JSON line.
//!
//! Exit status: 0 when the guest finished, 2 when the `stop` policy stopped the VM (the
//! diagnostic is printed), 1 on any other error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::guest::GuestAccess;
use vfsdax_vmm_glue::kvm::scenario::{run_scenario, Scenario, Truncation};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccessArg {
    Load,
    Store,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    Mce,
    ZeroFill,
    Stop,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TruncArg {
    None,
    ToZero,
    BelowPage,
    UnlinkRecreate,
    Reextend,
    Unmap,
}

/// Reference VMM for vfsdax DAX fault handling on KVM.
#[derive(Debug, Parser)]
#[command(name = "vfsdax-vmm", version)]
struct Args {
    /// Backing file to create and map into the DAX window (it is overwritten).
    #[arg(long)]
    file: PathBuf,
    /// What the guest does through the window after the host changed the file.
    #[arg(long, value_enum, default_value = "load")]
    access: AccessArg,
    /// The guest opts in to apf errors.
    #[arg(long)]
    opt_in: bool,
    /// The guest registers for plain apf like a stock Linux guest (no SEND_ERROR).
    #[arg(long)]
    stock_apf: bool,
    /// When registering, do not set SEND_ALWAYS (kernel-mode faults then use the fallback).
    #[arg(long)]
    no_send_always: bool,
    /// The guest's loads and stores run in user mode (CPL 3).
    #[arg(long)]
    user_mode: bool,
    /// The guest leaves CR4.MCE clear.
    #[arg(long)]
    no_guest_mce: bool,
    /// Fallback policy for guests that did not opt in.
    #[arg(long, value_enum, default_value = "mce")]
    policy: PolicyArg,
    /// CPUID 0x40000001 EAX bit advertising ASYNC_PF_ERROR.
    #[arg(long, default_value_t = vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT)]
    feature_bit: u32,
    /// Do not advertise ASYNC_PF_ERROR at all.
    #[arg(long)]
    no_apf_feature: bool,
    /// What happens to the file between the guest's two accesses.
    #[arg(long, value_enum, default_value = "to-zero")]
    truncation: TruncArg,
    /// Where to write fault reports as JSON lines (default: stdout).
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Bound on the guest run, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let scenario = Scenario {
        access: match args.access {
            AccessArg::Load => GuestAccess::Load,
            AccessArg::Store => GuestAccess::Store,
        },
        opt_in: args.opt_in,
        send_always: !args.no_send_always,
        stock_apf: args.stock_apf,
        guest_mce: !args.no_guest_mce,
        user_mode: args.user_mode,
        feature_bit: (!args.no_apf_feature).then_some(args.feature_bit),
        policy: match args.policy {
            PolicyArg::Mce => FallbackPolicy::Mce,
            PolicyArg::ZeroFill => FallbackPolicy::ZeroFill,
            PolicyArg::Stop => FallbackPolicy::Stop,
        },
        truncation: match args.truncation {
            TruncArg::None => Truncation::None,
            TruncArg::ToZero => Truncation::ToZero,
            TruncArg::BelowPage => Truncation::BelowAccessedPage,
            TruncArg::UnlinkRecreate => Truncation::UnlinkAndRecreate,
            TruncArg::Reextend => Truncation::TruncateThenReextend,
            TruncArg::Unmap => Truncation::UnmapBeforeAccess,
        },
        file: args.file.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let result = match run_scenario(&scenario) {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            log::error!("{msg}");
            return ExitCode::from(1);
        }
    };
    let mut sink: Box<dyn Write> = match &args.reports {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                log::error!("cannot create {}: {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None => Box::new(std::io::stdout()),
    };
    let mut reports: Vec<_> = result.reports.iter().collect();
    if let Some(d) = &result.stop {
        reports.push(&d.report);
    }
    for r in reports {
        match serde_json::to_string(r) {
            Ok(line) => {
                if writeln!(sink, "{line}").is_err() {
                    log::error!("cannot write a fault report");
                    return ExitCode::from(1);
                }
            }
            Err(e) => log::error!("cannot render a fault report: {e}"),
        }
    }
    let g = &result.guest;
    let c = result.counters;
    let summary = serde_json::json!({
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
        "ioctls": result.ioctls,
        "runs": result.runs,
    });
    log::info!("run summary: {summary}");
    if let Some(d) = result.stop {
        eprintln!("vfsdax-vmm: VM stopped: {d}");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
