// Boot helpers shared by the v86 test files: one guest at a time machine-wide (the interop
// slot, shared with QEMU guests: a v86 boot keeps a core busy for ~40 s).
import { execFileSync } from "node:child_process";
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { acquireGuestSlot } from "@virtio-ts/interop";
import {
  findGuestAssets,
  type LinuxOptions,
  type LinuxResult,
  startLinux,
} from "../../src/index.js";

/** The guest assets, or a failure naming what is missing and how to fetch it. */
export function assetsOrFail() {
  return findGuestAssets();
}

/** Boot, run, power off; the console lines the guest wrote come back too. */
export async function bootRun(
  options: LinuxOptions & { onConsole?: (line: string, send: (text: string) => void) => void },
): Promise<{ r: LinuxResult; hvc: string[] }> {
  const release = await acquireGuestSlot();
  const hvc: string[] = [];
  try {
    let send: (text: string) => void = () => {};
    const g = await startLinux({
      timeoutSeconds: 240,
      ...options,
      onConsoleLine: (line) => {
        hvc.push(line);
        options.onConsole?.(line, send);
      },
    });
    send = (text) => g.sendConsole(text);
    return { r: await g.result, hvc };
  } finally {
    release();
  }
}

/** `K key value...` lines the guest script printed, by key (first word after K). */
export function checks(output: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of output.split("\n")) {
    const k = /^K (\S+) ?(.*)$/.exec(line);
    if (k) m.set(k[1]!, [...(m.get(k[1]!) ?? []), k[2]!]);
  }
  return m;
}

/** 4 KiB of a position-dependent pattern. */
export function pattern(seed: number): Uint8Array {
  const out = new Uint8Array(4096);
  for (let i = 0; i < out.length; i++) out[i] = (i * 7 + seed + (i >> 8)) & 0xff;
  return out;
}

/** A sparse raw image of `size` bytes with `parts` written at their offsets. */
export function makeImage(path: string, size: number, parts: [number, Uint8Array][]): void {
  const fd = openSync(path, "w");
  ftruncateSync(fd, size);
  for (const [at, b] of parts) writeSync(fd, b, 0, b.length, at);
  closeSync(fd);
}

/** `e2fsck -fn` on an image: exit status and output. */
export function e2fsck(path: string): { status: number; out: string } {
  try {
    return {
      status: 0,
      out: execFileSync("e2fsck", ["-fn", path], { encoding: "utf8", stdio: "pipe" }),
    };
  } catch (e) {
    const err = e as { status?: number; stdout?: string; stderr?: string };
    return { status: err.status ?? -1, out: `${err.stdout ?? ""}${err.stderr ?? ""}` };
  }
}

/** Offsets used by the guest scripts: the pattern at 12 MiB, the guest's write 4 KiB later. */
export const PATTERN_BLOCK = 3072;
export const WRITE_BLOCK = 3073;
export const GUEST_TEXT = "written-by-the-guest";

/** Script lines: read the pattern block's md5, write GUEST_TEXT after it (direct I/O). */
export const BLK_SCRIPT = [
  `echo "K pattern $(dd if=/dev/vda bs=4096 skip=${PATTERN_BLOCK} count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"`,
  `printf '${GUEST_TEXT}' | dd of=/dev/vda bs=4096 seek=${WRITE_BLOCK} conv=sync 2>/dev/null && echo "K wrote ok"`,
  // An ext2 file system on the first 8 MiB (the pattern lives above it), files, unmount.
  "mke2fs -q /dev/vda 8192 >/dev/null && mount -t ext2 /dev/vda /mnt && echo hello > /mnt/hello.txt && mkdir /mnt/d && seq 1 5000 > /mnt/d/seq && umount /mnt && echo K mkfs ok",
  'mount -t ext2 -o ro /dev/vda /mnt && echo "K reread $(cat /mnt/hello.txt) $(tail -n 1 /mnt/d/seq)" && umount /mnt',
];

/** Script lines: for each virtio device, its IDs, drivers and negotiated features. */
export const PCI_SCRIPT = [
  'for d in /sys/bus/virtio/devices/*; do p=$(dirname $(readlink -f $d)); echo "K dev $(cat $d/device) $(cat $p/vendor):$(cat $p/device) $(basename $(readlink $d/driver)) $(basename $(readlink $p/driver)) $(cat $d/features)"; done',
];

/** Bit `n` of a sysfs `features` string (bit 0 first). */
export function featureBit(features: string, n: number): boolean {
  return features[n] === "1";
}
