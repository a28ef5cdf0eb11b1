// A real Linux guest (QEMU 7.2, TCG) reads and writes a disk served by our VhostUserBlkBackend:
// QEMU is the vhost-user front-end (vhost-user-blk-pci on pc, vhost-user-blk on microvm), our
// back-end runs the unchanged BlkDevice over a FileDisk on the guest's shared memfd RAM.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice } from "@virtio-ts/devices";
import {
  explainGuest,
  type GuestMachine,
  type KernelInfo,
  requireTools,
  runGuest,
} from "@virtio-ts/interop";
import { VhostUserBlkBackend, type VhostUserError } from "@virtio-ts/vhost-user";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** Hang guard only: the test may first wait for other suites' guests (one runs at a time). */
const BOOT_TEST_TIMEOUT = 240_000;
const IMAGE_SIZE = 16 << 20;

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "vu-blk-linux-"));
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64"]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 512 bytes of a recognisable, position-dependent pattern. */
function pattern(tag: string): Uint8Array {
  const out = new Uint8Array(512);
  const text = new TextEncoder().encode(tag);
  for (let i = 0; i < 512; i++) out[i] = (text[i % text.length]! + Math.floor(i / 64)) & 0xff;
  return out;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

const cases: readonly { machine: GuestMachine; device: string; modules: string[] }[] = [
  { machine: "pc", device: "vhost-user-blk-pci,chardev=c0", modules: ["virtio_pci", "virtio_blk"] },
  {
    machine: "microvm",
    device: "vhost-user-blk,chardev=c0",
    modules: ["virtio_mmio", "virtio_blk"],
  },
];

describe.each(cases)("a Linux guest on $machine uses our vhost-user-blk back-end", (c) => {
  it(
    "reads our sector 0 and writes its own sector 8 through BlkDevice + FileDisk",
    async () => {
      const img = join(dir, `${c.machine}.img`);
      const sock = join(dir, `${c.machine}.sock`);
      const ours = pattern(`virtio-ts host sector 0 on ${c.machine}|`);
      const theirs = pattern(`guest wrote sector 8 on ${c.machine}#`);
      const image = new Uint8Array(IMAGE_SIZE);
      image.set(ours, 0);
      writeFileSync(img, image);

      const disk = await FileDisk.open(img);
      const device = new BlkDevice(disk, { queueSize: 128 }); // QEMU's vhost-user-blk queue-size default
      const closes: (VhostUserError | undefined)[] = [];
      const backend = new VhostUserBlkBackend(device, sock, {
        onConnectionClose: (e) => closes.push(e),
      });
      await backend.listening;
      let result: Awaited<ReturnType<typeof runGuest>>;
      try {
        result = await runGuest({
          machine: c.machine,
          kernel,
          modules: c.modules,
          sharedMemory: true,
          files: [{ kind: "file", path: "/sector8.bin", data: theirs }],
          args: ["-chardev", `socket,id=c0,path=${sock}`, "-device", c.device],
          script: [
            'echo "size=$(cat /sys/block/vda/size)"',
            'echo "md5=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | md5sum | cut -d" " -f1)"',
            "echo \"head=$(dd if=/dev/vda bs=16 count=1 2>/dev/null | od -A n -t x1 | tr -d ' \\n')\"",
            "dd if=/sector8.bin of=/dev/vda bs=512 seek=8 count=1 conv=fsync 2>/dev/null",
            "sync",
            'echo "back=$(dd if=/dev/vda bs=512 skip=8 count=1 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
            "",
          ].join("\n"),
          timeoutMs: 90_000,
        });
      } finally {
        await backend.close();
        await device.whenIdle();
        await disk.close();
      }
      const closeErrors = closes.filter((e) => e !== undefined).map((e) => e.message);
      const why = `${explainGuest(result)}\n--- back-end ---\n${closeErrors.join("\n")}`;
      console.info(
        `[interop] ${c.machine} Linux over vhost-user-blk (our back-end): ${Math.round(result.durationMs)} ms`,
      );
      const md5 = (b: Uint8Array): string => createHash("md5").update(b).digest("hex");

      expect(result.timedOut, why).toBe(false);
      expect(result.guestExit, why).toBe(0);
      // The guest saw our capacity (sectors) and our sector 0, byte for byte.
      expect(result.output, why).toContain(`size=${IMAGE_SIZE / 512}\n`);
      expect(result.output, why).toContain(`head=${hex(ours.subarray(0, 16))}\n`);
      expect(result.output, why).toContain(`md5=${md5(ours)}\n`);
      expect(result.output, why).toContain(`back=${md5(theirs)}\n`);
      // The file holds the guest's sector 8 and nothing else changed.
      const after = new Uint8Array(readFileSync(img));
      expect(after.length).toBe(IMAGE_SIZE);
      expect(hex(after.subarray(8 * 512, 9 * 512))).toBe(hex(theirs));
      expect(hex(after.subarray(0, 512))).toBe(hex(ours));
      expect(after.subarray(512, 8 * 512).every((b) => b === 0)).toBe(true);
      // QEMU hung up when it exited; no connection was closed for a protocol error.
      expect(closeErrors).toEqual([]);
    },
    BOOT_TEST_TIMEOUT,
  );
});
