#!/bin/bash
# Build virtqemud from Debian's own libvirt source package, for the installed libvirt0 version, into
# ${LIBVIRT_BUILD_DIR:-${XDG_CACHE_HOME:-~/.cache}/overhead-service/libvirt-<version>}/virtqemud.
# Reused when present. The result runs with Debian's packaged libvirt.so.0 and QEMU driver module
# (libvirt-daemon-driver-qemu): only the daemon executable is built here.
#
# Needs a deb-src entry (make libvirt-build-deps adds one for the Debian mirror apt already uses)
# and the build dependencies that make libvirt-build-deps installs.
set -euo pipefail

version="$(dpkg-query -W -f='${Version}' libvirt0 2>/dev/null || true)"
if [ -z "$version" ]; then
    echo "libvirt0 is not installed: apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients" >&2
    exit 2
fi
dest="${LIBVIRT_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/overhead-service/libvirt-$version}"
if [ -x "$dest/virtqemud" ]; then
    echo "$dest/virtqemud (already built)"
    exit 0
fi
mkdir -p "$dest"
work="$(mktemp -d "$dest/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

cd "$work"
apt-get source -qq --only-source "libvirt=$version" >/dev/null
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'libvirt-*' | head -n 1)"

# Debian's debian/rules configure options for the features that end up in the daemon and in
# libvirt.so.0 (so that the daemon is ABI-compatible with the packaged library), with Debian's
# hardening flags; drivers, storage back ends, docs and tests are left out (virtqemud does not
# link them).
export CFLAGS="-O2 -fstack-protector-strong -Wformat -Werror=format-security -Wdate-time -D_FORTIFY_SOURCE=2"
export LDFLAGS="-Wl,-z,relro -Wl,-z,now"
meson setup "$work/build" "$src" --buildtype=plain --prefix=/usr --libdir=lib/x86_64-linux-gnu \
    --sysconfdir=/etc --localstatedir=/var --libexecdir=/usr/lib/libvirt -Drunstatedir=/run \
    -Dauto_features=disabled -Ddocs=disabled -Dtests=disabled -Dexpensive_tests=disabled \
    -Dpackager=Debian "-Dpackager_version=$version" \
    -Ddriver_qemu=enabled -Ddriver_libvirtd=enabled -Ddriver_remote=enabled -Dremote_default_mode=legacy \
    -Ddriver_test=enabled -Ddriver_esx=enabled -Dqemu_user=libvirt-qemu -Dqemu_group=libvirt-qemu \
    -Dqemu_moddir=/usr/lib/x86_64-linux-gnu/qemu -Dqemu_datadir=/usr/share/qemu \
    -Dsasl=enabled -Dyajl=enabled -Dlibssh2=enabled -Dlibssh=enabled -Dcapng=enabled -Dlibnl=enabled \
    -Dnumactl=enabled -Dselinux=enabled -Dsecdriver_selinux=enabled -Dselinux_mount=/sys/fs/selinux \
    -Dapparmor=enabled -Dsecdriver_apparmor=enabled -Dcurl=enabled -Ddtrace=enabled -Daudit=enabled \
    -Dattr=enabled -Dpolkit=enabled -Dfirewalld=enabled -Dinit_script=none >"$work/meson.log"
ninja -C "$work/build" -j "$(nproc)" src/virtqemud >"$work/ninja.log"

install -m 0755 "$work/build/src/virtqemud" "$dest/virtqemud.new"
"$dest/virtqemud.new" --version >/dev/null  # links against the packaged libvirt.so.0
mv "$dest/virtqemud.new" "$dest/virtqemud"
{
    echo "source: Debian libvirt $version (apt-get source), built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build seconds: $((SECONDS - started)) on $(nproc) CPUs"
    sed -n '/User defined options/,$p' "$work/meson.log"
} >"$dest/build-info.txt"
echo "$dest/virtqemud (built in $((SECONDS - started)) s)"
