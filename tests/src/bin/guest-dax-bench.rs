//! guest-dax-bench: times reads of a 64 MiB file in a real Linux guest (Debian 6.1 kernel,
//! QEMU 11.1 TCG, busybox; tests/guest/daxbench.sh with tests/guest/daxtool.c) through vfsdaxd's
//! DAX window (`dax=always`, `dax=inode`), through vfsdaxd without it (`dax=never`) and through
//! the reference `virtiofsd` (no DAX), alternating the configurations within each round, and
//! prints per configuration and workload the median MiB/s, the spread and the ratio to
//! virtiofsd.
//!
//! vfsdaxd runs behind QEMU's generic vhost-user device with `--cache-size 256M` (and
//! `--dax-policy always` for `dax=inode`, so that the file, a multiple of 2 MiB, is marked
//! DAX); virtiofsd behind `vhost-user-fs-pci`. Both get `--cache auto --sandbox none --seccomp
//! none` and a fresh share (on tmpfs by default) per run. A run whose guest does not report
//! the expected `DATA dax` (1 for the DAX mounts, 0 otherwise) fails the whole bench: a silent
//! fall back to the page cache must not pass as a DAX figure.
//!
//! Times are the guest's (CLOCK_MONOTONIC, ns); TCG emulates the guest's CPU, so compare the
//! ratios of one run rather than absolute figures. Run through `scripts/bench-guest.sh`, which
//! builds a release `vfsdaxd` and installs `virtiofsd` first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vfsdax_tests::guest::helper::build_static_helper;
use vfsdax_tests::guest::qemu::qemu_version;
use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::tool::{median, program_version};
use vfsdax_tests::guest::{daemon, run_guest, tool, FsDevice, GuestSetup, Mode, RunOptions};
use vfsdax_tests::harness::error_chain;

const USAGE: &str =
    "usage: guest-dax-bench [--rounds N] [--vfsdaxd PATH] [--virtiofsd PATH] [--share-in DIR]
  --rounds N        rounds, each running every configuration once (default 5)
  --vfsdaxd PATH    our daemon (default: $VFSDAX_DAEMON, else vfsdaxd next to this program)
  --virtiofsd PATH  the reference daemon (default: on PATH or in ~/.cargo/bin; if there is
                    none, only vfsdaxd is measured and there are no ratios)
  --share-in DIR    where each run's fresh share is made (default /dev/shm: tmpfs)";

const MIB: u64 = 1 << 20;
/// The size of the file the guest reads: 64 MiB, a whole number of 2 MiB chunks (QEMU 11.1
/// maps only whole ranges inside a file).
const FILE_SIZE: u64 = 64 * MIB;
/// The number of 4 KiB reads of each random workload (`COUNT` in daxbench.sh).
const RAND_COUNT: u64 = 2000;
/// The guest's RAM.
const GUEST_MIB: u32 = 1024;
/// The `--cache` mode both daemons get.
const CACHE: &str = "auto";
/// vfsdaxd's DAX window.
const WINDOW: &str = "256M";

/// The steps daxbench.sh reports, `mount` (from /init) first.
const STEPS: [&str; 6] = [
    "mount",
    "seq_cold",
    "seq_warm",
    "rand_cold",
    "rand_warm",
    "dax_flag",
];

/// The timed workloads: the `BENCHNS` label, the bytes it reads, what it does.
const WORKLOADS: [(&str, u64, &str); 4] = [
    (
        "seq_cold",
        FILE_SIZE,
        "read(2) of the 64 MiB file in 1 MiB calls, after drop_caches",
    ),
    ("seq_warm", FILE_SIZE, "the same again, right after"),
    (
        "rand_cold",
        RAND_COUNT * 4096,
        "2,000 pread(2) of 4 KiB at random 4 KiB-aligned offsets, after drop_caches",
    ),
    ("rand_warm", RAND_COUNT * 4096, "the same offsets again"),
];

/// Which daemon serves a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Vfsdaxd,
    Virtiofsd,
}

/// One configuration under test.
#[derive(Clone, Copy, Debug)]
struct Config {
    label: &'static str,
    server: Server,
    /// The guest's `mount -o`.
    mount_opts: Option<&'static str>,
    /// Daemon arguments after `--cache-size` (vfsdaxd only).
    daemon_extra: &'static [&'static str],
    /// Whether the guest must see the file as DAX (`DATA dax 1`).
    expect_dax: bool,
}

