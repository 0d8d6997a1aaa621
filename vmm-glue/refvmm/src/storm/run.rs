//! Running the storm: set-up through the daemon, the vCPUs' draws, the host's file changes, the
//! event log, tear-down and the leak checks.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vfsdax_protocol::fuse::flags::{fattr, SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{RemoveMappingOne, SetattrIn, SetupMappingIn, ROOT_ID};
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::oracle::{
    file_word, judge_vcpu, store_word, Access, Incarnation, Outcome, SeenReport, SizeChange,
    SizeHistory, Tally, Verdict,
};
use super::{guest_model, Rng};
use crate::daemon::{connect_dax, req, DaemonError, CHUNK, LINUX_FH};
use crate::guest::{layout, port};
use crate::vm::{ReferenceVm, VmError, VmSetup};
use vfsdax_driver::FsClient;
use vfsdax_vmm_glue::kvm::VcpuOps;

/// What to run.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// vfsdaxd's socket (started with a DAX window of at least `files * chunks_per_file` 2 MiB
    /// chunks and `--truncate-guard off`, so the glue alone answers for lost pages).
    pub socket: PathBuf,
    /// The share's host directory (the storm creates its files there).
    pub share: PathBuf,
    /// The serving daemon's pid, to check its descriptors do not leak.
    pub daemon_pid: Option<u32>,
    /// How long the vCPUs and the host threads run.
    pub duration: Duration,
    /// vCPU threads (at most [`layout::MAX_VCPUS`]).
    pub vcpus: u32,
    /// Files.
    pub files: u32,
    /// 2 MiB mappings per file (each file is this many chunks long).
    pub chunks_per_file: u32,
    /// Host threads changing files.
    pub mutators: u32,
    /// Pause of a host thread between two changes.
    pub pause: Duration,
    /// Seed of every draw.
    pub seed: u64,
}

/// Errors that stop the storm before it can be judged.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    /// Talking to the daemon failed.
    #[error("the daemon connection failed")]
    Daemon(#[from] DaemonError),
    /// The VM could not be built.
    #[error("the reference VM failed")]
    Vm(#[from] VmError),
    /// A storm file could not be written.
    #[error("cannot prepare {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot run.
    #[error("the storm configuration is not runnable: {0}")]
    Config(String),
}

/// Host-side changes made, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `ftruncate` to a smaller size by a host process.
    pub host_truncations: u64,
    /// Truncations through FUSE SETATTR.
    pub fuse_truncations: u64,
    /// Regrowths to the full size.
    pub regrowths: u64,
    /// Holes punched (`fallocate`, size kept).
    pub holes: u64,
    /// Files unlinked, recreated and remapped through the daemon.
    pub recreations: u64,
}

/// What the storm did and the verdict.
#[derive(Debug)]
pub struct StormResult {
    /// The judge's verdict, with the leak checks' and the run's failures added.
    pub verdict: Verdict,
    /// Host-side changes.
    pub changes: Changes,
    /// Size changes that shrank a mapped file (host and FUSE).
    pub shrinks: u64,
    /// Accesses per vCPU.
    pub per_vcpu: Vec<u64>,
    /// Mappings in the window during the storm.
    pub mappings: usize,
    /// Distinct files the window kept during the storm (one descriptor each).
    pub files_kept: usize,
    /// How long the vCPUs ran.
    pub elapsed: Duration,
}

impl StormResult {
    /// What the judge counted.
    pub fn tally(&self) -> &Tally {
        &self.verdict.tally
    }
}

/// One window slot: a 2 MiB chunk of a file.
struct Slot {
    file: u32,
    foffset: u64,
    moffset: u64,
    ino: AtomicU64,
    gen: AtomicU32,
    busy: AtomicBool,
    inflight: AtomicU32,
}

/// A storm file as the host threads see it.
struct StormFile {
    path: PathBuf,
    name: Vec<u8>,
    file: File,
    gen: u32,
    nodeid: u64,
    fh: u64,
    ino: u64,
    histories: Vec<(Incarnation, SizeHistory)>,
}

impl StormFile {
    fn history(&mut self) -> &mut SizeHistory {
        &mut self
            .histories
            .last_mut()
            .expect("a storm file has a history")
            .1
    }
}

