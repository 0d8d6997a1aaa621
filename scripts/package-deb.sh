#!/usr/bin/env bash
# Builds the Debian package of vfsdaxd from this workspace with dpkg-deb (no debian/ tree):
#   /usr/libexec/vfsdaxd                              the daemon, where Debian's virtiofsd lives
#   /usr/lib/systemd/system/vfsdaxd@.socket           socket activation, one instance per share
#   /usr/lib/systemd/system/vfsdaxd@.service          (contrib/; see the comments in them)
#   /usr/share/qemu/vhost-user/50-vfsdaxd.json        the vhost-user backend descriptor QEMU and
#                                                     libvirt look up (contrib/)
#   /usr/share/doc/vfsdaxd/                           README.md, ARCHITECTURE.md, docs/*,
#                                                     copyright (contrib/copyright)
#
# usage: scripts/package-deb.sh [--out DIR]
#   Writes DIR/vfsdaxd_VERSION_ARCH.deb (DIR: target/debian) and prints its path.
#   Builds with the release profile; VFSDAX_DEB_PROFILE=debug packages the debug build instead
#   (the tests do: a release build takes minutes). $CARGO names cargo, $CARGO_TARGET_DIR the
#   target directory, as for cargo; $VFSDAX_DEB_MAINTAINER the Maintainer field.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { echo "package-deb: $*" >&2; }
die() {
    say "$*"
    exit 1
}

out=$repo/target/debian
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (usage: scripts/package-deb.sh [--out DIR])" ;;
    esac
done

cargo=${CARGO:-}
if [ -z "$cargo" ]; then
    if command -v cargo >/dev/null; then
        cargo=cargo
    elif [ -x "$HOME/.cargo/bin/cargo" ]; then
        cargo=$HOME/.cargo/bin/cargo
    else
        die "cargo not found (install Rust, or set CARGO)"
    fi
fi
for tool in dpkg-deb dpkg strip; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian packages dpkg, binutils)"
done

profile=${VFSDAX_DEB_PROFILE:-release}
case $profile in
release) profile_args=(--release); profile_dir=release ;;
debug | dev) profile_args=(); profile_dir=debug ;;
*) die "VFSDAX_DEB_PROFILE must be release or debug, not $profile" ;;
esac
target_dir=${CARGO_TARGET_DIR:-$repo/target}

build=("$cargo" build --locked "${profile_args[@]}" -p vfsdax-daemon --bin vfsdaxd)
say "${build[*]}"
"${build[@]}" >&2
bin=$target_dir/$profile_dir/vfsdaxd
[ -x "$bin" ] || die "$bin was not built"

version=$("$bin" --version | awk '{ print $2 }')
[ -n "$version" ] || die "cannot read the version from $bin --version"
arch=$(dpkg --print-architecture)

stage=$(mktemp -d "${TMPDIR:-/tmp}/vfsdaxd-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/vfsdaxd

install -d -m 0755 "$root/DEBIAN" "$root/usr/libexec" "$root/usr/lib/systemd/system" \
    "$root/usr/share/qemu/vhost-user" "$root/usr/share/doc/vfsdaxd/docs"
install -m 0755 "$bin" "$root/usr/libexec/vfsdaxd"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$root/usr/libexec/vfsdaxd"
install -m 0644 contrib/vfsdaxd@.socket contrib/vfsdaxd@.service "$root/usr/lib/systemd/system/"
install -m 0644 contrib/50-vfsdaxd.json "$root/usr/share/qemu/vhost-user/"
install -m 0644 README.md ARCHITECTURE.md "$root/usr/share/doc/vfsdaxd/"
for doc in docs/*; do
    if [ -f "$doc" ]; then
        install -m 0644 "$doc" "$root/usr/share/doc/vfsdaxd/docs/"
    fi
done
install -m 0644 contrib/copyright "$root/usr/share/doc/vfsdaxd/copyright"

# Shared-library dependencies: dpkg-shlibdeps (dpkg-dev) when it is there, else the newest
# glibc symbol version the binary needs.
depends=
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$stage/debian"
    printf 'Source: vfsdax\n\nPackage: vfsdaxd\nArchitecture: any\n' >"$stage/debian/control"
    depends=$(cd "$stage" && dpkg-shlibdeps -O -e "$root/usr/libexec/vfsdaxd" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
fi
if [ -z "$depends" ]; then
    glibc=$(objdump -T "$root/usr/libexec/vfsdaxd" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' |
        sort -uV | tail -n 1)
    depends="libc6${glibc:+ (>= $glibc)}, libgcc-s1"
fi

installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: vfsdaxd
Version: $version
Architecture: $arch
Maintainer: ${VFSDAX_DEB_MAINTAINER:-vfsdax developers <vfsdax@example.invalid>}
Installed-Size: $installed_size
Depends: $depends
Suggests: qemu-system-x86
Section: admin
Priority: optional
Homepage: https://example.invalid/vfsdax
Description: vhost-user virtio-fs daemon with DAX windows
 vfsdaxd shares a host directory with virtual machines over virtio-fs, as a
 vhost-user backend of QEMU or cloud-hypervisor. Its command line follows
 virtiofsd's. With --cache-size it maps file ranges straight into the guest's
 DAX window, and it keeps the VM alive when a file behind a DAX mapping is
 truncated on the host.
 .
 The package installs the daemon as /usr/libexec/vfsdaxd, systemd units that
 start one daemon per share through socket activation (vfsdaxd@NAME.socket),
 and the vhost-user backend descriptor libvirt uses to find it.
EOF
# Units changed: systemd reads them again. No instance is enabled or restarted (a running one
# serves a VM).
for script in postinst postrm; do
    cat >"$root/DEBIAN/$script" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
EOF
    chmod 0755 "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb=$out/vfsdaxd_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
say "built $deb ($profile build)"
echo "$deb"
