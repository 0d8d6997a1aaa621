//! What the glue costs a VMM, on real KVM (issue 11 item 4):
//!
//! 1. With nothing faulting: vCPUs run the storm loop (one load or store through a random DAX
//!    mapping per request, a port exit per request, so the glue sees every exit: its worst
//!    case) with the glue wired in (fault handler on every exit, shrink watcher on every file)
//!    and without it ([`ReferenceVm::without_glue`]), alternating, for 1 to 10,000 mappings and
//!    1 to 8 vCPUs. Printed: accesses per second of each (an A/B whose run-to-run spread on a
//!    shared 2-core host is ±15 %, far above the glue's cost), and the glue's accounted share
//!    of vCPU time: exits the glue saw × its measured time per exit (the handler on a real
//!    exit of that VM, timed over 200,000 calls) plus the shrink watcher thread's CPU time,
//!    over vCPUs × wall time.
//! 2. Per fault: one vCPU touches only pages of a file truncated to 0, each access a machine
//!    check, with 1 to 10,000 mappings in the window. Printed: the glue's own time per fault
//!    (the report's latency: exit to guest re-entry ready) and the guest-visible round trip.
//!
//! Run: `cargo bench -p vfsdax-refvmm --bench glue_overhead` (`VFSDAX_BENCH_SECS` per run,
//! default 2; `VFSDAX_BENCH_RUNS`, default 3, medians). Mappings are 64 KiB of sparse files,
//! 100 per file. Needs /dev/kvm.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfsdax_refvmm::guest::{layout, port, GuestAccess, GuestConfig};
use vfsdax_refvmm::storm::Rng;
use vfsdax_refvmm::vm::{ReferenceVm, VmSetup};
use vfsdax_vmm_glue::dax::DaxWindow;
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::handler::Handled;
use vfsdax_vmm_glue::kvm::vcpu::Exit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MAP_LEN: u64 = 64 << 10;
const PER_FILE: usize = 100;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn guest(vcpu: u32) -> GuestConfig {
    GuestConfig {
        access: GuestAccess::HostDriven,
        opt_in: false,
        send_always: false,
        stock_apf: false,
        enable_mce: true,
        interrupts: true,
        user_mode: vcpu % 2 == 1,
        feature_bit: vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
        baseline_offset: 0,
        access_offset: 0,
        store_value: 0,
    }
}

/// A window holding `mappings` mappings of `MAP_LEN`, `PER_FILE` per sparse file.
fn window(dir: &Path, mappings: usize) -> (Arc<DaxWindow>, Vec<File>) {
    let size = (mappings as u64 * MAP_LEN).div_ceil(2 << 20) * (2 << 20);
    let w = Arc::new(DaxWindow::new(size).expect("window"));
    let mut files = Vec::new();
    for i in 0..mappings {
        if i % PER_FILE == 0 {
            let path: PathBuf = dir.join(format!("f{}", i / PER_FILE));
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("file");
            f.set_len(PER_FILE as u64 * MAP_LEN).expect("size");
            files.push(f);
        }
        let f = files.last().expect("file");
        let foff = (i % PER_FILE) as u64 * MAP_LEN;
        w.map(i as u64 * MAP_LEN, MAP_LEN, f, foff, true)
            .expect("map");
    }
    (w, files)
}

fn mailbox(mem: &GuestMemoryMmap, vcpu: u32, gpa: u64, value: u64) {
    let at = layout::private(vcpu, layout::MAILBOX);
    mem.write_obj(gpa, GuestAddress(at)).expect("mailbox");
    mem.write_obj(value, GuestAddress(at + 8)).expect("mailbox");
}

/// CPU time of this process's shrink watcher threads so far.
fn watcher_cpu() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("vfsdax-shrink") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// The glue's time per exit it does not claim (a port write of the storm loop), measured on
/// vCPU 0 of `vm` with its real state (watcher running, every mapping in the table).
fn glue_time_per_exit(vm: &mut ReferenceVm) -> Duration {
    let v = &mut vm.vcpus[0];
    let exit = Exit::IoOut {
        port: port::REQUEST,
        size: 4,
        data: 0,
    };
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        let h = v.handler.handle(&mut v.vcpu, &exit, start);
        assert!(matches!(h, Ok(Handled::NotMine)));
    }
    start.elapsed() / n
}

/// One run: accesses per second and, with the glue, its accounted share of vCPU time.
struct Run {
    rate: f64,
    share: f64,
}

/// `vcpus` vCPUs over `mappings` mappings for `secs`, with or without the glue.
fn throughput(w: &Arc<DaxWindow>, mappings: usize, vcpus: u32, glue: bool, secs: u64) -> Run {
    let setup = VmSetup {
        feature_bit: None,
        policy: FallbackPolicy::Mce,
        window_size: w.size(),
    };
    let guests: Vec<_> = (0..vcpus).map(guest).collect();
    let mut vm = ReferenceVm::with_guests(&setup, &guests, Arc::clone(w)).expect("VM");
    if !glue {
        vm.without_glue();
    }
    let mem = vm.mem.clone();
    let rngs: Vec<Mutex<Rng>> = (0..vcpus)
        .map(|v| Mutex::new(Rng::new(u64::from(v) + 1)))
        .collect();
    let done = AtomicU64::new(0);
    let exits = AtomicU64::new(0);
    // Steady state: the watcher has taken every file (its start-up, once per VM, is not
    // counted).
    if let Some(sync) = vm.watch_sync() {
        sync.sync(Duration::from_secs(10));
    }
    let cpu_before = watcher_cpu();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let outcomes = vm.run_all(Duration::from_secs(secs + 30), |vcpu, p, _| {
        exits.fetch_add(1, Ordering::Relaxed);
        on_port(&mem, &rngs, &done, end, mappings, vcpu, p)
    });
    let wall = start.elapsed();
    let watcher = watcher_cpu().saturating_sub(cpu_before);
    for o in outcomes {
        let o = o.expect("vCPU run");
        assert!(o.reports.is_empty() && o.stop.is_none(), "nothing faults");
    }
    let share = if glue {
        let per_exit = glue_time_per_exit(&mut vm);
        let glue_time = per_exit * exits.load(Ordering::Relaxed) as u32 + watcher;
        glue_time.as_secs_f64() / (wall.as_secs_f64() * f64::from(vcpus))
    } else {
        0.0
    };
    Run {
        rate: done.load(Ordering::Relaxed) as f64 / wall.as_secs_f64(),
        share,
    }
}