/// The label of the reference the ratios are taken against.
const REFERENCE: &str = "virtiofsd";

const CONFIGS: [Config; 4] = [
    Config {
        label: "vfsdaxd dax=always",
        server: Server::Vfsdaxd,
        mount_opts: Some("dax=always"),
        daemon_extra: &[],
        expect_dax: true,
    },
    Config {
        label: "vfsdaxd dax=inode",
        server: Server::Vfsdaxd,
        mount_opts: Some("dax=inode"),
        daemon_extra: &["--dax-policy", "always"],
        expect_dax: true,
    },
    Config {
        label: "vfsdaxd dax=never",
        server: Server::Vfsdaxd,
        mount_opts: Some("dax=never"),
        daemon_extra: &[],
        expect_dax: false,
    },
    Config {
        label: REFERENCE,
        server: Server::Virtiofsd,
        mount_opts: None,
        daemon_extra: &[],
        expect_dax: false,
    },
];

#[derive(Debug)]
struct Args {
    rounds: usize,
    vfsdaxd: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    share_in: PathBuf,
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Args, String> {
    let mut out = Args {
        rounds: 5,
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

/// One `BENCHNS <label> <nanoseconds> <bytes>` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BenchNs {
    label: String,
    ns: u64,
    bytes: u64,
}

impl BenchNs {
    /// MiB per second; `None` for a zero time.
    fn mib_per_s(&self) -> Option<f64> {
        (self.ns > 0).then(|| self.bytes as f64 / MIB as f64 / (self.ns as f64 / 1e9))
    }
}

/// The `BENCHNS` lines of a serial log, in order (a carriage return and surrounding blanks
/// are tolerated; malformed lines are left out).
fn parse_benchns(serial: &str) -> Vec<BenchNs> {
    serial
        .lines()
        .filter_map(|line| {
            let mut words = line.trim().strip_prefix("BENCHNS ")?.split_whitespace();
            let label = words.next()?.to_owned();
            let ns = words.next()?.parse().ok()?;
            let bytes = words.next()?.parse().ok()?;
            words
                .next()
                .is_none()
                .then_some(BenchNs { label, ns, bytes })
        })
        .collect()
}

/// MiB/s of each workload in one run, in [`WORKLOADS`]' order, or what is wrong: a workload
/// missing (the last line of a label wins), read the wrong number of bytes, or took no time.
fn run_rates(lines: &[BenchNs]) -> Result<Vec<(&'static str, f64)>, String> {
    WORKLOADS
        .iter()
        .map(|&(w, want, _)| {
            let b = lines
                .iter()
                .rev()
                .find(|b| b.label == w)
                .ok_or(format!("the guest printed no BENCHNS line for {w}"))?;
            if b.bytes != want {
                return Err(format!("{w} read {} bytes, want {want}", b.bytes));
            }
            let rate = b.mib_per_s().ok_or(format!("{w} took 0 ns"))?;
            Ok((w, rate))
        })
        .collect()
}

/// Whether the guest's `DATA dax` matches the configuration; `Err` says what it saw.
fn check_dax(config: &Config, data: Option<&str>) -> Result<(), String> {
    let want = if config.expect_dax { "1" } else { "0" };
    match data {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(format!(
            "{}: the guest reports DATA dax {v}, want {want}{}",
            config.label,
            if config.expect_dax {
                " (the file went through the page cache, not the DAX window)"
            } else {
                ""
            }
        )),
        None => Err(format!("{}: the guest printed no DATA dax", config.label)),
    }
}

/// The order of the configurations in round `round` (from 1): each round starts one
/// configuration later, so none always runs first (right after the previous round's last).
fn round_order(round: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round - 1) % n).collect()
}

/// MiB/s per (configuration, workload), one entry per run.
type Samples = BTreeMap<(&'static str, &'static str), Vec<f64>>;

