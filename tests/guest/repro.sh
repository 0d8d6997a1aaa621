#!/bin/sh
# The truncation repro (scripts/repro-truncate-qemu.sh, tests/src/guest/repro.rs), run inside
# the test guest on the share mounted at $1: a task maps the DAX file `victim` and reads it,
# the host truncates the file (WAIT go-truncate), the task reads the same page again. Whatever
# happens to the task, the guest then checks that the share still serves files.
# Needs /bin/daxtool (tests/guest/daxtool.c).
M=$1
daxtool hold "$M/victim" 4096 "$M/go-truncate" >/dev/console
echo "REPRO TASK-EXIT $?"
if out=$(cat "$M/alive" 2>&1); then
    echo "REPRO SHARE ok $out"
else
    echo "REPRO SHARE FAIL $out"
fi
exit 0
