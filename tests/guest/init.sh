#!/bin/sh
# /init of the vfsdax test guest (busybox-static initramfs).
# Kernel command line: vfsdax.mode=workload|demo|bench  vfsdax.tag=TAG
# Prints marker lines on the console that the host parses (tests/src/guest/serial.rs):
#   VFSDAX BOOTED <uptime>, STEP <name> ok|FAIL <detail>, DATA <key> <value>,
#   WORKLOAD EXIT <code>.
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
exec >/dev/console 2>&1 </dev/null
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys

MODE=workload
TAG=vfsdax
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vfsdax.mode=*) MODE=${arg#*=} ;;
        vfsdax.tag=*) TAG=${arg#*=} ;;
    esac
done
echo "VFSDAX BOOTED $(cut -d' ' -f1 /proc/uptime) mode=$MODE tag=$TAG"

finish() {
    echo "WORKLOAD EXIT $1"
    sync
    poweroff -f
    sleep 10
}

for name in $(cat /etc/modules.order); do
    if ! out=$(insmod "/lib/modules/$name.ko" 2>&1); then
        echo "STEP mount FAIL insmod $name: $out"
        finish 2
    fi
done

if out=$(mount -t virtiofs "$TAG" /mnt 2>&1); then
    echo "STEP mount ok"
    echo "DATA mounted_at $(cut -d' ' -f1 /proc/uptime)"
else
    echo "STEP mount FAIL $out"
    finish 3
fi

# Each mode is a script /<mode>.sh (MODE_SCRIPTS in tests/src/guest/initramfs.rs).
script=/$MODE.sh
case "$MODE" in
    "" | *[!a-z]*) script= ;;
esac
if [ -n "$script" ] && [ -f "$script" ]; then
    sh "$script" /mnt
    rc=$?
else
    echo "unknown vfsdax.mode=$MODE"
    rc=4
fi
echo "DATA done_at $(cut -d' ' -f1 /proc/uptime)"
finish "$rc"
