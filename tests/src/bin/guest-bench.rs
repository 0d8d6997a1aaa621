//! guest-bench: times a few file-system workloads in a real Linux guest (QEMU TCG, Debian
//! kernel, busybox; tests/guest/bench.sh) over virtio-fs served by `vfsdaxd` and by the
//! reference `virtiofsd`, alternating the two for a number of rounds, and prints the medians and
//! the ratio vfsdaxd/virtiofsd. Both daemons get the same flags (`--cache auto --sandbox none
//! --seccomp none`, no `--tag`) and a fresh share on tmpfs for each run.
//!
//! Times are the guest's (`/proc/uptime`, 10 ms resolution); compare the ratios of one run, not
//! absolute figures across runs. Run through `scripts/bench-guest.sh`, which builds a release
//! `vfsdaxd` and installs `virtiofsd` first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::serial::SerialReport;
use vfsdax_tests::guest::tool::{median, program_version};
use vfsdax_tests::guest::{daemon, run_guest, tool, GuestSetup, Mode, RunOptions};
use vfsdax_tests::harness::error_chain;

const USAGE: &str =
    "usage: guest-bench [--rounds N] [--vfsdaxd PATH] [--virtiofsd PATH] [--share-in DIR]
  --rounds N        rounds, each running vfsdaxd then virtiofsd once (default 3)
  --vfsdaxd PATH    our daemon (default: $VFSDAX_DAEMON, else vfsdaxd next to this program)
  --virtiofsd PATH  the reference daemon (default: on PATH or in ~/.cargo/bin; if there is
                    none, only vfsdaxd is measured)
  --share-in DIR    where each run's fresh share is made (default /dev/shm: tmpfs)";

/// The steps bench.sh reports, `mount` (from /init) first; the rest are the timed workloads.
const STEPS: [&str; 6] = ["mount", "write", "read", "create", "stat", "remove"];

/// What each workload of tests/guest/bench.sh does, for the table.
const DESCRIPTIONS: [(&str, &str); 5] = [
    ("write", "dd write 64 MiB + fsync"),
    ("read", "dd read 64 MiB (cold)"),
    ("create", "create 2,000 files"),
    ("stat", "ls -l 2,000 files (cold)"),
    ("remove", "rm 2,000 files"),
];

/// The `--cache` mode both daemons get.
const CACHE: &str = "auto";

fn workloads() -> &'static [&'static str] {
    &STEPS[1..]
}