/// The access a vCPU has in flight.
struct Pending {
    slot: usize,
    access: Access,
    lo: Option<u32>,
}

struct VcpuState {
    rng: Rng,
    stores: u32,
    pending: Option<Pending>,
    log: Vec<Access>,
}

struct Shared<'a> {
    cfg: &'a StormConfig,
    end: Instant,
    full: u64,
    /// The device of every storm file (they share one directory).
    dev: u64,
    slots: Vec<Slot>,
    files: Vec<Mutex<StormFile>>,
    client: Mutex<FsClient>,
    changes: Mutex<Changes>,
    failures: Mutex<Vec<String>>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> StormError + '_ {
    move |source| StormError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes file `idx`, generation `gen`: `full` bytes of its pattern words.
fn write_file(path: &Path, idx: u32, gen: u32, full: u64) -> Result<File, StormError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(file_err(path))?;
    let mut bytes = Vec::with_capacity(full as usize);
    for off in (0..full).step_by(8) {
        bytes.extend_from_slice(&file_word(idx, gen, off).to_le_bytes());
    }
    f.write_all(&bytes).map_err(file_err(path))?;
    Ok(f)
}

fn fd_count(pid: Option<u32>) -> Option<usize> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/fd"),
        None => "/proc/self/fd".into(),
    };
    std::fs::read_dir(dir).ok().map(|d| d.count())
}

/// Looks a storm file up, opens it and maps its chunks into its slots.
fn map_file(
    client: &mut FsClient,
    f: &mut StormFile,
    slots: &[Slot],
    idx: u32,
) -> Result<(), DaemonError> {
    let name = String::from_utf8_lossy(&f.name).into_owned();
    f.nodeid = client
        .lookup(ROOT_ID, &f.name)
        .map_err(req(format!("LOOKUP {name}")))?
        .nodeid;
    f.fh = client
        .open(f.nodeid, libc::O_RDWR as u32)
        .map_err(req(format!("OPEN {name}")))?
        .fh;
    for s in slots.iter().filter(|s| s.file == idx) {
        let arg = SetupMappingIn {
            fh: LINUX_FH,
            foffset: s.foffset,
            len: CHUNK,
            flags: SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE,
            moffset: s.moffset,
        };
        client
            .setupmapping(f.nodeid, &arg)
            .map_err(req(format!("SETUPMAPPING {name}")))?;
        s.ino.store(f.ino, Ordering::SeqCst);
        s.gen.store(f.gen, Ordering::SeqCst);
    }
    Ok(())
}

/// Removes a file's mappings, releases its handle and forgets its node.
fn unmap_file(client: &mut FsClient, f: &StormFile, slots: &[Slot], idx: u32) -> Vec<String> {
    let ranges: Vec<RemoveMappingOne> = slots
        .iter()
        .filter(|s| s.file == idx)
        .map(|s| RemoveMappingOne {
            moffset: s.moffset,
            len: CHUNK,
        })
        .collect();
    let mut errs = Vec::new();
    if let Err(e) = client.removemapping(f.nodeid, &ranges) {
        errs.push(format!("REMOVEMAPPING of file {idx}: {e}"));
    }
    if let Err(e) = client.release(f.nodeid, f.fh, libc::O_RDWR as u32) {
        errs.push(format!("RELEASE of file {idx}: {e}"));
    }
    if let Err(e) = client.forget(f.nodeid, 1) {
        errs.push(format!("FORGET of file {idx}: {e}"));
    }
    errs
}

