#!/usr/bin/env bash
# The truncation repro on a stock VMM: a real Linux guest under QEMU >= 11.1 (Debian sid's,
# installed by scripts/deps.sh) maps an 8 MiB file through vfsdaxd's DAX window and reads it, a
# host process truncates the file to 0, the guest task reads the same page again. Prints one
# line a script can check:
#   repro-truncate-qemu: vm=killed qemu=SIGBUS(exit-135) task=none share=unknown
# (QEMU killed, the whole VM gone) or vm=alive ... with the guest task's and the share's fate.
# Cleans up after itself (VFSDAX_KEEP=1 keeps the work directory). Arguments go to guest-repro
# (tests/src/bin/guest-repro.rs): --verbose, --daemon PATH, -- DAEMON-ARGS.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --quiet --workspace --bins
exec cargo run --quiet -p vfsdax-tests --bin guest-repro -- "$@"