struct Args {
    rounds: usize,
    vfsdaxd: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    share_in: PathBuf,
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Args, String> {
    let mut out = Args {
        rounds: 3,
        vfsdaxd: None,
        virtiofsd: None,
        share_in: "/dev/shm".into(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.to_str() {
            Some("--rounds") => {
                let v = value("--rounds")?;
                out.rounds = v
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or(format!("--rounds wants a positive number, not {v:?}"))?;
            }
            Some("--vfsdaxd") => out.vfsdaxd = Some(value("--vfsdaxd")?.into()),
            Some("--virtiofsd") => out.virtiofsd = Some(value("--virtiofsd")?.into()),
            Some("--share-in") => out.share_in = value("--share-in")?.into(),
            Some("-h" | "--help") => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(out)
}

/// Seconds per workload, one entry per run.
type Samples = BTreeMap<&'static str, Vec<f64>>;

/// The seconds of each workload in one run, in the script's order.
type RunTimes = Vec<(&'static str, f64)>;

/// The time of every workload in a run's report, or what is missing.
fn run_times(report: &SerialReport) -> Result<RunTimes, String> {
    workloads()
        .iter()
        .map(|&w| {
            report
                .bench_time(w)
                .map(|t| (w, t))
                .ok_or(format!("the guest printed no BENCH time for {w}"))
        })
        .collect()
}

/// The results table: per workload the median seconds of each daemon and the ratio
/// vfsdaxd/virtiofsd (`n/a` without virtiofsd, or when its median is 0 at 10 ms resolution).
fn table(ours: &Samples, peer: Option<&Samples>) -> String {
    let mut s = format!(
        "{:<28} {:>9} {:>10} {:>18}\n",
        "workload (median s)", "vfsdaxd", "virtiofsd", "vfsdaxd/virtiofsd"
    );
    let med = |samples: Option<&Samples>, w: &str| samples.and_then(|m| median(m.get(w)?));
    for (w, what) in DESCRIPTIONS {
        let a = med(Some(ours), w);
        let b = med(peer, w);
        let secs = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.2}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "n/a".to_owned(),
        };
        s.push_str(&format!(
            "{:<28} {:>9} {:>10} {:>18}\n",
            what,
            secs(a),
            secs(b),
            ratio
        ));
    }
    s
}

/// One daemon under test.
struct Contender {
    label: &'static str,
    program: PathBuf,
    samples: Samples,
}

/// Boots one guest in bench mode against `c` on a fresh share under `share_in`; records the
/// times in `c` and returns them with QEMU's wall-clock seconds, or returns what went wrong
/// (the logs are then kept).
fn bench_once(
    setup: &GuestSetup,
    c: &mut Contender,
    share_in: &Path,
) -> Result<(RunTimes, f64), String> {
    let work = ScratchDir::new("bench").map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let share = ScratchDir::new_in(share_in, "bshare")
        .map_err(|e| format!("cannot make a share in {}: {e}", share_in.display()))?;
    let mut opts = RunOptions::new(Mode::Bench);
    opts.cache = CACHE.into();
    let run = run_guest(setup, &c.program, share.path(), &opts, work.path())
        .map_err(|e| format!("guest run with {}: {}", c.label, error_chain(&e)))?;
    let mut problems = run.report.problems(&STEPS);
    let times = run_times(&run.report);
    if let Err(e) = &times {
        problems.push(e.clone());
    }
    match times {
        Ok(times) if problems.is_empty() => {
            for &(w, t) in &times {
                c.samples.entry(w).or_default().push(t);
            }
            Ok((times, run.qemu.elapsed.as_secs_f64()))
        }
        _ => {
            let kept = work.keep();
            Err(format!(
                "the bench failed with {} (logs kept in {}):\n  {}\n{}",
                c.label,
                kept.display(),
                problems.join("\n  "),
                run.diagnostics()
            ))
        }
    }
}

fn run() -> Result<(), String> {
    let Some((args, setup)) = tool::start(parse_args(std::env::args_os().skip(1)), USAGE)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let ours = tool::daemon_or_vfsdaxd(args.vfsdaxd)?;
    let peer = match args.virtiofsd {
        Some(p) if vfsdax_tests::guest::process::is_executable(&p) => Some(p),
        Some(p) => return Err(format!("{} is not an executable file", p.display())),
        None => daemon::virtiofsd_path(),
    };
    if peer.is_none() {
        println!(
            "guest-bench: virtiofsd not found on PATH or in ~/.cargo/bin \
             (cargo install virtiofsd --version 1.14.0): measuring vfsdaxd only"
        );
    }
    let mut contenders = vec![Contender {
        label: "vfsdaxd",
        program: ours,
        samples: Samples::new(),
    }];
    if let Some(program) = peer {
        contenders.push(Contender {
            label: "virtiofsd",
            program,
            samples: Samples::new(),
        });
    }
    println!(
        "guest-bench: {} round{}, kernel {}, 1 vCPU TCG, share in {}, --cache {CACHE} --sandbox none --seccomp none",
        args.rounds,
        if args.rounds == 1 { "" } else { "s" },
        setup.kernel.release,
        args.share_in.display()
    );
    for c in &contenders {
        println!(
            "  {:<10} {} ({})",
            c.label,
            c.program.display(),
            program_version(&c.program)
        );
    }
    for round in 1..=args.rounds {
        for c in contenders.iter_mut() {
            let (times, elapsed) = bench_once(&setup, c, &args.share_in)?;
            let times: Vec<String> = times.iter().map(|(w, t)| format!("{w} {t:.2}")).collect();
            println!(
                "round {round}/{} {:<10} {}  (QEMU ran {elapsed:.1} s)",
                args.rounds,
                c.label,
                times.join("  ")
            );
        }
    }
    println!();
    print!(
        "{}",
        table(
            &contenders[0].samples,
            contenders.get(1).map(|c| &c.samples)
        )
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfsdax_tests::guest::initramfs::BENCH_SCRIPT;
    use vfsdax_tests::guest::serial;

    #[test]
    fn workloads_match_the_guest_script() {
        for w in workloads() {
            assert!(
                BENCH_SCRIPT.contains(&format!("bench_{w}() {{")),
                "no bench_{w} in bench.sh"
            );
            assert!(
                DESCRIPTIONS.iter().any(|(n, _)| n == w),
                "no description of {w}"
            );
        }
        assert!(BENCH_SCRIPT.contains(&format!("for name in {}; do", workloads().join(" "))));
        assert_eq!(DESCRIPTIONS.len(), workloads().len());
    }

    #[test]
    fn run_times_needs_every_workload() {
        let full =
            "BENCH write 0.7\nBENCH read 0.4\nBENCH create 3.5\nBENCH stat 1\nBENCH remove 2\n";
        let times = run_times(&serial::parse(full)).unwrap();
        assert_eq!(times.len(), 5);
        assert_eq!(times[2], ("create", 3.5));
        let err = run_times(&serial::parse(&full.replace("BENCH stat 1\n", ""))).unwrap_err();
        assert!(err.contains("stat"), "{err}");
    }

    fn samples(rows: &[(&'static str, &[f64])]) -> Samples {
        rows.iter().map(|(w, v)| (*w, v.to_vec())).collect()
    }

    /// The last three cells (ratio, virtiofsd, vfsdaxd) of the row starting with `what`.
    fn cells<'a>(t: &'a str, what: &str) -> Vec<&'a str> {
        t.lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in\n{t}"))
            .split_whitespace()
            .rev()
            .take(3)
            .collect()
    }

    #[test]
    fn table_shows_medians_and_ratios() {
        let ours = samples(&[("write", &[1.0, 3.0, 2.0]), ("read", &[0.5, 0.5, 0.5])]);
        let peer = samples(&[("write", &[1.0, 1.0, 1.0]), ("read", &[0.0, 0.0, 0.0])]);
        let t = table(&ours, Some(&peer));
        assert_eq!(cells(&t, "dd write"), ["2.00", "1.00", "2.00"]);
        // A zero median (10 ms resolution) gives no ratio.
        assert_eq!(cells(&t, "dd read"), ["n/a", "0.00", "0.50"]);
        assert_eq!(cells(&t, "create"), ["n/a", "n/a", "n/a"]);
        let alone = table(&ours, None);
        assert_eq!(cells(&alone, "dd write"), ["n/a", "n/a", "2.00"]);
    }
}
