// A real Linux guest (QEMU 7.2, TCG) on our vhost-user-blk back-end with a packed virtqueue
// (`packed=on`, VIRTIO 1.3 §2.8): reads and writes byte-exact through enough requests to wrap
// the ring many times; then the disk grows under the running guest and the new capacity
// reaches it through the back-end request channel (CONFIG_CHANGE_MSG → GET_CONFIG → config
// interrupt). The messages QEMU sent are recorded for docs/real-guest.md's table.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { explainGuest, type KernelInfo, requireTools, startGuest } from "@virtio-ts/interop";
import { VhostUserBlkBackend, type VhostUserError } from "@virtio-ts/vhost-user";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { md5, pattern } from "../../../test-support/pattern.js";

/** Hang guard only: the test may first wait for other suites' guests (one runs at a time). */
const BOOT_TEST_TIMEOUT = 300_000;
const SMALL = 8 << 20;
const LARGE = 12 << 20;

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "vu-blk-packed-"));
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64"]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file-backed disk that shows `capacity` sectors of a larger file until it is grown. */
class GrowableDisk implements BlockBackend {
  capacity: number;
  readonly blockSize = 512;
  readonly readOnly = false;
  constructor(
    readonly inner: FileDisk,
    sectors: number,
  ) {
    this.capacity = sectors;
  }
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    return this.inner.read(sector, iovecs);
  }
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    return this.inner.write(sector, iovecs);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  discard(sector: number, count: number): Promise<void> {
    return this.inner.discard(sector, count);
  }
  writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    return this.inner.writeZeroes(sector, count, unmap);
  }
}

describe("a Linux guest on our vhost-user-blk back-end with packed=on", () => {
  it(
    "negotiates the packed ring, reads and writes byte-exact through many ring wraps, and sees the disk grow",
    async () => {
      const img = join(dir, "disk.img");
      const sock = join(dir, "blk.sock");
      const head = pattern(1 << 20, 7); // the first MiB, ours
      const payload = pattern(2 << 20, 11); // 2 MiB the guest writes at 4 MiB
      const tail = pattern(4096, 13); // written past the old end after the resize
      const image = new Uint8Array(LARGE);
      image.set(head, 0);
      writeFileSync(img, image);

      const file = await FileDisk.open(img);
      const disk = new GrowableDisk(file, SMALL / 512);
      const device = new BlkDevice(disk, { queueSize: 128 });
      const closes: (VhostUserError | undefined)[] = [];
      const backend = new VhostUserBlkBackend(device, sock, {
        onConnectionClose: (e) => closes.push(e),
      });
      await backend.listening;
      let grown = false;
      let result: Awaited<ReturnType<typeof startGuest>>["result"] extends Promise<infer R>
        ? R
        : never;
      try {
        const guest = await startGuest({
          machine: "pc",
          kernel,
          modules: ["virtio_pci", "virtio_blk"],
          sharedMemory: true,
          files: [
            { kind: "file", path: "/payload.bin", data: payload },
            { kind: "file", path: "/tail.bin", data: tail },
          ],
          args: [
            "-chardev",
            `socket,id=c0,path=${sock}`,
            "-device",
            "vhost-user-blk-pci,chardev=c0,packed=on,queue-size=128",
          ],
          script: [
            // Feature bit 34 (VIRTIO_F_RING_PACKED) in the negotiated feature string.
            'f=$(cat /sys/block/vda/device/features); echo "packed=$(echo $f | cut -c35)"',
            'echo "size=$(cat /sys/block/vda/size)"',
            'echo "head=$(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
            // 512 direct 4 KiB writes: 512 chains of 3 descriptors on a 128-entry ring.
            "dd if=/payload.bin of=/dev/vda bs=4k seek=1024 oflag=direct 2>/dev/null",
            'echo "back=$(dd if=/dev/vda bs=4k skip=1024 count=512 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
            "echo ready-to-grow",
            "i=0",
            'while [ "$(cat /sys/block/vda/size)" = "16384" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done',
            'echo "grown=$(cat /sys/block/vda/size)"',
            "dd if=/tail.bin of=/dev/vda bs=4k seek=2560 oflag=direct conv=fsync 2>/dev/null",
            'echo "tail=$(dd if=/dev/vda bs=4k skip=2560 count=1 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
            'echo "ioerrors=$(dmesg | grep -ci "I/O error")"',
            "dmesg | grep -i 'capacity change' | tail -1",
            "",
          ].join("\n"),
          onLine: (line) => {
            if (line.includes("ready-to-grow") && !grown) {
              grown = true;
              disk.capacity = LARGE / 512;
              device.updateCapacity();
            }
          },
          timeoutMs: 180_000,
        });
        result = await guest.result;
      } finally {
        await backend.close();
        await device.whenIdle();
        await file.close();
      }
      const closeErrors = closes.filter((e) => e !== undefined).map((e) => e.message);
      const why = `${explainGuest(result, 40)}\n--- back-end ---\n${closeErrors.join("\n")}`;
      const requests = backend.stats.requests;
      console.info(
        `[interop] packed vhost-user-blk: ${Math.round(result.durationMs)} ms; QEMU 7.2 sent ${JSON.stringify(requests)}`,
      );

      expect(result.timedOut, why).toBe(false);
      expect(result.guestExit, why).toBe(0);
      expect(result.output, why).toContain("packed=1\n");
      expect(result.output, why).toContain(`size=${SMALL / 512}\n`);
      expect(result.output, why).toContain(`head=${md5(head)}\n`);
      expect(result.output, why).toContain(`back=${md5(payload)}\n`);
      expect(result.output, why).toContain(`grown=${LARGE / 512}\n`);
      expect(result.output, why).toContain(`tail=${md5(tail)}\n`);
      expect(result.output, why).toContain("ioerrors=0\n");
      expect(result.output, why).toMatch(/capacity change from 16384 to 24576/);
      // The file: our head, the guest's payload and tail, byte for byte.
      const after = new Uint8Array(readFileSync(img));
      expect(md5(after.subarray(0, 1 << 20))).toBe(md5(head));
      expect(md5(after.subarray(4 << 20, 6 << 20))).toBe(md5(payload));
      expect(md5(after.subarray(10 << 20, (10 << 20) + 4096))).toBe(md5(tail));
      // QEMU 7.2 uses the protocol extensions it supports: memory slots, status, inflight
      // tracking, the back-end channel and GET_CONFIG after our CONFIG_CHANGE_MSG.
      expect(requests.ADD_MEM_REG ?? 0, why).toBeGreaterThan(0);
      expect(requests.SET_BACKEND_REQ_FD, why).toBe(1);
      expect(requests.GET_CONFIG ?? 0, why).toBeGreaterThanOrEqual(2);
      expect(closeErrors).toEqual([]);
    },
    BOOT_TEST_TIMEOUT,
  );
});