/// The storm loop's host side for the overhead runs.
fn on_port(
    mem: &GuestMemoryMmap,
    rngs: &[Mutex<Rng>],
    done: &AtomicU64,
    end: Instant,
    mappings: usize,
    vcpu: u32,
    p: u16,
) -> bool {
    match p {
        port::REQUEST => {
            let (gpa, value) = if Instant::now() >= end {
                (0, 0)
            } else {
                let mut rng = rngs[vcpu as usize].lock().expect("rng");
                let off = rng.below(mappings as u64) * MAP_LEN + rng.below(MAP_LEN / 8) * 8;
                (layout::WINDOW_GPA + off, rng.below(2) * 0x5757)
            };
            mailbox(mem, vcpu, gpa, value);
            true
        }
        port::VAL_HI | port::STORED => {
            done.fetch_add(1, Ordering::Relaxed);
            true
        }
        port::SIGBUS | port::EXCEPTION => panic!("vCPU {vcpu} faulted (port {p:#x})"),
        port::DONE => false,
        _ => true,
    }
}

/// Per fault with `mappings` mappings: (median glue time from the report, median round trip
/// request to the guest's #MC handler), over `secs`.
fn per_fault(dir: &Path, mappings: usize, secs: u64) -> (Duration, Duration, usize) {
    let (w, files) = window(dir, mappings);
    let last = files.last().expect("a file");
    last.set_len(0).expect("truncate");
    let in_last = mappings - (files.len() - 1) * PER_FILE;
    let first_of_last = (files.len() - 1) * PER_FILE;
    let setup = VmSetup {
        feature_bit: None,
        policy: FallbackPolicy::Mce,
        window_size: w.size(),
    };
    let mut vm = ReferenceVm::with_guests(&setup, &[guest(0)], Arc::clone(&w)).expect("VM");
    if let Some(sync) = vm.watch_sync() {
        sync.sync(Duration::from_secs(5));
    }
    let mem = vm.mem.clone();
    let mut rng = Rng::new(7);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut asked = Instant::now();
    let mut trips = Vec::new();
    let out = vm
        .run(Duration::from_secs(secs + 30), |p, _| match p {
            port::REQUEST => {
                let gpa = if Instant::now() >= end {
                    0
                } else {
                    let m = first_of_last as u64 + rng.below(in_last as u64);
                    layout::WINDOW_GPA + m * MAP_LEN + rng.below(MAP_LEN / 8) * 8
                };
                mailbox(&mem, 0, gpa, 0);
                asked = Instant::now();
                true
            }
            port::MC_ADDR_LO => {
                trips.push(asked.elapsed());
                true
            }
            port::DONE => false,
            _ => true,
        })
        .expect("run");
    let mut glue: Vec<Duration> = out
        .reports
        .iter()
        .map(|r| Duration::from_nanos(r.latency_ns))
        .collect();
    let n = glue.len();
    (median(&mut glue), median(&mut trips), n)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("glue_overhead: skipped, /dev/kvm is missing");
        return;
    }
    let secs = env("VFSDAX_BENCH_SECS", 2);
    let runs = env("VFSDAX_BENCH_RUNS", 3) as usize;
    let dir = std::env::temp_dir().join(format!("vfsdax-glue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("glue overhead with nothing faulting ({secs} s runs, median of {runs}, alternating)");
    println!(
        "| mappings | vCPUs | accesses/s without glue | with glue | A/B difference | glue share of vCPU time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for mappings in [1usize, 100, 1_000, 10_000] {
        let (w, _files) = window(&dir, mappings);
        // Warm-up: the first VM over a window faults its file pages in.
        throughput(&w, mappings, 2, true, 1);
        for vcpus in [1u32, 2, 4, 8] {
            let (mut with, mut without, mut share) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                without.push(throughput(&w, mappings, vcpus, false, secs).rate);
                let r = throughput(&w, mappings, vcpus, true, secs);
                with.push(r.rate);
                share.push(r.share);
            }
            for v in [&mut with, &mut without, &mut share] {
                v.sort_by(f64::total_cmp);
            }
            let (a, b) = (without[runs / 2], with[runs / 2]);
            println!(
                "| {mappings} | {vcpus} | {a:.0} | {b:.0} | {:+.1} % | {:.3} % |",
                (a - b) / a * 100.0,
                share[runs / 2] * 100.0
            );
        }
    }
    println!();
    println!("cost per fault (machine check, kernel-mode load of a page of a file truncated to 0)");
    println!(
        "| mappings | faults | glue time per fault (median) | request to #MC handler (median) |"
    );
    println!("|---:|---:|---:|---:|");
    for mappings in [1usize, 100, 1_000, 10_000] {
        let (glue, trip, n) = per_fault(&dir, mappings, secs);
        println!(
            "| {mappings} | {n} | {:.1} µs | {:.1} µs |",
            glue.as_secs_f64() * 1e6,
            trip.as_secs_f64() * 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
