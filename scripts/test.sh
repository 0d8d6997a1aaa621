#!/usr/bin/env bash
# Runs the whole test suite, after installing what the tests need if it is missing
# (scripts/deps.sh: QEMU, busybox-static, the guest kernel). Extra arguments go to `cargo test`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Every binary, the guest-* tools of the scripts included (the tests would build vfsdaxd and
# vfsdax-vmm themselves when missing or stale: tests/src/bins.rs).
cargo build --workspace --bins
cargo test --workspace "$@"
# Style gates CI holds every change to (skip locally with VFSDAX_NO_LINT=1).
if [ -z "${VFSDAX_NO_LINT:-}" ]; then
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
fi
# Fuzzing (scripts/fuzz.sh, docs/FUZZING.md): each fuzz target runs VFSDAX_FUZZ_SECONDS
# seconds (15 by default), always in CI, locally only when VFSDAX_FUZZ_SECONDS is set.
if [ -n "${VFSDAX_FUZZ_SECONDS:-}" ] || [ -n "${CI:-}" ]; then
    scripts/fuzz.sh "${VFSDAX_FUZZ_SECONDS:-15}"
fi
