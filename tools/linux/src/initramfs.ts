import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { cpioNewc, type InitramfsEntry, resolveModules } from "@virtio-ts/interop";
import type { GuestAssets } from "./assets.js";

/** Modules `/init` loads, dependencies added in order by {@link resolveModules}. */
export const GUEST_MODULES: readonly string[] = [
  "virtio_pci",
  "virtio_blk",
  "virtio_net",
  "virtio_console",
  "virtio-rng",
  "virtio_balloon",
  "ext4",
  // ext4 asks the crypto API for crc32c when it mounts (even ext2 without metadata_csum).
  "crc32c_generic",
];

/** Printed by `/init` when the modules are loaded and eth0 is up, before the command. */
export const READY_MARKER = "@@VIRTIO-TS-READY@@";
/** Printed by `/init` after the command: `@@VIRTIO-TS-EXIT <status>@@`. */
export const EXIT_MARKER = "@@VIRTIO-TS-EXIT";
/** Printed by `/init` when a module fails to load: `@@VIRTIO-TS-INSMOD-FAILED <name>@@`. */
export const INSMOD_FAILED_MARKER = "@@VIRTIO-TS-INSMOD-FAILED";

/** Options of {@link buildGuestInitramfs}. */
export interface GuestInitramfsOptions {
  /** Kernel modules, BusyBox. */
  readonly assets: GuestAssets;
  /**
   * The command `/bin/sh -c` runs after setup; its status is reported on the serial line and
   * the guest powers off. Undefined: an interactive shell on the serial console.
   */
  readonly command?: string;
  /** Guest address of eth0 (default 10.0.2.15/24). */
  readonly address?: string;
}

/** The `/init` script. */
export function initScript(modules: readonly string[], options: GuestInitramfsOptions): string {
  const address = options.address ?? "10.0.2.15/24";
  const run =
    options.command === undefined
      ? `echo "virtio-ts: interactive shell; poweroff -f (or Ctrl-D) ends the session"
setsid cttyhack /bin/sh -l
status=$?`
      : `/bin/sh /run.sh
status=$?`;
  return `#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${modules.join(" ")}; do
  insmod /lib/modules/$m.ko || echo "${INSMOD_FAILED_MARKER} $m@@"
done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add ${address} dev eth0
  ip link set eth0 up
fi
mkdir -p /mnt
echo ${READY_MARKER}
${run}
sync
echo "${EXIT_MARKER} $status@@"
poweroff -f
`;
}

/**
 * A gzip-compressed initramfs for the i686 guest: static BusyBox, the virtio modules (and
 * ext4) in load order, `/init` (mount proc, sysfs, devtmpfs; insmod; eth0 up; the command or an
 * interactive shell; `sync`; exit marker; power off), written in Node only.
 * @param options - assets and command
 * @returns the compressed archive
 * @throws Error naming a module missing from the kernel
 */
export function buildGuestInitramfs(options: GuestInitramfsOptions): Uint8Array {
  const modules = resolveModules(options.assets.modulesDir, GUEST_MODULES);
  const names = modules.map((m) => m.name);
  const entries: InitramfsEntry[] = [
    ...[
      "/bin",
      "/sbin",
      "/usr",
      "/usr/bin",
      "/usr/sbin",
      "/dev",
      "/proc",
      "/sys",
      "/tmp",
      "/root",
      "/etc",
    ].map((path): InitramfsEntry => ({ kind: "dir", path })),
    { kind: "dir", path: "/lib" },
    { kind: "dir", path: "/lib/modules" },
    { kind: "chardev", path: "/dev/console", major: 5, minor: 1 },
    { kind: "file", path: "/bin/busybox", data: readFileSync(options.assets.busybox), mode: 0o755 },
    { kind: "symlink", path: "/bin/sh", target: "busybox" },
    ...modules.map(
      (m): InitramfsEntry => ({
        kind: "file",
        path: `/lib/modules/${m.name}.ko`,
        data: readFileSync(m.path),
      }),
    ),
    { kind: "file", path: "/init", data: initScript(names, options), mode: 0o755 },
    { kind: "file", path: "/etc/profile", data: "export PS1='guest# '\n" },
  ];
  if (options.command !== undefined) {
    entries.push({ kind: "file", path: "/run.sh", data: `${options.command}\n`, mode: 0o755 });
  }
  return gzipSync(cpioNewc(entries), { level: 1 });
}
