//! `vfsdax-fsbench`: vfsdaxd against a reference vhost-user-fs daemon (virtiofsd 1.14), side by
//! side, through the host-side virtio-fs driver (`vfsdax-driver`) as the frontend: no VM, the
//! same rings and FUSE requests a guest sends. See docs/PERFORMANCE.md ("Side by side with
//! virtiofsd") and `scripts/bench.sh`.
//!
//! Per run, per worker configuration, the daemons take turns (the first one alternates between
//! runs); each gets a fresh process on its own copy of the share and runs every row at every
//! queue depth. The table gives medians over the runs, their min..max, and the ratio
//! vfsdaxd/reference.

mod conn;
mod daemon;
mod report;
mod rows;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use conn::Conn;
use daemon::{DaemonSpec, Launch};
use report::{Cell, Results};
use rows::{Row, ALL_ROWS};

const USAGE: &str = "usage: vfsdax-fsbench --vfsdaxd PATH [--reference PATH] [options]
  --vfsdaxd PATH     the vfsdaxd to measure
  --reference PATH   the daemon to compare with (virtiofsd's command line); without it only
                     vfsdaxd is measured
  --runs N           runs (default 5); each run starts every daemon afresh
  --secs S           seconds per row and queue depth (default 0.5)
  --quick            1 run of 0.1 s per cell (a smoke check, not a measurement)
  --rows LIST        comma-separated row keys (getattr,lookup,create,read4k,read1m,write4k,
                     write1m,readdirplus,setattr,mix; default all)
  --depths LIST      queue depths (default 1,32; at most 32)
  --threads LIST     worker threads (default 1,2): 1 = each daemon's default (requests served
                     on the queue's thread), 2 = --thread-pool-size=2
  --share-in DIR     where to make the share (default $TMPDIR or /tmp; use /dev/shm for tmpfs)
  --no-pin           do not pin (default: with 1 worker the daemon runs on CPU 1, the frontend
                     on CPU 0; with 2 workers nothing is pinned)";

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// The command line is wrong.
    #[error("{0}\n{USAGE}")]
    Usage(String),
    /// A daemon did not start.
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    /// Connecting or a request failed.
    #[error("{daemon}: {source}")]
    Conn {
        /// The daemon.
        daemon: String,
        /// The cause.
        #[source]
        source: conn::ConnError,
    },
    /// A row failed.
    #[error("{daemon}, {row}, depth {depth}: {source}")]
    Row {
        /// The daemon.
        daemon: String,
        /// The row.
        row: &'static str,
        /// The queue depth.
        depth: usize,
        /// The cause.
        #[source]
        source: rows::RowError,
    },
    /// Preparing the share failed.
    #[error(transparent)]
    Share(rows::RowError),
    /// A scratch directory could not be made.
    #[error("cannot create {path}: {source}")]
    Scratch {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Args {
    vfsdaxd: PathBuf,
    reference: Option<PathBuf>,
    runs: usize,
    secs: f64,
    rows: Vec<Row>,
    depths: Vec<usize>,
    threads: Vec<usize>,
    share_in: PathBuf,
    pin: bool,
}

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>, BenchError> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| BenchError::Usage(format!("bad {what}: {x}")))
        })
        .collect()
}

