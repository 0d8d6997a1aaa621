#!/bin/sh
# DAX read benchmark run inside the test guest on the share mounted at $1, with or without a
# dax= option (tests/src/bin/guest-dax-bench.rs compares mount modes and daemons with it). The
# host prepared big (64 MiB of non-zero bytes). Each timed step prints
# `BENCHNS <label> <nanoseconds> <bytes>` (daxtool, CLOCK_MONOTONIC) and `STEP <name> ok`, or
# `STEP <name> FAIL <detail>`; the last step prints `DATA dax 0|1` (STATX_ATTR_DAX of big), which
# the host checks against the mount mode. The labels are checked by guest-dax-bench's tests.
# Needs /bin/daxtool (tests/guest/daxtool.c).
M=$1
COUNT=2000
rc=0

die() {
    echo "$*"
    exit 1
}

# Not timed: start from the host, not from the guest's page cache (or its DAX mappings: the
# inode goes with the caches, and its mappings with it).
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches"
}

step_seq_cold() {
    drop_caches
    daxtool seqread "$M/big" seq_cold || die "daxtool seqread failed"
}

step_seq_warm() {
    daxtool seqread "$M/big" seq_warm || die "daxtool seqread failed"
}

step_rand_cold() {
    drop_caches
    daxtool randread "$M/big" rand_cold "$COUNT" || die "daxtool randread failed"
}

step_rand_warm() {
    daxtool randread "$M/big" rand_warm "$COUNT" || die "daxtool randread failed"
}

step_dax_flag() {
    d=$(daxtool dax "$M/big") || die "daxtool dax failed"
    echo "DATA dax $d"
}

# run NAME: run step_NAME, print its output and STEP NAME ok|FAIL.
run() {
    name=$1
    if out=$("step_$name" 2>&1); then
        [ -n "$out" ] && echo "$out"
        echo "STEP $name ok"
    else
        echo "STEP $name FAIL $(echo "$out" | tr '\n' ' ' | cut -c1-400)"
        rc=1
    fi
}

command -v daxtool >/dev/null || { echo "STEP seq_cold FAIL no /bin/daxtool"; exit 1; }
[ -f "$M/big" ] || { echo "STEP seq_cold FAIL no $M/big"; exit 1; }
for name in seq_cold seq_warm rand_cold rand_warm dax_flag; do
    run "$name"
done
exit "$rc"
