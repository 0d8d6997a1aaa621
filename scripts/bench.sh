#!/usr/bin/env bash
# Benchmark: vfsdaxd against virtiofsd 1.14 side by side, no VM: the host-side virtio-fs driver
# (vfsdax-driver) is the frontend, over a real vhost-user socket and split rings in shared
# memory (vmm-glue/fsbench, binary vfsdax-fsbench). Rows: GETATTR, LOOKUP, CREATE+RELEASE+UNLINK,
# READ and WRITE of 4 KiB and 1 MiB, READDIRPLUS of 1,000 entries, SETATTR, a small-file mix;
# each at queue depth 1 and 32, with 1 and 2 worker threads; the daemons alternate, both with
# --cache auto and their default sandbox and seccomp, each on its own copy of the share. Prints
# the medians, their spread, the ratio vfsdaxd/virtiofsd per cell and the host's memcpy bandwidth.
# See docs/PERFORMANCE.md, "Side by side with virtiofsd".
#
# Usage: scripts/bench.sh [--quick] [vfsdax-fsbench options: --runs N, --secs S, --rows LIST,
#        --depths LIST, --threads LIST, --share-in DIR, --no-pin, --reference PATH]
# Needs root (both daemons' default sandboxes do). Installs virtiofsd 1.14.0 with
# `cargo install` when it is missing (after the Debian packages its build needs). About 5
# minutes with the defaults (5 runs); --quick is a smoke check of about 35 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
say() { echo "bench: $*"; }

reference=()
for a in "$@"; do
    [ "$a" = --reference ] && reference=(given)
done
if [ ${#reference[@]} -eq 0 ]; then
    virtiofsd_version=1.14.0
    virtiofsd=$(command -v virtiofsd || true)
    [ -n "$virtiofsd" ] || virtiofsd=$HOME/.cargo/bin/virtiofsd
    if [ ! -x "$virtiofsd" ]; then
        missing=()
        for p in libseccomp-dev libcap-ng-dev; do
            dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            say "installing ${missing[*]} (virtiofsd's build needs them)"
            sudo=()
            [ "$(id -u)" -eq 0 ] || sudo=(sudo)
            "${sudo[@]}" apt-get install -y "${missing[@]}" >/dev/null
        fi
        say "installing virtiofsd $virtiofsd_version: cargo install virtiofsd --version $virtiofsd_version --locked"
        cargo install virtiofsd --version "$virtiofsd_version" --locked
        virtiofsd=$HOME/.cargo/bin/virtiofsd
    fi
    reference=(--reference "$virtiofsd")
else
    reference=()
fi
[ "$(id -u)" -eq 0 ] || say "not root: the daemons' default sandboxes will likely refuse to start"

target=${CARGO_TARGET_DIR:-target}
say "building vfsdaxd and vfsdax-fsbench in release mode"
cargo build --release -p vfsdax-daemon --bin vfsdaxd -p vfsdax-fsbench --bin vfsdax-fsbench
exec "$target/release/vfsdax-fsbench" --vfsdaxd "$target/release/vfsdaxd" "${reference[@]}" "$@"
