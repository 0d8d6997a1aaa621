//! SETUPMAPPING round trip against a GETATTR round trip, measured in the same run (not a timed
//! test: it prints, it asserts nothing about speed).
//!
//! `cargo bench -p vfsdax-tests --bench dax_roundtrip` builds `vfsdaxd` in release mode (unless
//! `VFSDAX_DAEMON` names a daemon), starts it with `--cache-size 64M`, connects the host-side
//! virtio-fs driver and the VMM library's DAX window (`dax::connect`), and times, interleaved in
//! each iteration:
//! - GETATTR of a file (request → daemon `fstat` → reply);
//! - SETUPMAPPING of a 2 MiB range with `fh = -1` as Linux sends it (request → daemon opens the
//!   inode → `SHMEM_MAP` with the fd over the backend channel → glue validates, `MAP_FIXED`,
//!   records the mapping → ack → reply), and with a real handle (no open);
//! - REMOVEMAPPING of that range (`SHMEM_UNMAP`, placeholder back).
//!
//! Each figure is the median of `VFSDAX_BENCH_N` (default 2,000) samples, in µs.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use vfsdax_driver::ClientOptions;
use vfsdax_protocol::fuse::flags::SETUPMAPPING_FLAG_READ;
use vfsdax_protocol::fuse::{RemoveMappingOne, SetupMappingIn, ROOT_ID};
use vfsdax_tests::harness::{error_chain, DaemonOptions, Session, DAEMON_ENV};
use vfsdax_vmm_glue::dax::{connect, ConnectOptions};

const MIB2: u64 = 2 << 20;
const SLOTS: u64 = 32;
const WARMUP: usize = 100;

fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Builds the release daemon next to this benchmark (`target/release/vfsdaxd`), unless the
/// environment names another daemon.
fn build_daemon() -> Result<(), String> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        return Ok(());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "vfsdax-daemon", "--bin"])
        .arg("vfsdaxd")
        .status()
        .map_err(|e| format!("cannot run cargo to build vfsdaxd: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building vfsdaxd failed ({status})"))
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    if let Err(e) = build_daemon() {
        eprintln!("dax_roundtrip: {e}");
        return ExitCode::FAILURE;
    }
    let n: usize = std::env::var("VFSDAX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2_000);
    let dopts = DaemonOptions {
        extra_args: vec!["--cache-size".into(), "64M".into()],
        ..Default::default()
    };
    let mut s = Session::start_with(&dopts, ClientOptions::default());
    let conn = match connect(
        s.client.frontend_mut().frontend_mut(),
        ConnectOptions {
            reply_ack: true,
            observer: None,
            ..Default::default()
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dax_roundtrip: dax::connect: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    std::fs::write(s.host("data"), vec![0x5a; (8 * MIB2) as usize]).expect("host file");
    let node = s.client.lookup(ROOT_ID, b"data").expect("LOOKUP").nodeid;
    let fh = s.client.open(node, libc::O_RDONLY as u32).expect("OPEN").fh;

    let mut getattr = Vec::with_capacity(n);
    let mut setup_nofh = Vec::with_capacity(n);
    let mut setup_fh = Vec::with_capacity(n);
    let mut remove = Vec::with_capacity(2 * n);
    for i in 0..WARMUP + n {
        let slot = (i as u64 % SLOTS) * MIB2;
        let foffset = (i as u64 % 4) * MIB2;
        let keep = i >= WARMUP;

        let t = Instant::now();
        s.client.getattr(node, None).expect("GETATTR");
        let d_getattr = t.elapsed();

        let mut round = |handle: u64| {
            let arg = SetupMappingIn {
                fh: handle,
                foffset,
                len: MIB2,
                flags: SETUPMAPPING_FLAG_READ,
                moffset: slot,
            };
            let t = Instant::now();
            s.client.setupmapping(node, &arg).expect("SETUPMAPPING");
            let d_setup = t.elapsed();
            let one = [RemoveMappingOne {
                moffset: slot,
                len: MIB2,
            }];
            let t = Instant::now();
            s.client
                .removemapping(ROOT_ID, &one)
                .expect("REMOVEMAPPING");
            (d_setup, t.elapsed())
        };
        let (d_nofh, r1) = round(u64::MAX);
        let (d_fh, r2) = round(fh);
        if keep {
            getattr.push(d_getattr);
            setup_nofh.push(d_nofh);
            setup_fh.push(d_fh);
            remove.extend([r1, r2]);
        }
    }
    let stats = conn.handler().stats();
    assert!(conn.window().table().is_empty(), "mappings left behind");
    assert_eq!(stats.refused + stats.failed, 0, "the glue refused requests");

    let g = median_us(&mut getattr);
    let a = median_us(&mut setup_nofh);
    let b = median_us(&mut setup_fh);
    let r = median_us(&mut remove);
    println!("dax_roundtrip: median of {n} samples each, 2 MiB ranges, window 64 MiB");
    println!("  GETATTR                    {g:8.1} us");
    println!(
        "  SETUPMAPPING (fh=-1)       {a:8.1} us   {:5.2} x GETATTR",
        a / g
    );
    println!(
        "  SETUPMAPPING (handle)      {b:8.1} us   {:5.2} x GETATTR",
        b / g
    );
    println!(
        "  REMOVEMAPPING              {r:8.1} us   {:5.2} x GETATTR",
        r / g
    );
    println!(
        "  glue: {} maps, {} unmaps, {} refused, {} failed",
        stats.maps, stats.unmaps, stats.refused, stats.failed
    );
    drop(conn);
    ExitCode::SUCCESS
}