/// The results table: per workload and configuration the median MiB/s, the spread (min..max)
/// and the ratio of the medians to [`REFERENCE`]'s (above 1: faster than virtiofsd; `n/a`
/// without it).
fn table(samples: &Samples, configs: &[&'static str], rounds: usize) -> String {
    let mut s = format!(
        "{:<10} {:<20} {:>12} {:>19} {:>12}\n",
        "workload",
        "configuration",
        "MiB/s median",
        format!("min..max ({rounds})"),
        "x virtiofsd"
    );
    for (w, _, _) in WORKLOADS {
        let reference = samples.get(&(REFERENCE, w)).and_then(|v| median(v));
        for &c in configs {
            let v = samples.get(&(c, w)).map(Vec::as_slice).unwrap_or(&[]);
            let med = median(v);
            let min = v.iter().copied().reduce(f64::min);
            let max = v.iter().copied().reduce(f64::max);
            let spread = match (min, max) {
                (Some(a), Some(b)) => format!("{a:.1}..{b:.1}"),
                _ => "n/a".to_owned(),
            };
            let ratio = match (med, reference) {
                (Some(m), Some(r)) if r > 0.0 => format!("{:.2}", m / r),
                _ => "n/a".to_owned(),
            };
            let med = med.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
            s.push_str(&format!(
                "{w:<10} {c:<20} {med:>12} {spread:>19} {ratio:>12}\n"
            ));
        }
    }
    s
}

/// The machine: `<n> CPUs, Linux <release>, <cpu model>` (what is known of it).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs (nproc), Linux {kernel}, {model}")
}

/// The date and time now, UTC: `YYYY-MM-DD HH:MM UTC`.
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian calendar).
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The daemon's closing DAX counters line (vfsdaxd: `DAX: N SETUPMAPPING served ...`), for
/// the round's line; `None` if it printed none.
fn daemon_dax_line(log: &str) -> Option<&str> {
    log.lines()
        .filter_map(|l| l.find("DAX: ").map(|at| l[at..].trim_end()))
        .find(|l| l.contains("SETUPMAPPING"))
}

/// A file of `len` non-zero bytes (a 251-byte cycle of 1..=251).
fn pattern(len: u64) -> Vec<u8> {
    let cycle: Vec<u8> = (1..=251).collect();
    cycle.iter().copied().cycle().take(len as usize).collect()
}

/// What one run needs.
struct Bench<'a> {
    setup: &'a GuestSetup,
    vfsdaxd: &'a Path,
    virtiofsd: Option<&'a Path>,
    daxtool: &'a Path,
    share_in: &'a Path,
    data: &'a [u8],
}

