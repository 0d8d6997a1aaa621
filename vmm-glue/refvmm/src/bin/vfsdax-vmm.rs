//! `vfsdax-vmm`: the reference VMM. It gets its DAX mapping from `vfsdaxd`
//! (`--daemon-socket S --path NAME`: vhost-user frontend, the daemon's `SHMEM_MAP` into the
//! window, the virtio-fs driver's INIT / LOOKUP / OPEN / SETUPMAPPING through virtqueues in guest
//! memory) or maps a local file itself (`--file`), runs the hand-written test guest on KVM,
//! changes the file between the guest's two accesses as asked, and reports every DAX fault as a
//! JSON line. The logic lives in `vfsdax_vmm_glue::refvmm`.
//!
//! Exit status: 0 when the guest finished, 2 when the `stop` policy stopped the VM (the
//! diagnostic is printed), 1 on any other error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vfsdax_refvmm::guest::GuestAccess;
use vfsdax_refvmm::scenario::{Scenario, Truncation};
use vfsdax_refvmm::{self, output, DaemonTarget, Source, TruncateVia};
use vfsdax_vmm_glue::fault::FallbackPolicy;

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
    /// vfsdaxd's vhost-user socket: the daemon maps the file (start it with --cache-size).
    #[arg(long, requires = "path", conflicts_with = "file")]
    daemon_socket: Option<PathBuf>,
    /// With --daemon-socket: the file to map, relative to the share (at least 16 KiB).
    #[arg(long, requires = "daemon_socket")]
    path: Option<String>,
    /// With --daemon-socket: change the file as a host process at this path (the share's file)
    /// instead of through FUSE requests to the daemon.
    #[arg(long, requires = "daemon_socket")]
    truncate_host: Option<PathBuf>,
    /// Without a daemon: backing file to create and map into the DAX window (overwritten).
    #[arg(long, required_unless_present = "daemon_socket")]
    file: Option<PathBuf>,
    /// What the guest does through the window after the file changed.
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
    /// Present every exit on a DAX page as the bare EFAULT a host with EPT/NPT gives (this
    /// host's shadow MMU exits as MMIO): the glue then finds the address by decoding.
    #[arg(long)]
    efault_exits: bool,
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
    /// Print a readable account of the run on stderr.
    #[arg(long)]
    explain: bool,
    /// Bound on the guest run, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn scenario(args: &Args) -> Scenario {
    Scenario {
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
        file: args
            .file
            .clone()
            .or_else(|| args.truncate_host.clone())
            .or_else(|| args.path.clone().map(PathBuf::from))
            .unwrap_or_default(),
        timeout: Duration::from_millis(args.timeout_ms),
        efault_exits: args.efault_exits,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let s = scenario(&args);
    let source = match (&args.daemon_socket, &args.path) {
        (Some(socket), Some(name)) => Source::Daemon(DaemonTarget {
            socket: socket.clone(),
            name: name.clone(),
            truncate: match &args.truncate_host {
                Some(p) => TruncateVia::Host(p.clone()),
                None => TruncateVia::Fuse,
            },
            timeout: Duration::from_secs(5),
        }),
        _ => Source::Local,
    };
    let out = match vfsdax_refvmm::run(&s, &source) {
        Ok(o) => o,
        Err(e) => {
            log::error!("{}", chain(&e));
            return ExitCode::from(1);
        }
    };
    if let Some(e) = &out.close_error {
        log::warn!("closing the daemon connection: {}", chain(e));
    }
    let result = &out.result;
    let lines = match output::report_lines(result) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot render a fault report: {e}");
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
    for line in lines {
        if writeln!(sink, "{line}").is_err() {
            log::error!("cannot write a fault report");
            return ExitCode::from(1);
        }
    }
    if args.explain {
        let via = match &source {
            Source::Daemon(t) => Some(&t.truncate),
            Source::Local => None,
        };
        let change = vfsdax_refvmm::describe_truncation(s.truncation, via);
        for line in output::explain(&s, result, out.mapped.as_ref(), &change) {
            eprintln!("  {line}");
        }
    }
    log::info!("run summary: {}", output::summary(result));
    if let Some(d) = &result.stop {
        eprintln!("vfsdax-vmm: VM stopped: {d}");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
