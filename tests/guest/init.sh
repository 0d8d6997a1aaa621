#!/bin/sh
# /init of the vfsdax test guest (busybox-static initramfs).
# Kernel command line: vfsdax.mode=workload|demo|bench|dax|repro|daxbench  vfsdax.tag=TAG
#   [vfsdax.mountopts=OPTS]  (mount -t virtiofs -o OPTS, e.g. dax=always)
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
OPTS=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vfsdax.mode=*) MODE=${arg#*=} ;;
        vfsdax.tag=*) TAG=${arg#*=} ;;
        vfsdax.mountopts=*) OPTS=${arg#*=} ;;
    esac
done
echo "VFSDAX BOOTED $(cut -d' ' -f1 /proc/uptime) mode=$MODE tag=$TAG${OPTS:+ opts=$OPTS}"

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

mount_share() {
    if [ -n "$OPTS" ]; then
        mount -t virtiofs -o "$OPTS" "$TAG" /mnt
    else
        mount -t virtiofs "$TAG" /mnt
    fi
}
if out=$(mount_share 2>&1); then
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