/// What one run measured.
struct RunResult {
    rates: Vec<(&'static str, f64)>,
    dax: String,
    elapsed: f64,
    daemon_dax: Option<String>,
}

impl Bench<'_> {
    /// Boots one guest in daxbench mode with configuration `c` on a fresh share holding `big`;
    /// returns the rates, or what went wrong (the logs are then kept).
    fn once(&self, c: &Config) -> Result<RunResult, String> {
        let work =
            ScratchDir::new("daxbench").map_err(|e| format!("cannot make a scratch dir: {e}"))?;
        let share = ScratchDir::new_in(self.share_in, "dshare")
            .map_err(|e| format!("cannot make a share in {}: {e}", self.share_in.display()))?;
        std::fs::write(share.path().join("big"), self.data)
            .map_err(|e| format!("cannot write the 64 MiB file: {e}"))?;
        let mut opts = RunOptions::new(Mode::DaxBench);
        opts.cache = CACHE.into();
        opts.mem_mib = GUEST_MIB;
        opts.mount_opts = c.mount_opts.map(str::to_owned);
        opts.extra_files = vec![("bin/daxtool".into(), self.daxtool.to_owned())];
        let program = match c.server {
            Server::Vfsdaxd => {
                opts.device = FsDevice::Generic;
                opts.daemon_args = ["--cache-size", WINDOW]
                    .iter()
                    .chain(c.daemon_extra)
                    .map(Into::into)
                    .collect();
                self.vfsdaxd
            }
            Server::Virtiofsd => {
                opts.device = FsDevice::VhostUserFs;
                self.virtiofsd.ok_or("no virtiofsd")?
            }
        };
        let run = run_guest(self.setup, program, share.path(), &opts, work.path())
            .map_err(|e| format!("guest run with {}: {}", c.label, error_chain(&e)))?;
        let mut problems = run.report.problems(&STEPS);
        let rates = run_rates(&parse_benchns(&run.qemu.serial));
        if let Err(e) = &rates {
            problems.push(e.clone());
        }
        let dax = run.report.data.get("dax").cloned();
        if let Err(e) = check_dax(c, dax.as_deref()) {
            problems.push(e);
        }
        match rates {
            Ok(rates) if problems.is_empty() => Ok(RunResult {
                rates,
                dax: dax.unwrap_or_default(),
                elapsed: run.qemu.elapsed.as_secs_f64(),
                daemon_dax: daemon_dax_line(&run.daemon_log).map(str::to_owned),
            }),
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
}

fn run() -> Result<(), String> {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(e) => return Err(format!("{e}\n{USAGE}")),
    };
    let setup = GuestSetup::detect_dax().map_err(|e| error_chain(&e))?;
    let vfsdaxd = tool::daemon_or_vfsdaxd(args.vfsdaxd)?;
    let virtiofsd = match args.virtiofsd {
        Some(p) if vfsdax_tests::guest::process::is_executable(&p) => Some(p),
        Some(p) => return Err(format!("{} is not an executable file", p.display())),
        None => daemon::virtiofsd_path(),
    };
    if virtiofsd.is_none() {
        println!(
            "guest-dax-bench: virtiofsd not found on PATH or in ~/.cargo/bin \
             (cargo install virtiofsd --version 1.14.0): measuring vfsdaxd only"
        );
    }
    let configs: Vec<Config> = CONFIGS
        .into_iter()
        .filter(|c| c.server == Server::Vfsdaxd || virtiofsd.is_some())
        .collect();
    let scratch =
        ScratchDir::new("daxbench-tool").map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let daxtool = scratch.path().join("daxtool");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/daxtool.c");
    build_static_helper(&src, &daxtool)
        .map_err(|e| format!("building daxtool: {}", error_chain(&e)))?;
    let qemu = qemu_version(&setup.qemu).map_or_else(|e| error_chain(&e), |v| v.to_string());
    println!(
        "guest-dax-bench: {} round{}, {}",
        args.rounds,
        if args.rounds == 1 { "" } else { "s" },
        now_utc()
    );
    println!("  host:  {}", machine());
    println!(
        "  guest: kernel {}, 1 vCPU TCG, {GUEST_MIB} MiB, QEMU {qemu} ({})",
        setup.kernel.release,
        setup.qemu.display()
    );
    println!(
        "  share: a fresh one in {} per run holding big ({} MiB of non-zero bytes); \
         --cache {CACHE} --sandbox none --seccomp none",
        args.share_in.display(),
        FILE_SIZE / MIB
    );
    println!(
        "  vfsdaxd    {} ({}), generic vhost-user device, --cache-size {WINDOW} \
         (dax=inode: --dax-policy always)",
        vfsdaxd.display(),
        program_version(&vfsdaxd)
    );
    if let Some(p) = &virtiofsd {
        println!(
            "  virtiofsd  {} ({}), vhost-user-fs-pci (no DAX window), no dax option",
            p.display(),
            program_version(p)
        );
    }
    let data = pattern(FILE_SIZE);
    let bench = Bench {
        setup: &setup,
        vfsdaxd: &vfsdaxd,
        virtiofsd: virtiofsd.as_deref(),
        daxtool: &daxtool,
        share_in: &args.share_in,
        data: &data,
    };
    let mut samples = Samples::new();
    let width = configs.iter().map(|c| c.label.len()).max().unwrap_or(0);
    for round in 1..=args.rounds {
        for i in round_order(round, configs.len()) {
            let c = &configs[i];
            let r = bench.once(c)?;
            for &(w, rate) in &r.rates {
                samples.entry((c.label, w)).or_default().push(rate);
            }
            let rates: Vec<String> = r.rates.iter().map(|(w, x)| format!("{w} {x:.1}")).collect();
            println!(
                "round {round}/{} {:<width$}  MiB/s: {}  dax={}  (QEMU ran {:.1} s{})",
                args.rounds,
                c.label,
                rates.join("  "),
                r.dax,
                r.elapsed,
                r.daemon_dax
                    .map(|l| format!("; daemon {l}"))
                    .unwrap_or_default()
            );
        }
    }
    println!();
    let labels: Vec<&'static str> = configs.iter().map(|c| c.label).collect();
    print!("{}", table(&samples, &labels, args.rounds));
    println!();
    for (w, _, what) in WORKLOADS {
        println!("  {w:<10} {what}");
    }
    println!(
        "  every DAX run's guest reported DATA dax 1 for big, every other run's 0 \
         (checked: a run that differs fails the bench)"
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-dax-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfsdax_tests::guest::initramfs::DAX_BENCH_SCRIPT;

    #[test]
    fn workloads_and_steps_match_the_guest_script() {
        for (w, _, _) in WORKLOADS {
            assert!(
                DAX_BENCH_SCRIPT.contains(&format!("step_{w}() {{")),
                "no step_{w} in daxbench.sh"
            );
            assert!(
                DAX_BENCH_SCRIPT.contains(&format!(" {w} ")),
                "daxbench.sh never labels a line {w}"
            );
        }
        assert!(DAX_BENCH_SCRIPT.contains(&format!("for name in {}; do", STEPS[1..].join(" "))));
        assert!(DAX_BENCH_SCRIPT.contains(&format!("COUNT={RAND_COUNT}\n")));
        assert!(DAX_BENCH_SCRIPT.contains("echo \"DATA dax $d\""));
        assert_eq!(
            FILE_SIZE % (2 * MIB),
            0,
            "QEMU 11.1 maps whole 2 MiB chunks"
        );
    }

    #[test]
    fn configurations() {
        assert_eq!(CONFIGS.iter().filter(|c| c.label == REFERENCE).count(), 1);
        for c in CONFIGS {
            let dax_mount = matches!(c.mount_opts, Some("dax=always" | "dax=inode"));
            assert_eq!(c.expect_dax, dax_mount, "{}", c.label);
            if c.mount_opts == Some("dax=inode") {
                assert_eq!(c.daemon_extra, ["--dax-policy", "always"]);
            }
            if c.server == Server::Virtiofsd {
                assert!(c.mount_opts.is_none() && c.daemon_extra.is_empty());
            }
        }
    }

    #[test]
    fn parses_benchns_lines() {
        let serial = "[    1.0] noise\r\nBENCHNS seq_cold 500000000 67108864\r\nSTEP seq_cold ok\n\
                      BENCHNS bad x 1\nBENCHNS short 5\nBENCHNS long 1 2 3\n  BENCHNS r 7 8  \n";
        assert_eq!(
            parse_benchns(serial),
            [
                BenchNs {
                    label: "seq_cold".into(),
                    ns: 500_000_000,
                    bytes: 64 << 20
                },
                BenchNs {
                    label: "r".into(),
                    ns: 7,
                    bytes: 8
                }
            ]
        );
        assert_eq!(parse_benchns("").len(), 0);
    }

    fn line(label: &str, ns: u64, bytes: u64) -> BenchNs {
        BenchNs {
            label: label.into(),
            ns,
            bytes,
        }
    }

    #[test]
    fn rates_need_every_workload_with_its_bytes() {
        let rand = RAND_COUNT * 4096;
        let mut lines = vec![
            line("seq_cold", 500_000_000, FILE_SIZE),
            line("seq_warm", 250_000_000, FILE_SIZE),
            line("rand_cold", 1_000_000_000, rand),
            line("rand_warm", 2_000_000_000, rand),
        ];
        let rates = run_rates(&lines).unwrap();
        assert_eq!(
            rates,
            [
                ("seq_cold", 128.0),
                ("seq_warm", 256.0),
                ("rand_cold", rand as f64 / MIB as f64),
                ("rand_warm", rand as f64 / MIB as f64 / 2.0)
            ]
        );
        // The last line of a label wins.
        lines.push(line("seq_cold", 1_000_000_000, FILE_SIZE));
        assert_eq!(run_rates(&lines).unwrap()[0], ("seq_cold", 64.0));
        let short = [line("seq_cold", 1, FILE_SIZE - 4096)];
        assert!(run_rates(&short).unwrap_err().contains("want 67108864"));
        let err = run_rates(&lines[..3]).unwrap_err();
        assert!(err.contains("rand_warm"), "{err}");
        let zero = [line("seq_cold", 0, FILE_SIZE)];
        assert!(run_rates(&zero).unwrap_err().contains("0 ns"));
    }

    #[test]
    fn dax_must_match_the_mount() {
        let always = &CONFIGS[0];
        let never = &CONFIGS[2];
        assert_eq!(check_dax(always, Some("1")), Ok(()));
        assert_eq!(check_dax(never, Some("0")), Ok(()));
        let err = check_dax(always, Some("0")).unwrap_err();
        assert!(err.contains("page cache"), "{err}");
        assert!(check_dax(never, Some("1")).is_err());
        assert!(check_dax(&CONFIGS[3], None).is_err());
    }

    #[test]
    fn every_round_runs_each_configuration_once_starting_elsewhere() {
        assert_eq!(round_order(1, 4), [0, 1, 2, 3]);
        assert_eq!(round_order(2, 4), [1, 2, 3, 0]);
        assert_eq!(round_order(5, 4), [0, 1, 2, 3]);
        assert_eq!(round_order(3, 3), [2, 0, 1]);
    }

    /// The cells of the row of workload `w` and configuration `c`: median, spread, ratio.
    fn cells<'a>(t: &'a str, w: &str, c: &str) -> Vec<&'a str> {
        let row = t
            .lines()
            .find(|l| l.starts_with(&format!("{w:<10} {c:<20} ")))
            .unwrap_or_else(|| panic!("no row {w} {c} in\n{t}"));
        row[32..].split_whitespace().collect()
    }

