#!/usr/bin/env bash
# What the test suite needs outside Node, installed when missing (the tests fail, never skip,
# without them): run by `pnpm test` before the build, so the README's test command works on a
# fresh Debian machine. Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and the Linux UAPI headers: the spec layout check and the C interop tests compile C
# programs against <linux/virtio_*.h>; they fail (never skip) without them.
# qemu-utils (qemu-nbd, qemu-io, qemu-img) and tshark: real peers nobody here wrote, on the
# other side of the NBD client/server and of the packet capture tests.
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -f /usr/include/linux/virtio_ring.h ] || need+=(linux-libc-dev)
command -v qemu-nbd >/dev/null 2>&1 || need+=(qemu-utils)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
# QEMU (qemu-storage-daemon, qemu-system-x86_64), a Linux kernel and BusyBox: the vhost-user
# interop tests boot a real guest and drive a real vhost-user back-end (see ../shared/PEERS.md).
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
# e2fsck: the v86 Linux tests check the file system the guest made on our disk.
command -v e2fsck >/dev/null 2>&1 || need+=(e2fsprogs)
# Debian's Chromium: the browser test of tools/linux drives it headless with playwright-core
# (no browser download works here).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# node-gyp builds the vhost-user addon against Node's own headers.
command -v g++ >/dev/null 2>&1 || need+=(g++ make python3)
if [ ${#need[@]} -gt 0 ] && { [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; }; then
  echo "test-deps: missing Debian packages: ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
  exit 1
fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; the answer does not matter here.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The vhost-user addon (fd passing, memfd mapping, eventfds), built from source with node-gyp
# against this Node's own headers, offline; only when missing or older than its C source.
addon=packages/vhost-user/native/build/Release/vhost_user.node
if [ ! -f "$addon" ] || [ packages/vhost-user/native/vhost_user.c -nt "$addon" ]; then
  node packages/vhost-user/scripts/build-native.mjs
fi

# The i686 guest that tools/linux boots in v86 (kernel, BusyBox, SeaBIOS), cached per user.
bash scripts/linux-guest.sh --quiet
