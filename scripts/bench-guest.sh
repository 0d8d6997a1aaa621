#!/usr/bin/env bash
# Benchmark: our vfsdaxd against the reference virtiofsd on a real Linux guest (QEMU TCG), share
# on tmpfs, alternating the daemons for a few rounds; prints per workload the median seconds
# of each and the ratio vfsdaxd/virtiofsd (tests/src/bin/guest-bench.rs, tests/guest/bench.sh).
# Then the DAX reads: sequential and random reads of a 64 MiB file under QEMU 11.1 through
# vfsdaxd's DAX window (dax=always, dax=inode), without it (dax=never) and through virtiofsd;
# prints the median MiB/s, the spread and the ratio to virtiofsd
# (tests/src/bin/guest-dax-bench.rs, tests/guest/daxbench.sh).
# Installs what it needs first (scripts/deps.sh; virtiofsd 1.14.0 with `cargo install` if it
# is missing) and builds vfsdaxd in release mode. Extra arguments go to guest-bench:
# --rounds N (default 3), --vfsdaxd PATH, --virtiofsd PATH, --share-in DIR, --help.
# VFSDAX_DAX_ROUNDS sets guest-dax-bench's rounds (default 5; 0 skips it).
# Takes several minutes on a busy 2-core machine.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
say() { echo "bench-guest: $*"; }

virtiofsd_version=1.14.0
if command -v virtiofsd >/dev/null || [ -x "$HOME/.cargo/bin/virtiofsd" ]; then
    say "virtiofsd already installed"
else
    say "installing virtiofsd $virtiofsd_version: cargo install virtiofsd --version $virtiofsd_version"
    say "(needs libseccomp-dev and libcap-ng-dev, which scripts/deps.sh installed)"
    cargo install --locked virtiofsd --version "$virtiofsd_version"
fi

target=${CARGO_TARGET_DIR:-target}
say "building vfsdaxd in release mode"
cargo build --release -p vfsdax-daemon --bin vfsdaxd
say "building guest-bench and guest-dax-bench"
cargo build -p vfsdax-tests --bin guest-bench --bin guest-dax-bench
say "running guest-bench $*"
"$target/debug/guest-bench" --vfsdaxd "$target/release/vfsdaxd" "$@"
dax_rounds=${VFSDAX_DAX_ROUNDS:-5}
if [ "$dax_rounds" != 0 ]; then
    say "running guest-dax-bench --rounds $dax_rounds"
    "$target/debug/guest-dax-bench" --vfsdaxd "$target/release/vfsdaxd" --rounds "$dax_rounds"
fi
