#!/usr/bin/env bash
# Installs what the test suite needs, only what is missing, and says what it did:
#  - Debian packages: qemu-system-x86, busybox-static, cpio, libseccomp-dev, libcap-ng-dev, and
#    systemd for systemd-analyze and systemd-socket-activate (tests/tests/systemd.rs and
#    package.rs check the units offline: systemd need not run), xfsprogs and btrfs-progs (the
#    truncation guard is checked on loop-mounted xfs and btrfs shares);
#  - a Debian 6.1 cloud kernel (vmlinuz + modules), extracted into a cache directory:
#    $VFSDAX_GUEST_DIR, or target/guest-kernel/ under the repository;
#  - a QEMU >= 11.1 from Debian sid for the DAX tests (the generic vhost-user device with a
#    shared-memory window; QEMU 7.2's vhost-user-fs-pci has none): a minimal sid tree made with
#    debootstrap in $VFSDAX_QEMU_SID_DIR, or target/qemu-sid/ under the repository, run through
#    its wrapper script vfsdax-qemu (the tree's own loader and libraries, no chroot, so host
#    paths stay valid). Mirror: $VFSDAX_DEBIAN_MIRROR, or http://deb.debian.org/debian.
# Every step is skipped when already done: a second run changes nothing. What apt-get and
# debootstrap print goes to target/deps.log (its end is shown when a step fails).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
guest_dir=${VFSDAX_GUEST_DIR:-$repo/target/guest-kernel}
qemu_sid_dir=${VFSDAX_QEMU_SID_DIR:-$repo/target/qemu-sid}
mirror=${VFSDAX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log=$repo/target/deps.log
# debootstrap and chroot live in /usr/sbin, which a non-login shell may not have on PATH.
export PATH=$PATH:/usr/sbin:/sbin

say() { echo "deps: $*"; }
die() {
    echo "deps: $*" >&2
    exit 1
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        say "not root and no sudo: installing packages may fail"
    fi
fi

# Paths removed when the script exits, however it exits (temporary and half-made directories).
cleanup=()
on_exit() {
    local p
    for p in "${cleanup[@]}"; do
        remove_tree "$p"
    done
}
trap on_exit EXIT

# Removes a directory tree that may still have file systems mounted in it (debootstrap mounts
# /proc and /sys in its target; a killed run leaves them): unmount those first, and never cross
# into another file system.
remove_tree() {
    local dir=$1 mnt
    [ -e "$dir" ] || return 0
    dir=$(realpath "$dir")
    awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mnt; do
            "${sudo[@]}" umount -l "$mnt" || true
        done
    "${sudo[@]}" rm -rf --one-file-system "$dir"
}

# quiet WHAT CMD...: runs CMD with its output going to $log (emptied by the first quiet command
# of a run, so a run that does nothing keeps the last one's log); on failure shows the end of
# the log and returns non-zero.
log_started=0
quiet() {
    local what=$1
    shift
    if [ "$log_started" -eq 0 ]; then
        mkdir -p "$(dirname "$log")"
        echo "=== scripts/deps.sh, $(date -u '+%F %T UTC')" >"$log"
        log_started=1
    fi
    echo "=== $what: $*" >>"$log"
    if ! "$@" >>"$log" 2>&1 </dev/null; then
        echo "deps: $what failed; the end of $log:" >&2
        tail -n 20 "$log" | sed 's/^/    /' >&2
        return 1
    fi
}

lists_updated=0
update_lists() {
    if [ "$lists_updated" -eq 0 ]; then
        say "apt-get update"
        quiet "apt-get update" "${sudo[@]}" apt-get update || die "apt-get update failed"
        lists_updated=1
    fi
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# apt_install PKG...: installs the packages that are missing from the host.
apt_install() {
    update_lists
    say "installing $*"
    quiet "apt-get install $*" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q "$@" || die "cannot install $* with apt-get"
}

# 1. Debian packages.
install_packages() {
    local pkg missing=()
    local pkgs=(qemu-system-x86 busybox-static cpio libseccomp-dev libcap-ng-dev systemd
        xfsprogs btrfs-progs)
    for pkg in "${pkgs[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    else
        say "packages already installed: ${pkgs[*]}"
    fi
}

# 2. Guest kernel.
newest_kernel() {
    apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-cloud-amd64(-unsigned)?$' |
        awk '{print $1}' | sed 's/-unsigned$//' | sort -uV | tail -n 1
}

install_kernel() {
    if compgen -G "$guest_dir/boot/vmlinuz-*" >/dev/null; then
        say "guest kernel already in $guest_dir ($(cat "$guest_dir/PACKAGE" 2>/dev/null || echo unknown package))"
        return
    fi
    local pkg candidate got="" work
    pkg=$(newest_kernel)
    if [ -z "$pkg" ]; then
        update_lists
        pkg=$(newest_kernel)
    fi
    [ -n "$pkg" ] || die "no linux-image-6.1.*-cloud-amd64 package found in apt's lists"

    work=$(mktemp -d)
    cleanup+=("$work")
    for candidate in "$pkg" "$pkg-unsigned"; do
        say "downloading $candidate"
        if (cd "$work" && apt-get download -q "$candidate" >/dev/null 2>"$work/err"); then
            got=$candidate
            break
        fi
        say "apt-get download $candidate failed: $(tail -n 1 "$work/err")"
    done
    [ -n "$got" ] || die "could not download $pkg (signed or unsigned)"

    rm -rf "$guest_dir.partial"
    mkdir -p "$guest_dir.partial"
    dpkg-deb -x "$work"/*.deb "$guest_dir.partial"
    echo "$got" >"$guest_dir.partial/PACKAGE"
    rm -rf "$guest_dir"
    mv "$guest_dir.partial" "$guest_dir"
    say "extracted $got into $guest_dir ($(basename "$guest_dir"/boot/vmlinuz-*))"
}

# 3. QEMU >= 11.1 from Debian sid.
qemu_want_major=11
qemu_want_minor=1

# qemu_version WRAPPER: prints "X.Y.Z" from `WRAPPER --version`, or nothing.
qemu_version() {
    [ -x "$1" ] || return 0
    "$1" --version 2>/dev/null |
        sed -n 's/^QEMU emulator version \([0-9][0-9]*\.[0-9][0-9]*[0-9.]*\).*/\1/p' | head -n 1
}

# version_ok X.Y.Z: whether it is at least the wanted major.minor.
version_ok() {
    local major minor
    IFS=. read -r major minor _ <<<"$1.0.0"
    [ -n "$major" ] && [ -n "$minor" ] || return 1
    [ "$major" -gt "$qemu_want_major" ] ||
        { [ "$major" -eq "$qemu_want_major" ] && [ "$minor" -ge "$qemu_want_minor" ]; }
}

# The wrapper that runs the tree's QEMU with the tree's loader and libraries, found from the
# script's own location so that the directory can move.
write_qemu_wrapper() {
    cat <<'EOF'
#!/bin/sh
# QEMU from Debian sid (installed by scripts/deps.sh), run with this tree's own loader and
# libraries instead of chroot(2), so every host path on the command line stays valid.
R=$(dirname "$(readlink -f "$0")")
export QEMU_MODULE_DIR="$R/usr/lib/x86_64-linux-gnu/qemu"
exec "$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \
    "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" "$@"
EOF
}

install_qemu_sid() {
    local dir=$qemu_sid_dir want="$qemu_want_major.$qemu_want_minor" version
    local part="$dir.partial"
    version=$(qemu_version "$dir/vfsdax-qemu")
    if [ -n "$version" ] && version_ok "$version"; then
        say "QEMU $version (Debian sid) already in $dir"
        return
    fi
    local fail="cannot install QEMU >= $want from Debian sid into $dir (see $log)"
    if ! command -v debootstrap >/dev/null; then
        apt_install debootstrap
    fi
    remove_tree "$part"
    cleanup+=("$part")
    say "debootstrap sid into $part (about a minute)"
    quiet "debootstrap" "${sudo[@]}" debootstrap --variant=minbase sid "$part" "$mirror" ||
        die "$fail"
    # Nothing installed in the tree may start a service on the host.
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$part/usr/sbin/policy-rc.d" >/dev/null
    "${sudo[@]}" chmod 0755 "$part/usr/sbin/policy-rc.d"
    say "installing qemu-system-x86 and seabios from sid"
    quiet "apt-get install in the sid tree" "${sudo[@]}" chroot "$part" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        qemu-system-x86 seabios || die "$fail"
    "${sudo[@]}" rm -rf "$part/var/cache/apt/archives"/*.deb
    write_qemu_wrapper | "${sudo[@]}" tee "$part/vfsdax-qemu" >/dev/null
    "${sudo[@]}" chmod 0755 "$part/vfsdax-qemu"
    version=$(qemu_version "$part/vfsdax-qemu")
    if [ -z "$version" ]; then
        "$part/vfsdax-qemu" --version >>"$log" 2>&1 || true
        die "the QEMU installed in $part does not run: $(tail -n 1 "$log")"
    fi
    version_ok "$version" || die "Debian sid gave QEMU $version, need >= $want"
    remove_tree "$dir"
    "${sudo[@]}" mv "$part" "$dir"
    say "installed QEMU $version (Debian sid) in $dir"
}

install_packages
install_kernel
install_qemu_sid
