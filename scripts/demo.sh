#!/usr/bin/env bash
# The main job: a file behind a DAX mapping is truncated, and the guest that touches it gets a
# clean error instead of the VM dying.
#
# vfsdaxd serves a demo share with a DAX window (--cache-size); the reference VMM vfsdax-vmm
# connects to it as its vhost-user frontend, plays the guest's virtio-fs driver (INIT, LOOKUP,
# OPEN, SETUPMAPPING through virtqueues in guest memory) and places the window the daemon maps
# the file into as the guest's DAX memory on KVM. Its small 64-bit guest reads the file through
# DAX; another client of the share truncates the file (FUSE SETATTR through vfsdaxd); the guest
# touches the page again. Three runs: a guest that opted in to apf errors (its task gets
# SIGBUS), one that did not (machine check at the page's address), and `--policy stop` (the
# VMM stops with a precise diagnostic instead of KVM_RUN's "Bad address"). vfsdaxd's truncation
# guard runs with --truncate-guard-action unmap there: it unmaps the lost range before the
# truncation, and the glue reports the guest's access with its policy.
#
# Then the same event with a stock VMM: a real Linux guest under QEMU 11.1 (Debian sid's, which
# scripts/deps.sh installs) maps a DAX file through vfsdaxd, a host process truncates it, the
# guest touches it again: without the guard QEMU dies of SIGBUS, with it (the default) the VM
# lives and the guest task reads zeros.
#
# The reference VMM needs /dev/kvm (its runs are skipped, with a note, without it); the QEMU runs
# use TCG. Installs what the project needs first (scripts/deps.sh). Extra arguments go to
# every vfsdax-vmm run (e.g. `--access store`; see `vfsdax-vmm --help`). The QEMU guest demo (a
# Linux guest mounting the share with virtiofs) is scripts/demo-qemu.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/debug

work=$(mktemp -d "${TMPDIR:-/tmp}/vfsdax-demo.XXXXXX")
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

share=$work/share
sock=$work/vfsdaxd.sock
mkdir -p "$share"
file=notes.txt

# A 64 KiB text file: 1024 lines of 64 bytes.
make_file() {
    local i n
    for ((i = 0; i < 1024; i++)); do
        printf -v n '%04d' "$i"
        printf '%-63.63s\n' "[$n]: hello from the host, line $i of notes.txt"
    done >"$share/$file"
}

start_daemon() {
    rm -f "$sock"
    "$bin/vfsdaxd" --socket-path "$sock" --shared-dir "$share" --cache-size 64M \
        --truncate-guard-action unmap --log-level info \
        >"$work/vfsdaxd.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do
        [ -S "$sock" ] && return 0
        sleep 0.05
    done
    echo "demo: vfsdaxd did not create its socket:" >&2
    cat "$work/vfsdaxd.log" >&2
    exit 1
}

summary=()
run_case() {
    local title=$1
    shift
    echo
    echo "=== $title"
    make_file
    start_daemon
    echo "\$ vfsdaxd --socket-path $sock --shared-dir $share --cache-size 64M --truncate-guard-action unmap &"
    echo "\$ vfsdax-vmm --daemon-socket $sock --path $file $*"
    local status=0
    RUST_LOG=warn "$bin/vfsdax-vmm" --daemon-socket "$sock" --path "$file" "$@" \
        --explain --reports "$work/reports.jsonl" 2>"$work/vmm.err" || status=$?
    sed -n 's/^  //p' "$work/vmm.err"
    grep -v '^  ' "$work/vmm.err" | grep -v '^vfsdax-vmm: VM stopped' || true
    echo "fault report (JSON line):"
    sed 's/^/  /' "$work/reports.jsonl"
    local daemon_status=0
    wait "$daemon_pid" || daemon_status=$?
    daemon_pid=""
    echo "vfsdax-vmm exit status: $status; vfsdaxd ended with status $daemon_status when the VMM disconnected"
    local action
    action=$(grep -o '"action":"[a-z-]*"' "$work/reports.jsonl" | head -n 1 | cut -d'"' -f4)
    summary+=("$(printf '%-34s report action %-14s vfsdax-vmm exit %s, vfsdaxd exit %s' \
        "$title" "${action:-none}" "$status" "$daemon_status")")
}

if [ -e /dev/kvm ]; then
    run_case "guest opted in to apf errors" --opt-in "$@"
    run_case "guest did not opt in (policy mce)" --policy mce "$@"
    run_case "policy stop" --policy stop "$@"
else
    echo
    echo "=== reference VMM (vfsdax-vmm): /dev/kvm is missing, its guest runs on KVM; skipped"
fi

# A stock VMM: QEMU 11.1 with a real Linux guest (tests/src/guest/repro.rs).
qemu_case() {
    local title=$1
    shift
    echo
    echo "=== $title"
    echo "\$ scripts/repro-truncate-qemu.sh -- $*"
    local line
    line=$("$bin/guest-repro" -- "$@" | grep '^repro-truncate-qemu:' || true)
    echo "${line:-repro-truncate-qemu: the run failed}"
    summary+=("$(printf '%-34s %s' "$title" "${line#repro-truncate-qemu: }")")
}

if "$bin/guest-repro" --help >/dev/null 2>&1 && [ -x "${VFSDAX_QEMU_DAX:-target/qemu-sid/vfsdax-qemu}" ]; then
    qemu_case "QEMU 11.1, --truncate-guard off" --truncate-guard off
    qemu_case "QEMU 11.1, guard on (default)"
else
    echo
    echo "=== QEMU 11.1: not installed (scripts/deps.sh installs it from Debian sid); skipped"
fi
if [ "${#summary[@]}" -eq 0 ]; then
    echo "demo: nothing could run: the reference VMM needs /dev/kvm, the stock-VMM part QEMU 11.1" >&2
    exit 1
fi

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "Without vfsdax, KVM_RUN fails with EFAULT (\"Bad address\") on such an access and the VMM dies;"
echo "QEMU with a DAX window dies of SIGBUS (exit 135), unless vfsdaxd's truncation guard is on."
