#!/usr/bin/env bash
# The guest `pnpm linux` boots in v86: Debian bookworm's 32-bit kernel (the versioned package
# linux-image-6.1.0-NN-686:i386 that linux-image-686:i386 depends on) and busybox-static:i386,
# downloaded with `apt-get download` and unpacked with `dpkg -x` (nothing is installed), plus
# SeaBIOS for the BIOS images. Idempotent and quick when present: run by scripts/test-deps.sh
# and by `pnpm linux` on first use.
#
# Cache: $VIRTIO_TS_LINUX_ASSETS, else ${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/linux-i686,
# owned by whoever runs this (a checkout in a 0700 temp folder works, and apt's _apt sandbox
# user never needs to read it). tools/linux/src/assets.ts reads the same layout:
#   <cache>/kernel/boot/vmlinuz-<version>, <cache>/kernel/lib/modules/<version>/
#   <cache>/busybox/bin/busybox
#   <cache>/READY (the kernel version, written last)
set -euo pipefail

cache="${VIRTIO_TS_LINUX_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/linux-i686}"
quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
say() { [ "$quiet" -eq 1 ] || echo "linux-guest: $*" >&2; }
root=0
[ "$(id -u)" -eq 0 ] && root=1

# SeaBIOS: v86 runs Debian's bios.bin and vgabios-stdvga.bin.
if [ ! -f /usr/share/seabios/bios.bin ] || [ ! -f /usr/share/seabios/vgabios-stdvga.bin ]; then
  if [ "$root" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing seabios"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends seabios
  else
    echo "linux-guest: /usr/share/seabios/bios.bin is missing: install package seabios (as root: apt-get install seabios)" >&2
    exit 1
  fi
fi

if [ -f "$cache/READY" ]; then
  v=$(cat "$cache/READY")
  if [ -f "$cache/kernel/boot/vmlinuz-$v" ] && [ -d "$cache/kernel/lib/modules/$v" ] && [ -x "$cache/busybox/bin/busybox" ]; then
    say "guest assets present in $cache (kernel $v)"
    exit 0
  fi
fi

# apt needs to know i386 packages: add the architecture and refresh the lists once (root).
if ! apt-cache show busybox-static:i386 >/dev/null 2>&1; then
  if [ "$root" -ne 1 ]; then
    echo "linux-guest: apt knows no i386 packages; as root run: dpkg --add-architecture i386 && apt-get update" >&2
    exit 1
  fi
  say "adding the i386 architecture to apt"
  dpkg --add-architecture i386
  # A mirror in mid-sync can fail one index (apt-get exits 1) while the others are fine.
  apt-get update -qq || true
  if ! apt-cache show busybox-static:i386 >/dev/null 2>&1; then
    echo "linux-guest: apt-get update did not bring i386 package lists (busybox-static:i386 unknown)" >&2
    exit 1
  fi
fi

kpkg=$(apt-cache depends linux-image-686:i386 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-686\(:i386\)\?\)$/\1/p' | head -n1)
kpkg=${kpkg%:i386}
if [ -z "$kpkg" ]; then
  echo "linux-guest: cannot tell which kernel linux-image-686:i386 depends on (apt-cache depends linux-image-686:i386)" >&2
  exit 1
fi
version=${kpkg#linux-image-}

say "downloading $kpkg:i386 and busybox-static:i386 into $cache"
mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
sandbox=()
# As root apt drops to the _apt user to download, who may not reach a 0700 folder.
[ "$root" -eq 1 ] && sandbox=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download -q "${sandbox[@]}" "$kpkg:i386" busybox-static:i386 >/dev/null)
mkdir -p "$work/kernel" "$work/busybox"
dpkg -x "$work/$kpkg"_*_i386.deb "$work/kernel"
dpkg -x "$work"/busybox-static_*_i386.deb "$work/busybox"
rm -rf "$cache/kernel" "$cache/busybox" "$cache/READY"
mv "$work/kernel" "$cache/kernel"
mv "$work/busybox" "$cache/busybox"
echo "$version" >"$cache/READY"
say "kernel $version and busybox unpacked in $cache"
