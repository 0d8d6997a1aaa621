#!/bin/sh
# POSIX workload run inside the test guest over the virtio-fs share mounted at $1.
# Every step prints `STEP <name> ok` or `STEP <name> FAIL <detail>`; a step may also print
# `DATA <key> <value>` lines that the host checks against what it finds in the share.
# The step names and the files left behind are checked by tests/src/guest/workload.rs:
# change both together.
M=$1
rc=0

die() {
    echo "$*"
    exit 1
}

# eq GOT WANT WHAT
eq() {
    [ "$1" = "$2" ] || die "$3: got '$1', want '$2'"
}

size() { stat -c %s "$1" || echo "stat-failed"; }

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches"
}

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

step_create() {
    : >"$M/empty" || die "cannot create empty"
    echo hello >"$M/hello" || die "cannot create hello"
    [ -f "$M/empty" ] || die "empty is not a regular file"
    eq "$(cat "$M/hello")" hello "content of hello"
    mkdir "$M/dir" || die "mkdir dir failed"
    [ -d "$M/dir" ] || die "dir is not a directory"
}

step_write() {
    dd if=/dev/urandom of=/tmp/src bs=1M count=4 2>/dev/null || die "cannot make source data"
    md5sum </tmp/src | cut -d' ' -f1 >/tmp/src.md5
    cp /tmp/src "$M/big" || die "cp to the share failed"
    sync
    eq "$(size "$M/big")" 4194304 "size of big"
    echo "DATA big_md5 $(cat /tmp/src.md5)"
}

step_readback() {
    drop_caches
    eq "$(md5sum <"$M/big" | cut -d' ' -f1)" "$(cat /tmp/src.md5)" "md5 of big after drop_caches"
    drop_caches
    a=$(dd if="$M/big" bs=4096 skip=700 count=3 2>/dev/null | md5sum | cut -d' ' -f1)
    b=$(dd if=/tmp/src bs=4096 skip=700 count=3 2>/dev/null | md5sum | cut -d' ' -f1)
    eq "$a" "$b" "md5 of 12 KiB read at offset 2800 KiB"
}

step_append() {
    echo one >"$M/log" || die "cannot write log"
    echo two >>"$M/log" || die "cannot append to log"
    eq "$(cat "$M/log")" "one
two" "content of log"
    head -c 1048576 /tmp/src >"$M/app" || die "cannot write app"
    head -c 3000 /dev/urandom >/tmp/tail
    cat /tmp/tail >>"$M/app" || die "cannot append to app"
    want=$(head -c 1048576 /tmp/src | cat - /tmp/tail | md5sum | cut -d' ' -f1)
    drop_caches
    eq "$(md5sum <"$M/app" | cut -d' ' -f1)" "$want" "md5 of app after append"
    echo "DATA app_md5 $want"
}

step_stat() {
    eq "$(size "$M/empty")" 0 "size of empty"
    eq "$(size "$M/log")" 8 "size of log"
    eq "$(size "$M/app")" 1051576 "size of app"
    eq "$(size "$M/big")" 4194304 "size of big"
    eq "$(stat -c %F "$M/big")" "regular file" "type of big"
    eq "$(stat -c %F "$M/dir")" "directory" "type of dir"
}

step_rename() {
    echo a >"$M/r1" || die "cannot create r1"
    mv "$M/r1" "$M/r2" || die "mv r1 r2 failed"
    [ ! -e "$M/r1" ] || die "r1 still exists after rename"
    eq "$(cat "$M/r2")" a "content of r2"
    echo y >"$M/mvsrc" || die "cannot create mvsrc"
    mv "$M/mvsrc" "$M/dir/moved" || die "mv into dir failed"
    [ ! -e "$M/mvsrc" ] || die "mvsrc still exists after rename"
    eq "$(cat "$M/dir/moved")" y "content of dir/moved"
}

step_rename_replace() {
    echo b >"$M/r3" || die "cannot create r3"
    mv -f "$M/r3" "$M/r2" || die "mv r3 over r2 failed"
    [ ! -e "$M/r3" ] || die "r3 still exists after rename"
    eq "$(cat "$M/r2")" b "content of r2 after replace"
}

step_rename_dir() {
    mkdir "$M/d1" || die "mkdir d1 failed"
    echo x >"$M/d1/f" || die "cannot create d1/f"
    mv "$M/d1" "$M/d2" || die "mv d1 d2 failed"
    [ ! -e "$M/d1" ] || die "d1 still exists after rename"
    eq "$(cat "$M/d2/f")" x "content of d2/f"
}

step_chmod() {
    : >"$M/m" || die "cannot create m"
    chmod 640 "$M/m" || die "chmod 640 failed"
    eq "$(stat -c %a "$M/m")" 640 "mode of m"
    chmod 700 "$M/dir" || die "chmod 700 dir failed"
    eq "$(stat -c %a "$M/dir")" 700 "mode of dir"
}

