#!/usr/bin/env bash
# The QEMU guest demo: serve a demo share with vfsdaxd to a real Linux guest under QEMU that
# mounts it with virtiofs, lists and reads it (scripts/demo.sh is the main job: the DAX fault demo).
# Installs what it needs first (scripts/deps.sh). Extra arguments go to guest-demo
# (tests/src/bin/guest-demo.rs): --share DIR, --daemon PATH, --help.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --workspace --bins
cargo run --quiet -p vfsdax-tests --bin guest-demo -- "$@"
