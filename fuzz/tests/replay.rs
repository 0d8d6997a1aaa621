//! Replays every file of `corpus/<target>/` (the seeds, and whatever a fuzzing run added) and
//! of `regressions/<target>/` (inputs that once failed) through the harnesses, without
//! libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`. `VFSDAX_FUZZ_REPLAY=seed-` replays
//! only the files whose name contains that string (`VFSDAX_FUZZ_TRACE=1` makes `fuse_server`
//! print each request's reply).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        let only = std::env::var("VFSDAX_FUZZ_REPLAY").unwrap_or_default();
        for p in paths {
            if !p.to_string_lossy().contains(&only) {
                continue;
            }
            // A fuzzing run going on may remove corpus files meanwhile.
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            eprintln!("{target}: {}", p.display());
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no input for {target}");
}

#[test]
fn fuse_server() {
    replay("fuse_server", vfsdax_fuzz::fuse_server::run);
}

#[test]
fn chain_layouts() {
    replay("chain_layouts", vfsdax_fuzz::chain_layouts::run);
}

#[test]
fn shmem_handler() {
    replay("shmem_handler", vfsdax_fuzz::shmem_handler::run);
}

#[test]
fn fault_classifier() {
    replay("fault_classifier", vfsdax_fuzz::fault_classifier::run);
}

#[test]
fn insn_decoder() {
    replay("insn_decoder", vfsdax_fuzz::insn_decoder::run);
}