fn parse_args() -> Result<Args, BenchError> {
    let mut a = Args {
        vfsdaxd: PathBuf::new(),
        reference: None,
        runs: 5,
        secs: 0.5,
        rows: ALL_ROWS.to_vec(),
        depths: vec![1, conn::MAX_DEPTH],
        threads: vec![1, 2],
        share_in: std::env::temp_dir(),
        pin: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--vfsdaxd" => a.vfsdaxd = value()?.into(),
            "--reference" => a.reference = Some(value()?.into()),
            "--runs" => a.runs = list(&value()?, "--runs")?[0],
            "--secs" => a.secs = list(&value()?, "--secs")?[0],
            "--quick" => {
                a.runs = 1;
                a.secs = 0.1;
            }
            "--rows" => {
                let keys: Vec<String> = list(&value()?, "--rows")?;
                a.rows = keys
                    .iter()
                    .map(|k| {
                        ALL_ROWS
                            .into_iter()
                            .find(|r| r.key() == k)
                            .ok_or_else(|| BenchError::Usage(format!("no row {k}")))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--depths" => a.depths = list(&value()?, "--depths")?,
            "--threads" => a.threads = list(&value()?, "--threads")?,
            "--share-in" => a.share_in = value()?.into(),
            "--no-pin" => a.pin = false,
            "--help" | "-h" => return Err(BenchError::Usage(String::new())),
            other => return Err(BenchError::Usage(format!("unknown argument {other}"))),
        }
    }
    if a.vfsdaxd.as_os_str().is_empty() {
        return Err(BenchError::Usage("--vfsdaxd is required".into()));
    }
    if a.runs == 0 || a.secs <= 0.0 {
        return Err(BenchError::Usage(
            "--runs and --secs must be positive".into(),
        ));
    }
    if a.depths.iter().any(|&d| d == 0 || d > conn::MAX_DEPTH) {
        return Err(BenchError::Usage(format!(
            "depths are 1..={}",
            conn::MAX_DEPTH
        )));
    }
    if a.threads.contains(&0) {
        return Err(BenchError::Usage("threads are at least 1".into()));
    }
    Ok(a)
}

/// Pins the calling thread to `cpu`, or lets it run anywhere (`None`). Best effort.
fn pin_self(cpu: Option<usize>) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET only writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in 0..n {
        if cpu.is_none_or(|p| p == c) {
            // SAFETY: `c` is below the number of CPUs, far below CPU_SETSIZE.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        eprintln!(
            "fsbench: sched_setaffinity failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A started daemon and the driver connected to it.
struct Session {
    running: daemon::Running,
    conn: Conn,
    share: rows::Share,
}

/// Starts daemon `d` on its own share for `threads` workers, connects and sends INIT.
fn start_session(
    args: &Args,
    d: &DaemonSpec,
    threads: usize,
    scratch: &std::path::Path,
) -> Result<Session, BenchError> {
    let pin = args.pin && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let share = scratch.join(format!("share-{}", d.label));
    let socket = scratch.join(format!("{}.sock", d.label));
    let log = scratch.join(format!("{}.log", d.label));
    let launch = Launch {
        share: &share,
        socket: &socket,
        log: &log,
        pool: (threads > 1).then_some(threads),
        cpus: (pin && threads == 1).then_some("1"),
    };
    let running = d.start(&launch)?;
    let mut conn = Conn::connect(&socket).map_err(|source| BenchError::Conn {
        daemon: d.label.clone(),
        source,
    })?;
    let share = rows::init(&mut conn).map_err(|source| BenchError::Row {
        daemon: d.label.clone(),
        row: "INIT",
        depth: 1,
        source,
    })?;
    Ok(Session {
        running,
        conn,
        share,
    })
}

/// One run of one worker configuration: every daemon started (each on its own copy of the
/// share), then per row and depth each measured in turn, the first one alternating from cell
/// to cell and from run to run, so that a busy moment of the machine hits both alike.
fn measure_run(
    args: &Args,
    daemons: &[DaemonSpec],
    threads: usize,
    run: usize,
    scratch: &std::path::Path,
    results: &mut Results,
) -> Result<(), BenchError> {
    let pin = args.pin && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    pin_self((pin && threads == 1).then_some(0));
    let mut sessions = Vec::new();
    for d in daemons {
        sessions.push(start_session(args, d, threads, scratch)?);
    }
    let mut lines = vec![Vec::new(); daemons.len()];
    let mut cell_no = run;
    for &row in &args.rows {
        for &depth in &args.depths {
            let mut order: Vec<usize> = (0..daemons.len()).collect();
            if cell_no % 2 == 1 {
                order.reverse();
            }
            cell_no += 1;
            let per = results
                .entry(Cell {
                    row,
                    depth,
                    threads,
                })
                .or_default();
            per.resize(daemons.len() + 2, Vec::new());
            if row == Row::Read(conn::MAX_IO) {
                // The bounds of this cell, measured right before it (the machine's load moves):
                // kept after the daemons' figures.
                per[daemons.len()].push(report::memcpy_bandwidth());
                let data = scratch.join(format!("share-{}/data", daemons[0].label));
                per[daemons.len() + 1].push(report::pread_bandwidth(&data));
            }
            for di in order {
                let s = &mut sessions[di];
                let secs = Duration::from_secs_f64(args.secs);
                let m = rows::run(&mut s.conn, &s.share, row, depth, secs).map_err(|source| {
                    BenchError::Row {
                        daemon: daemons[di].label.clone(),
                        row: row.label(),
                        depth,
                        source,
                    }
                })?;
                let f = m.figure(row);
                lines[di].push((row, depth, f));
                if let Some(per) = results.get_mut(&Cell {
                    row,
                    depth,
                    threads,
                }) {
                    per[di].push(f);
                }
            }
        }
    }
    for s in sessions {
        // Hanging up ends the daemon.
        drop(s.conn);
        s.running.finish();
    }
    pin_self(None);
    for (d, l) in daemons.iter().zip(&lines) {
        report::progress(run + 1, args.runs, threads, &d.label, l);
    }
    Ok(())
}

fn run() -> Result<(), BenchError> {
    let args = parse_args()?;
    let mut daemons = vec![DaemonSpec {
        label: "vfsdaxd".into(),
        program: args.vfsdaxd.clone(),
    }];
    if let Some(r) = &args.reference {
        let label = r
            .file_name()
            .map_or("reference".into(), |n| n.to_string_lossy().into_owned());
        daemons.push(DaemonSpec {
            label,
            program: r.clone(),
        });
    }
    let scratch = args
        .share_in
        .join(format!("vfsdax-fsbench-{}", std::process::id()));
    let result = (|| {
        for d in &daemons {
            let share = scratch.join(format!("share-{}", d.label));
            std::fs::create_dir_all(&share).map_err(|source| BenchError::Scratch {
                path: share.display().to_string(),
                source,
            })?;
            rows::prepare_share(&share).map_err(BenchError::Share)?;
        }
        report::header(
            &args.share_in,
            &scratch,
            &daemons,
            args.runs,
            args.secs,
            args.pin,
        );
        let mut results: Results = HashMap::new();
        for run in 0..args.runs {
            for &threads in &args.threads {
                measure_run(&args, &daemons, threads, run, &scratch, &mut results)?;
            }
        }
        report::table(&args.rows, &args.depths, &args.threads, &daemons, &results);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vfsdax-fsbench: {e}");
        std::process::exit(1);
    }
}