    #[test]
    fn table_shows_medians_spreads_and_ratios() {
        let mut s = Samples::new();
        s.insert(("vfsdaxd dax=always", "seq_cold"), vec![30.0, 10.0, 20.0]);
        s.insert(("virtiofsd", "seq_cold"), vec![5.0, 4.0, 6.0]);
        s.insert(("vfsdaxd dax=always", "seq_warm"), vec![100.0, 300.0]);
        let labels = ["vfsdaxd dax=always", "virtiofsd"];
        let t = table(&s, &labels, 3);
        assert!(t.lines().next().unwrap().contains("min..max (3)"), "{t}");
        assert_eq!(
            cells(&t, "seq_cold", "vfsdaxd dax=always"),
            ["20.0", "10.0..30.0", "4.00"]
        );
        assert_eq!(
            cells(&t, "seq_cold", "virtiofsd"),
            ["5.0", "4.0..6.0", "1.00"]
        );
        // No reference figure: no ratio; no figure at all: n/a everywhere.
        assert_eq!(
            cells(&t, "seq_warm", "vfsdaxd dax=always"),
            ["200.0", "100.0..300.0", "n/a"]
        );
        assert_eq!(cells(&t, "rand_cold", "virtiofsd"), ["n/a", "n/a", "n/a"]);
        assert_eq!(t.lines().count(), 1 + WORKLOADS.len() * labels.len());
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59 UTC");
    }