/// Runs the storm described by `cfg` against the daemon at `cfg.socket`.
pub fn run(cfg: &StormConfig) -> Result<StormResult, StormError> {
    if cfg.vcpus == 0 || cfg.vcpus > layout::MAX_VCPUS || cfg.files == 0 || cfg.files > 255 {
        return Err(StormError::Config(format!(
            "{} vCPUs (1 to {}), {} files (1 to 255)",
            cfg.vcpus,
            layout::MAX_VCPUS,
            cfg.files
        )));
    }
    let full = u64::from(cfg.chunks_per_file.max(1)) * CHUNK;
    let nslots = cfg.files * cfg.chunks_per_file.max(1);
    let vmm_fds_before = fd_count(None);
    let mut files = Vec::new();
    let mut dev = 0;
    for idx in 0..cfg.files {
        let name = format!("storm-{idx}.bin");
        let path = cfg.share.join(&name);
        let file = write_file(&path, idx, 0, full)?;
        let md = file.metadata().map_err(file_err(&path))?;
        dev = md.dev();
        files.push(StormFile {
            path,
            name: name.into_bytes(),
            file,
            gen: 0,
            nodeid: 0,
            fh: 0,
            ino: md.ino(),
            histories: vec![((idx, 0), SizeHistory::new(full))],
        });
    }
    let slots: Vec<Slot> = (0..nslots)
        .map(|i| Slot {
            file: i / cfg.chunks_per_file.max(1),
            foffset: u64::from(i % cfg.chunks_per_file.max(1)) * CHUNK,
            moffset: u64::from(i) * CHUNK,
            ino: AtomicU64::new(0),
            gen: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
        })
        .collect();
    let (dax, mut client) = connect_dax(
        &cfg.socket,
        Duration::from_secs(10),
        u64::from(nslots) * CHUNK,
    )?;
    for (idx, f) in (0u32..).zip(files.iter_mut()) {
        map_file(&mut client, f, &slots, idx)?;
    }
    let daemon_fds_before = fd_count(cfg.daemon_pid);
    let window = dax.window().clone();
    let mappings = window.table().len();
    let files_kept = window.table().distinct_files();
    let guests: Vec<_> = (0..cfg.vcpus).map(|v| guest_model(v).0).collect();
    let setup = VmSetup {
        feature_bit: Some(vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
        policy: FallbackPolicy::Mce,
        window_size: window.size(),
    };
    let mut vm = ReferenceVm::with_guests(&setup, &guests, window.clone())?;
    vm.add_ram(client.memory().memory())?;
    let mem = vm.mem.clone();

    let shared = Shared {
        cfg,
        end: Instant::now() + cfg.duration,
        full,
        dev,
        slots,
        files: files.into_iter().map(Mutex::new).collect(),
        client: Mutex::new(client),
        changes: Mutex::new(Changes::default()),
        failures: Mutex::new(Vec::new()),
    };
    let states: Vec<Mutex<VcpuState>> = (0..cfg.vcpus)
        .map(|v| {
            Mutex::new(VcpuState {
                rng: Rng::new(cfg.seed ^ (u64::from(v) << 32)),
                stores: 0,
                pending: None,
                log: Vec::new(),
            })
        })
        .collect();
    let started = Instant::now();
    let outcomes = std::thread::scope(|s| {
        for m in 0..cfg.mutators {
            let shared = &shared;
            s.spawn(move || mutate(shared, Rng::new(cfg.seed.rotate_left(17) ^ u64::from(m))));
        }
        vm.run_all(cfg.duration + Duration::from_secs(30), |vcpu, p, v| {
            let mut st = states[vcpu as usize].lock().expect("vCPU state");
            on_port(&shared, &mem, vcpu, &mut st, p, v)
        })
    });
    let elapsed = started.elapsed();
    let daemon_fds_after = fd_count(cfg.daemon_pid);
    if daemon_fds_after != daemon_fds_before {
        shared.failures.lock().expect("failures").push(format!(
            "the daemon had {daemon_fds_before:?} descriptors once the files were mapped and \
             {daemon_fds_after:?} after the storm"
        ));
    }

    let mut verdict = Verdict::default();
    let mut sizes: HashMap<Incarnation, SizeHistory> = HashMap::new();
    for f in &shared.files {
        let f = f.lock().expect("storm file");
        sizes.extend(f.histories.iter().cloned());
    }
    let shrinks = sizes.values().map(|h| h.shrinks() as u64).sum();
    let mut per_vcpu = Vec::new();
    for (vcpu, (outcome, st)) in (0u32..).zip(outcomes.into_iter().zip(states)) {
        let mut st = st.into_inner().expect("vCPU state");
        if let Some(p) = st.pending.take() {
            st.log.push(p.access);
        }
        per_vcpu.push(st.log.len() as u64);
        let reports: Vec<SeenReport> = match outcome {
            Ok(o) => {
                if let Some(d) = o.stop {
                    verdict
                        .violations
                        .push(format!("vCPU {vcpu} stopped: {d:?}"));
                }
                o.reports
                    .into_iter()
                    .zip(o.report_exit_at)
                    .map(|(report, at)| SeenReport { at, report })
                    .collect()
            }
            Err(e) => {
                // Its reports went with the run: judge nothing else of it, say where it stuck.
                let v = &vm.vcpus[vcpu as usize];
                let rip = v.vcpu.snapshot().regs.rip;
                let last = st.log.last();
                let fenced = last.map(|a| v.handler.shared().is_fenced(a.window_offset));
                let size = last.and_then(|a| {
                    let f = shared.files[a.file as usize].lock().ok()?;
                    (f.gen == a.gen).then(|| f.file.metadata().ok().map(|m| m.len()))?
                });
                let word = |a: u64| -> u32 {
                    mem.read_obj(GuestAddress(layout::private(vcpu, a)))
                        .unwrap_or(u32::MAX)
                };
                let tokens = (
                    word(layout::SLEEP_TOKEN),
                    word(layout::WOKEN_TOKEN),
                    word(layout::APF_DATA),
                    word(layout::APF_DATA + 4),
                );
                let mapped = last.map(|a| {
                    window
                        .table()
                        .lookup(a.window_offset)
                        .map(|m| (m.identity, m.map_id))
                });
                verdict.violations.push(format!(
                    "vCPU {vcpu} failed: {e}; its last access: {last:?} (RIP {rip:#x}, the \
                     access instruction at {:#x}; the range fenced: {fenced:?}; the file now \
                     {size:?} bytes; mapped there: {mapped:?}; guest sleep/woken token, apf \
                     flags and token: {tokens:x?}); glue counters: {:?}; watcher: {:?}",
                    v.image.access_rip,
                    v.handler.counters(),
                    vm.watch_stats()
                ));
                continue;
            }
        };
        judge_vcpu(&st.log, &reports, guest_model(vcpu).1, &sizes, &mut verdict);
    }
    verdict
        .violations
        .extend(shared.failures.lock().expect("failures").drain(..));

    // Tear-down: every mapping removed through the daemon, the window empty, no descriptor left.
    drop(vm);
    let Shared {
        files,
        client,
        slots,
        changes,
        ..
    } = shared;
    let mut client = client.into_inner().expect("client");
    for (idx, f) in (0u32..).zip(files) {
        let f = f.into_inner().expect("storm file");
        verdict
            .violations
            .extend(unmap_file(&mut client, &f, &slots, idx));
    }
    // Removed ranges are remembered (to name the file of a later access there), one descriptor
    // per file at most; forgetting them closes the last.
    let remembered = window.kept_files();
    window.table().forget_unmapped();
    if !window.table().is_empty() || remembered > cfg.files as usize || window.kept_files() != 0 {
        verdict.violations.push(format!(
            "after REMOVEMAPPING of every slot the window has {} mappings and keeps {remembered} \
             files ({} once it forgets removed ranges)",
            window.table().len(),
            window.kept_files()
        ));
    }
    drop(window);
    drop(dax.stop());
    drop(client);
    let vmm_fds_after = fd_count(None);
    if vmm_fds_after != vmm_fds_before {
        verdict.violations.push(format!(
            "the VMM had {vmm_fds_before:?} descriptors before the storm and {vmm_fds_after:?} after"
        ));
    }
    Ok(StormResult {
        verdict,
        changes: changes.into_inner().expect("changes"),
        shrinks,
        per_vcpu,
        mappings,
        files_kept,
        elapsed,
    })
}

/// A vCPU's port write: hand out the next access, or take the outcome of the one in flight.
fn on_port(
    sh: &Shared<'_>,
    mem: &GuestMemoryMmap,
    vcpu: u32,
    st: &mut VcpuState,
    p: u16,
    v: u32,
) -> bool {
    let now = Instant::now();
    let finish = |st: &mut VcpuState, outcome: Outcome| {
        if let Some(mut pending) = st.pending.take() {
            pending.access.t1 = now;
            pending.access.outcome = outcome;
            sh.slots[pending.slot]
                .inflight
                .fetch_sub(1, Ordering::SeqCst);
            st.log.push(pending.access);
            true
        } else {
            false
        }
    };
    match p {
        port::REQUEST => {
            if let Some(stale) = st.pending.take() {
                sh.slots[stale.slot].inflight.fetch_sub(1, Ordering::SeqCst);
                st.log.push(stale.access);
            }
            let mailbox = layout::private(vcpu, layout::MAILBOX);
            let (gpa, value) = if now >= sh.end {
                (0, 0)
            } else {
                let pending = draw(sh, vcpu, st, now);
                let gpa = layout::WINDOW_GPA + pending.access.window_offset;
                let value = if pending.access.store {
                    st.stores += 1;
                    store_word(vcpu, st.stores, pending.access.file_offset)
                } else {
                    0
                };
                st.pending = Some(pending);
                (gpa, value)
            };
            let written = mem
                .write_obj(gpa, GuestAddress(mailbox))
                .and_then(|()| mem.write_obj(value, GuestAddress(mailbox + 8)));
            if written.is_err() {
                sh.failures
                    .lock()
                    .expect("failures")
                    .push(format!("vCPU {vcpu}: cannot write its mailbox"));
                return false;
            }
            if let Some(pending) = &mut st.pending {
                pending.access.t0 = Instant::now();
            }
            true
        }
        port::VAL_LO => {
            if let Some(pending) = &mut st.pending {
                pending.lo = Some(v);
            }
            true
        }
        port::VAL_HI => {
            let lo = st.pending.as_ref().and_then(|p| p.lo).unwrap_or(0);
            finish(st, Outcome::Loaded(u64::from(lo) | (u64::from(v) << 32)));
            true
        }
        port::STORED => {
            finish(st, Outcome::Stored);
            true
        }
        port::SIGBUS => {
            if !finish(st, Outcome::Killed(v)) {
                sh.failures.lock().expect("failures").push(format!(
                    "vCPU {vcpu}: a task was killed ({v}) with no access in flight"
                ));
            }
            true
        }
        port::EXCEPTION => {
            if !finish(st, Outcome::Exception(v)) {
                sh.failures
                    .lock()
                    .expect("failures")
                    .push(format!("vCPU {vcpu}: unexpected exception {v}"));
            }
            true
        }
        port::DONE => false,
        _ => true,
    }
}

/// Draws the next access: a slot not being remapped, a page of it, load or store.
fn draw(sh: &Shared<'_>, vcpu: u32, st: &mut VcpuState, now: Instant) -> Pending {
    let n = sh.slots.len() as u64;
    let mut idx = st.rng.below(n) as usize;
    loop {
        let s = &sh.slots[idx];
        s.inflight.fetch_add(1, Ordering::SeqCst);
        if !s.busy.load(Ordering::SeqCst) {
            break;
        }
        s.inflight.fetch_sub(1, Ordering::SeqCst);
        idx = (idx + 1) % sh.slots.len();
    }
    let s = &sh.slots[idx];
    let within = st.rng.below(CHUNK / 8) * 8;
    Pending {
        slot: idx,
        lo: None,
        access: Access {
            vcpu,
            file: s.file,
            gen: s.gen.load(Ordering::SeqCst),
            inode: (sh.dev, s.ino.load(Ordering::SeqCst)),
            window_offset: s.moffset + within,
            file_offset: s.foffset + within,
            store: st.rng.below(2) == 1,
            t0: now,
            t1: now,
            outcome: Outcome::Unfinished,
        },
    }
}

/// A host thread: change random files until the storm ends.
fn mutate(sh: &Shared<'_>, mut rng: Rng) {
    while Instant::now() < sh.end {
        let idx = rng.below(sh.files.len() as u64) as u32;
        let roll = rng.below(100);
        let result = {
            let mut f = sh.files[idx as usize].lock().expect("storm file");
            match roll {
                0..=34 => shrink_on_host(sh, &mut f, &mut rng),
                35..=64 => regrow(sh, &mut f),
                65..=74 => shrink_on_host(sh, &mut f, &mut rng).and_then(|()| regrow(sh, &mut f)),
                75..=89 => punch(sh, &mut f, &mut rng),
                90..=97 => shrink_by_fuse(sh, &mut f, &mut rng),
                _ => recreate(sh, &mut f, idx),
            }
        };
        if let Err(e) = result {
            sh.failures
                .lock()
                .expect("failures")
                .push(format!("host change of file {idx}: {e}"));
            return;
        }
        std::thread::sleep(sh.cfg.pause);
    }
}

fn timed(
    f: &mut StormFile,
    size: u64,
    op: impl FnOnce(&File) -> std::io::Result<()>,
) -> Result<(), String> {
    let start = Instant::now();
    op(&f.file).map_err(|e| e.to_string())?;
    let end = Instant::now();
    f.history().push(SizeChange { start, end, size });
    Ok(())
}

fn random_size(rng: &mut Rng, full: u64) -> u64 {
    if rng.below(2) == 0 {
        rng.below(full / 4096) * 4096
    } else {
        rng.below(full)
    }
}

fn shrink_on_host(sh: &Shared<'_>, f: &mut StormFile, rng: &mut Rng) -> Result<(), String> {
    let size = random_size(rng, sh.full);
    timed(f, size, |file| file.set_len(size))?;
    sh.changes.lock().expect("changes").host_truncations += 1;
    Ok(())
}

fn regrow(sh: &Shared<'_>, f: &mut StormFile) -> Result<(), String> {
    let full = sh.full;
    timed(f, full, |file| file.set_len(full))?;
    sh.changes.lock().expect("changes").regrowths += 1;
    Ok(())
}

fn punch(sh: &Shared<'_>, f: &mut StormFile, rng: &mut Rng) -> Result<(), String> {
    let start = rng.below(sh.full / 4096) * 4096;
    let len = (rng.below(16) + 1) * 4096;
    // SAFETY: fallocate on a descriptor this storm file owns; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            start as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    sh.changes.lock().expect("changes").holes += 1;
    Ok(())
}

fn shrink_by_fuse(sh: &Shared<'_>, f: &mut StormFile, rng: &mut Rng) -> Result<(), String> {
    let size = random_size(rng, sh.full);
    let arg = SetattrIn {
        valid: fattr::SIZE,
        size,
        ..SetattrIn::default()
    };
    let mut client = sh.client.lock().expect("client");
    let start = Instant::now();
    client
        .setattr(f.nodeid, &arg)
        .map_err(|e| format!("SETATTR size={size}: {e}"))?;
    let end = Instant::now();
    drop(client);
    f.history().push(SizeChange { start, end, size });
    sh.changes.lock().expect("changes").fuse_truncations += 1;
    // The daemon changed this file, not another one.
    let now = f.file.metadata().map_err(|e| e.to_string())?.len();
    if now != size {
        return Err(format!(
            "SETATTR size={size} on node {} left the file {now} bytes long",
            f.nodeid
        ));
    }
    Ok(())
}

/// Unlinks the file, creates a new one under the name and remaps its slots through the daemon;
/// its slots are out of the draw meanwhile.
fn recreate(sh: &Shared<'_>, f: &mut StormFile, idx: u32) -> Result<(), String> {
    let mine: Vec<&Slot> = sh.slots.iter().filter(|s| s.file == idx).collect();
    for s in &mine {
        s.busy.store(true, Ordering::SeqCst);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while mine.iter().any(|s| s.inflight.load(Ordering::SeqCst) > 0) {
        if Instant::now() > deadline {
            return Err("an access to a slot being remapped never finished".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut client = sh.client.lock().expect("client");
    let errs = unmap_file(&mut client, f, &sh.slots, idx);
    if let Some(e) = errs.into_iter().next() {
        return Err(e);
    }
    std::fs::remove_file(&f.path).map_err(|e| format!("unlink: {e}"))?;
    f.gen += 1;
    f.file = write_file(&f.path, idx, f.gen, sh.full).map_err(|e| e.to_string())?;
    let md = f.file.metadata().map_err(|e| e.to_string())?;
    f.ino = md.ino();
    f.histories.push(((idx, f.gen), SizeHistory::new(sh.full)));
    map_file(&mut client, f, &sh.slots, idx).map_err(|e| e.to_string())?;
    drop(client);
    for s in &mine {
        s.busy.store(false, Ordering::SeqCst);
    }
    sh.changes.lock().expect("changes").recreations += 1;
    Ok(())
}
