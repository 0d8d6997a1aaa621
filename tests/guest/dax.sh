#!/bin/sh
# DAX checks run inside the test guest on the share mounted at $1 with a dax= option
# (tests/tests/real_guest_dax.rs). The host prepared h4m (4 MiB), h2m (2 MiB), small (17 bytes),
# odd (2 MiB + 3000 bytes) and grow (2 MiB); it checks the DATA lines and the share afterwards,
# per mount mode, so this script reports what it saw rather than judging it. A STEP fails only
# when a mechanism the host relies on did not work (a tool failed, a file is missing).
# Needs /bin/daxtool (tests/guest/daxtool.c).
M=$1
rc=0

now() { cut -d" " -f1 /proc/uptime; }

run() {
    name=$1
    t0=$(now)
    if out=$("step_$name" 2>&1); then
        [ -n "$out" ] && echo "$out"
        echo "DATA time_$name $(awk "BEGIN { print $(now) - $t0 }")"
        echo "STEP $name ok"
    else
        echo "STEP $name FAIL $(echo "$out" | tr '\n' ' ' | cut -c1-400)"
        rc=1
    fi
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || { echo "cannot drop caches"; exit 1; }
}

# md5 of a file, or ERR and the error (a read the daemon declined fails with EOPNOTSUPP).
md5_or_err() {
    if out=$(md5sum "$1" 2>&1); then
        echo "${out%% *}"
    else
        echo "ERR $(echo "$out" | sed 's/.*: //' | tr ' ' '_')"
    fi
}

step_dax_flag() {
    for f in h4m h2m small odd; do
        d=$(daxtool dax "$M/$f") || exit 1
        echo "DATA dax_$f $d"
    done
}

step_read_host_bytes() {
    drop_caches
    echo "DATA md5_h4m $(md5_or_err "$M/h4m")"
    echo "DATA md5_small $(md5_or_err "$M/small")"
    echo "DATA md5_odd $(md5_or_err "$M/odd")"
    drop_caches
    if out=$(daxtool cat "$M/h2m" | md5sum); then
        echo "DATA mmap_md5_h2m ${out%% *}"
    else
        exit 1
    fi
}

step_write_through_dax() {
    # 4 KiB inside h4m at 1 MiB: not an extending write, so a DAX store into the window.
    dd if=/dev/urandom of=/tmp/w bs=4096 count=1 2>/dev/null || exit 1
    echo "DATA wrote_md5 $(md5sum </tmp/w | cut -d' ' -f1)"
    dd if=/tmp/w of="$M/h4m" bs=4096 seek=256 conv=notrunc 2>/dev/null || exit 1
    sync
}

step_mmap_store() {
    daxtool poke "$M/h2m" 8192 "STORED-THROUGH-A-SHARED-MAPPING" || exit 1
}

step_host_write_seen_through_mapping() {
    # The guest maps h2m and reads 16 bytes at 64 KiB; the host then writes new bytes there
    # (WAIT go-coherent); the same mapping must show them without any cache invalidation.
    # Straight to the console: the host acts on the WAIT line while the step runs.
    daxtool hold "$M/h2m" 65536 "$M/go-coherent" >/dev/console || exit 1
}

step_small_files() {
    echo "hello dax" >"$M/new_small" || exit 1
    echo "again" >>"$M/new_small" || exit 1
    drop_caches
    echo "DATA md5_new_small $(md5_or_err "$M/new_small")"
    echo "DATA dax_new_small $(daxtool dax "$M/new_small")"
}

step_growing_file() {
    # Grow a 2 MiB file by whole chunks, then by 100 bytes, and read it back each time.
    dd if=/dev/urandom of=/tmp/g1 bs=1048576 count=2 2>/dev/null || exit 1
    cat /tmp/g1 >>"$M/grow" || exit 1
    drop_caches
    echo "DATA grow_size_1 $(stat -c %s "$M/grow")"
    echo "DATA md5_grow_1 $(md5_or_err "$M/grow")"
    echo "DATA appended_md5_1 $(md5sum </tmp/g1 | cut -d' ' -f1)"
    head -c 100 /dev/urandom >/tmp/g2 || exit 1
    cat /tmp/g2 >>"$M/grow" || exit 1
    drop_caches
    echo "DATA grow_size_2 $(stat -c %s "$M/grow")"
    echo "DATA md5_grow_2 $(md5_or_err "$M/grow")"
    echo "DATA appended_md5_2 $(md5sum </tmp/g2 | cut -d' ' -f1)"
}

command -v daxtool >/dev/null || { echo "STEP dax_flag FAIL no /bin/daxtool"; exit 1; }
run dax_flag
run read_host_bytes
run write_through_dax
run mmap_store
run host_write_seen_through_mapping
run small_files
run growing_file
drop_caches
exit $rc