step_truncate_shrink() {
    printf abcdefghij >"$M/t" || die "cannot create t"
    truncate -s 4 "$M/t" || die "truncate -s 4 failed"
    eq "$(size "$M/t")" 4 "size of t after shrink"
    eq "$(cat "$M/t")" abcd "content of t after shrink"
}

step_truncate_grow() {
    truncate -s 4100 "$M/t" || die "truncate -s 4100 failed"
    eq "$(size "$M/t")" 4100 "size of t after grow"
    drop_caches
    head -c 4096 /dev/zero >/tmp/zero
    tail -c 4096 "$M/t" >/tmp/grown
    cmp /tmp/grown /tmp/zero || die "grown part of t is not zero-filled"
    eq "$(head -c 4 "$M/t")" abcd "head of t after grow"
}

step_symlink() {
    ln -s hello "$M/sl" || die "ln -s failed"
    [ -L "$M/sl" ] || die "sl is not a symlink"
    eq "$(readlink "$M/sl")" hello "target of sl"
    eq "$(cat "$M/sl")" hello "content through sl"
    ln -s /etc/passwd "$M/abs" || die "ln -s absolute failed"
    eq "$(readlink "$M/abs")" /etc/passwd "target of abs"
}

step_hardlink() {
    echo h >"$M/h1" || die "cannot create h1"
    eq "$(stat -c %h "$M/h1")" 1 "links of h1"
    ln "$M/h1" "$M/h2" || die "ln h1 h2 failed"
    eq "$(stat -c %h "$M/h1")" 2 "links of h1 after ln"
    ln "$M/h1" "$M/h3" || die "ln h1 h3 failed"
    eq "$(stat -c %h "$M/h2")" 3 "links of h2 after second ln"
    rm "$M/h3" || die "rm h3 failed"
    eq "$(stat -c %h "$M/h1")" 2 "links of h1 after rm h3"
    eq "$(stat -c %i "$M/h1")" "$(stat -c %i "$M/h2")" "inode of h2 vs h1"
}

step_unlink() {
    echo u >"$M/u" || die "cannot create u"
    rm "$M/u" || die "rm u failed"
    [ ! -e "$M/u" ] || die "u still exists"
    ! ls "$M" | grep -qx u || die "u still listed"
}

step_readdir() {
    mkdir "$M/many" || die "mkdir many failed"
    for i in $(seq 1 500); do
        : >"$M/many/f$i" || die "cannot create many/f$i"
    done
    eq "$(ls "$M/many" | wc -l)" 500 "entries listed by ls"
    eq "$(ls -la "$M/many" | grep -c ' f[0-9]*$')" 500 "entries listed by ls -la"
    eq "$(find "$M/many" -type f | wc -l)" 500 "entries found by find"
}

step_utimes() {
    : >"$M/ut" || die "cannot create ut"
    touch -d '2001-02-03 04:05:06' "$M/ut" || die "touch -d failed"
    eq "$(stat -c %Y "$M/ut")" 981173106 "mtime of ut"
    eq "$(stat -c %X "$M/ut")" 981173106 "atime of ut"
}

step_statfs() {
    set -- $(stat -f -c '%b %S %a' "$M") || die "stat -f failed"
    [ "$1" -gt 0 ] || die "statfs total blocks is $1"
    [ "$2" -gt 0 ] || die "statfs block size is $2"
    df "$M" >/dev/null || die "df failed"
    echo "DATA statfs_blocks $1"
    echo "DATA statfs_frsize $2"
}

step_rmdir_nonempty() {
    mkdir "$M/ne" || die "mkdir ne failed"
    : >"$M/ne/f" || die "cannot create ne/f"
    if rmdir "$M/ne" 2>/tmp/err; then die "rmdir of a non-empty dir succeeded"; fi
    grep -q "not empty" /tmp/err || die "unexpected rmdir error: $(cat /tmp/err)"
    [ -f "$M/ne/f" ] || die "ne/f vanished"
    mkdir "$M/e" || die "mkdir e failed"
    rmdir "$M/e" || die "rmdir of an empty dir failed"
    [ ! -e "$M/e" ] || die "e still exists"
}

step_enoent() {
    if cat "$M/nonexistent" 2>/tmp/err; then die "cat of a missing file succeeded"; fi
    grep -q "No such file" /tmp/err || die "unexpected cat error: $(cat /tmp/err)"
    if stat "$M/nodir/x" 2>/tmp/err; then die "stat of a missing path succeeded"; fi
    grep -q "No such file" /tmp/err || die "unexpected stat error: $(cat /tmp/err)"
    if rm "$M/nonexistent" 2>/tmp/err; then die "rm of a missing file succeeded"; fi
}

step_umount() {
    cd /
    sync
    umount "$M" || die "umount failed"
}

for s in create write readback append stat rename rename_replace rename_dir chmod \
    truncate_shrink truncate_grow symlink hardlink unlink readdir utimes statfs \
    rmdir_nonempty enoent umount; do
    run "$s"
done
exit "$rc"