    #[test]
    fn the_daemon_dax_line_is_found() {
        let log = "[2026 INFO] connected\n[2026 INFO vfsdaxd] DAX: 32 SETUPMAPPING served \
                   (0 refused), 32 REMOVEMAPPING; 32 chunks mapped, 0 reused, 32 unmapped\n";
        assert_eq!(
            daemon_dax_line(log),
            Some(
                "DAX: 32 SETUPMAPPING served (0 refused), 32 REMOVEMAPPING; 32 chunks mapped, \
                 0 reused, 32 unmapped"
            )
        );
        assert_eq!(daemon_dax_line("DAX: window of 256 MiB\n"), None);
    }

    #[test]
    fn the_file_is_non_zero_and_full_size() {
        let p = pattern(1000);
        assert_eq!(p.len(), 1000);
        assert!(p.iter().all(|&b| b != 0));
        assert_eq!((p[0], p[250], p[251]), (1, 251, 1));
    }

    #[test]
    fn arguments() {
        let parse = |v: &[&str]| parse_args(v.iter().map(Into::into));
        let a = parse(&[]).unwrap();
        assert_eq!((a.rounds, a.share_in), (5, PathBuf::from("/dev/shm")));
        let a = parse(&["--rounds", "7", "--share-in", "/tmp"]).unwrap();
        assert_eq!((a.rounds, a.share_in), (7, PathBuf::from("/tmp")));
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--rounds"]).is_err());
        assert_eq!(parse(&["--help"]).err(), Some(String::new()));
        assert!(parse(&["--what"]).unwrap_err().contains("--what"));
    }
}
