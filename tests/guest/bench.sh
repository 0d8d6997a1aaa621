#!/bin/sh
# Benchmark run inside the test guest over the virtio-fs share mounted at $1
# (tests/src/bin/guest-bench.rs compares daemons with it). Each workload prints
# `BENCH <name> <seconds>` (guest uptime, 10 ms resolution) and `STEP <name> ok`, or
# `STEP <name> FAIL <detail>` and no time. The names are checked by guest-bench's tests.
M=$1
FILES=2000
rc=0

now() { cut -d" " -f1 /proc/uptime; }

die() {
    echo "$*"
    exit 1
}

# Not timed: start a read or a lookup from the host, not from the guest's caches.
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches"
}

# dd from /dev/zero: /dev/urandom would time the guest's CPU under TCG, not the share.
bench_write() {
    dd if=/dev/zero of="$M/big" bs=1M count=64 conv=fsync 2>/dev/null || die "dd to the share failed"
}

bench_read() {
    dd if="$M/big" of=/dev/null bs=1M 2>/dev/null || die "dd from the share failed"
}

bench_create() {
    i=1
    while [ "$i" -le "$FILES" ]; do
        echo "$i" >"$M/small/f$i" || die "cannot create small/f$i"
        i=$((i + 1))
    done
}

bench_stat() {
    ls -l "$M/small" >/dev/null || die "ls -l small failed"
}

bench_remove() {
    rm -f "$M"/small/f* || die "rm failed"
}

# Checks after each workload, not timed.
check_write() {
    [ "$(stat -c %s "$M/big")" = 67108864 ] || die "big is not 64 MiB after the write"
    drop_caches
}

check_read() {
    rm -f "$M/big" || die "cannot remove big"
}

check_create() {
    n=$(ls "$M/small" | wc -l)
    [ "$n" -eq "$FILES" ] || die "small/ holds $n files, want $FILES"
    drop_caches
}

check_stat() { :; }

check_remove() {
    n=$(ls "$M/small" | wc -l)
    [ "$n" -eq 0 ] || die "small/ still holds $n files"
    rmdir "$M/small" || die "cannot remove small/"
}

# run NAME: time bench_NAME, then run check_NAME.
run() {
    name=$1
    t0=$(now)
    if out=$("bench_$name" 2>&1); then
        t1=$(now)
        if out=$("check_$name" 2>&1); then
            echo "BENCH $name $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")"
            echo "STEP $name ok"
            return
        fi
    fi
    echo "STEP $name FAIL $(echo "$out" | tr '\n' ' ' | cut -c1-400)"
    rc=1
}

mkdir "$M/small" || die "cannot create small/"
for name in write read create stat remove; do
    run "$name"
done
exit "$rc"
