#!/usr/bin/env bash
# Installs what the test suite needs, only what is missing, and says what it did:
#  - Debian packages: qemu-system-x86, busybox-static, cpio, libseccomp-dev, libcap-ng-dev;
#  - a Debian 6.1 cloud kernel (vmlinuz + modules), extracted into a cache directory:
#    $VFSDAX_GUEST_DIR, or target/guest-kernel/ under the repository.
# Safe to run again: a second run changes nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
guest_dir=${VFSDAX_GUEST_DIR:-$repo/target/guest-kernel}

say() { echo "deps: $*"; }

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        say "not root and no sudo: installing packages may fail"
    fi
fi

lists_updated=0
update_lists() {
    if [ "$lists_updated" -eq 0 ]; then
        say "apt-get update"
        "${sudo[@]}" apt-get update -qq
        lists_updated=1
    fi
}

# 1. Debian packages.
missing=()
for pkg in qemu-system-x86 busybox-static cpio libseccomp-dev libcap-ng-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    update_lists
    say "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    say "packages already installed: qemu-system-x86 busybox-static cpio libseccomp-dev libcap-ng-dev"
fi

# 2. Guest kernel.
if compgen -G "$guest_dir/boot/vmlinuz-*" >/dev/null; then
    say "guest kernel already in $guest_dir ($(cat "$guest_dir/PACKAGE" 2>/dev/null || echo unknown package))"
    exit 0
fi

newest_kernel() {
    apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-cloud-amd64(-unsigned)?$' |
        awk '{print $1}' | sed 's/-unsigned$//' | sort -uV | tail -n 1
}
pkg=$(newest_kernel)
if [ -z "$pkg" ]; then
    update_lists
    pkg=$(newest_kernel)
fi
if [ -z "$pkg" ]; then
    echo "deps: no linux-image-6.1.*-cloud-amd64 package found in apt's lists" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
got=""
for candidate in "$pkg" "$pkg-unsigned"; do
    say "downloading $candidate"
    if (cd "$work" && apt-get download -q "$candidate" >/dev/null 2>"$work/err"); then
        got=$candidate
        break
    fi
    say "apt-get download $candidate failed: $(tail -n 1 "$work/err")"
done
if [ -z "$got" ]; then
    echo "deps: could not download $pkg (signed or unsigned)" >&2
    exit 1
fi

rm -rf "$guest_dir.partial"
mkdir -p "$guest_dir.partial"
dpkg-deb -x "$work"/*.deb "$guest_dir.partial"
echo "$got" >"$guest_dir.partial/PACKAGE"
rm -rf "$guest_dir"
mv "$guest_dir.partial" "$guest_dir"
say "extracted $got into $guest_dir ($(basename "$guest_dir"/boot/vmlinuz-*))"
