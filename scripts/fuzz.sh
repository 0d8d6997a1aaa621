#!/usr/bin/env bash
# Builds the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) and runs each for
# SECONDS (default 20), then prints the executions and crashes per target. Exits non-zero when a
# target crashed (the input is kept under fuzz/artifacts/<target>/; libFuzzer's log of each run
# under fuzz/target/fuzz-logs/). See docs/FUZZING.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # all five targets when none is named
#
# VFSDAX_FUZZ_SANITIZER=none|address (default none) picks the build; extra libFuzzer
# options go in VFSDAX_FUZZ_ARGS. Installs cargo-fuzz if it is missing (cargo install).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

seconds="${1:-20}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(fuse_server chain_layouts shmem_handler fault_classifier insn_decoder)
fi
sanitizer="${VFSDAX_FUZZ_SANITIZER:-none}"

# cargo-fuzz passes -Z flags (sanitizer coverage, ASan) to rustc; the toolchain here is stable,
# so let it accept them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi

# Seeds: generated, and checked in; regenerate any that are missing.
for t in "${targets[@]}"; do
    if ! compgen -G "fuzz/corpus/$t/seed-*" >/dev/null; then
        cargo run --quiet --manifest-path fuzz/Cargo.toml --example gen_seeds
        break
    fi
done

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
echo "fuzz: building the targets (sanitizer: $sanitizer)"
if ! cargo fuzz build --sanitizer "$sanitizer" >"$logs/build.log" 2>&1; then
    tail -60 "$logs/build.log"
    echo "fuzz: the build failed"
    exit 1
fi
bin=fuzz/target/x86_64-unknown-linux-gnu/release
failed=0
crashed=0
printf '%-18s %12s %10s %8s %8s %8s  %s\n' target executions exec/s seconds corpus crashes result
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    rc=0
    # -timeout: an input running 10 s is a hang (reported as a crash);
    # -rss_limit_mb: each target keeps its state small.
    # shellcheck disable=SC2086
    # Inputs that once failed (fuzz/regressions/<target>/) are replayed first; what libFuzzer
    # finds goes to the first directory.
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    "$bin/$t" "${dirs[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" ${VFSDAX_FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    crashes=0
    result=ok
    if [ "$rc" -ne 0 ]; then
        crashes=1
        result="CRASH (exit $rc): $(grep -o "fuzz/artifacts/$t/[^ ]*" "$log" | tail -1)"
        failed=1
        crashed=$((crashed + 1))
    fi
    printf '%-18s %12s %10s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${secs:-?}" "$corpus" \
        "$crashes" "$result"
    if [ "$rc" -ne 0 ]; then
        echo "---- $t: last lines of the libFuzzer log"
        grep -v '^#[0-9]' "$log" | tail -40
        echo "----"
    fi
done
echo "fuzz: $((${#targets[@]} - crashed)) passed, $crashed failed"
exit "$failed"
