// Interop with C code written against <linux/virtio_ring.h>: a C device consumes a ring our
// driver filled, and our device consumes a ring a C driver filled (including an indirect table).
// The guest memory image travels through a file between the two.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { Feature, featureMask, legacySplitLayout } from "@virtio-ts/spec";
import {
  DescriptorChain,
  type QueueLayout,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { beforeAll, describe, expect, it } from "vitest";

const IMG = 0x20000;
const dir = mkdtempSync(join(tmpdir(), "virtio-ts-interop-"));
const bin = join(dir, "interop");
const img = join(dir, "guest.img");
const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT_EVENT = ringFeatures(
  featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.RING_INDIRECT_DESC),
);

beforeAll(() => {
  const src = fileURLToPath(new URL("./c/interop.c", import.meta.url));
  try {
    execFileSync("gcc", ["-std=gnu11", "-O1", "-Wall", "-Werror", "-o", bin, src], {
      stdio: "pipe",
    });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === "ENOENT")
      throw new Error(
        "gcc not found: install the Debian packages gcc and linux-libc-dev (CI does)",
      );
    throw new Error(`gcc failed:\n${err.stderr?.toString()}`);
  }
});

function memOver(buffer: ArrayBuffer) {
  return new GuestMemoryMap([{ guestBase: 0, size: IMG, buffer }]);
}
function runC(...args: string[]): string[] {
  return execFileSync(bin, args, { encoding: "utf8" }).trim().split("\n");
}
function saveImage(buffer: ArrayBuffer) {
  writeFileSync(img, new Uint8Array(buffer));
}
function loadImage(buffer: ArrayBuffer) {
  new Uint8Array(buffer).set(readFileSync(img));
}

describe("our driver against a C device using <linux/virtio_ring.h>", () => {
  const legacy = legacySplitLayout(16);
  const layouts: [string, QueueLayout][] = [
    [
      "the legacy contiguous layout (vring_init)",
      { size: 16, desc: 0x1000, driver: 0x1000 + legacy.avail, device: 0x1000 + legacy.used },
    ],
    ["separately placed areas", { size: 16, desc: 0x6000, driver: 0x4002, device: 0x5004 }],
  ];
  for (const [name, layout] of layouts) {
    it(`the C device walks our chains and our driver reaps its answers, with ${name}`, () => {
      const buffer = new ArrayBuffer(IMG);
      const mem = memOver(buffer);
      const drv = new SplitDriverQueue<string>(mem, layout, EVENT_IDX);
      mem.write(0x10000, new Uint8Array([1, 2, 3, 4, 5]));
      drv.add([{ addr: 0x10000, len: 5 }], [{ addr: 0x11000, len: 32 }], "one");
      drv.add(
        [],
        [
          { addr: 0x12000, len: 7 },
          { addr: 0x12100, len: 9 },
        ],
        "two",
      );
      drv.add(
        [
          { addr: 0x10000, len: 2 },
          { addr: 0x10002, len: 3 },
        ],
        [],
        "three",
      );
      drv.publish();
      saveImage(buffer);
      // The C device asks to be kicked only when the driver passes 2 more entries.
      const lines = runC(
        "device",
        img,
        "16",
        `${layout.desc}`,
        `${layout.driver}`,
        `${layout.device}`,
        "2",
      );
      expect(lines).toEqual([
        "head=0 nr=1 nw=1 rbytes=5 wbytes=32 sum=15",
        "head=2 nr=0 nw=2 rbytes=0 wbytes=16 sum=0",
        "head=4 nr=2 nw=0 rbytes=5 wbytes=0 sum=15",
      ]);
      loadImage(buffer);
      expect([drv.reap(), drv.lastLen]).toEqual(["one", 32]);
      expect([drv.reap(), drv.lastLen]).toEqual(["two", 16]);
      expect([drv.reap(), drv.lastLen]).toEqual(["three", 0]);
      expect(drv.reap()).toBeUndefined();
      expect(mem.readU8(0x11000 + 5)).toBe(5); // C wrote (head + offset) & 0xff
      expect(mem.readU8(0x12100)).toBe((2 + 7) & 0xff);
      // avail_event = 3 + 2 = 5: publishing one more (idx 4) needs no kick, the next does.
      drv.add([{ addr: 0x10000, len: 1 }], [], "four");
      expect(drv.publish()).toBe(false);
      drv.add([{ addr: 0x10000, len: 1 }], [], "five");
      expect(drv.publish()).toBe(false);
      drv.add([{ addr: 0x10000, len: 1 }], [], "six");
      expect(drv.publish()).toBe(true);
    });
  }
});

describe("our device against a C driver using <linux/virtio_ring.h>", () => {
  it("pops the C driver's chains, including an indirect table, and the C driver checks the used ring", () => {
    const built = runC("driver-build", img);
    const [, avail, used] = /avail=(\d+) used=(\d+)/.exec(built[0]!)!.map(Number);
    const buffer = new ArrayBuffer(IMG);
    loadImage(buffer);
    const mem = memOver(buffer);
    const dev = new SplitDeviceQueue(
      mem,
      { size: 8, desc: 0, driver: avail!, device: used! },
      INDIRECT_EVENT,
    );
    const chain = new DescriptorChain(8);
    const seen: string[] = [];
    const request = new Uint8Array(13);
    while (dev.pop(chain)) {
      const segs = Array.from(
        { length: chain.count },
        (_, i) => `${chain.writable(i) ? "w" : "r"}${chain.len(i)}`,
      );
      seen.push(`${chain.head}:${segs.join(",")}`);
      if (chain.head === 0) {
        chain.copyFromReadable(mem, 0, request);
        chain.copyToWritable(
          mem,
          0,
          new TextEncoder().encode(new TextDecoder().decode(request).toUpperCase()),
        );
        dev.push(chain.head, 13);
        dev.needsInterrupt(); // the first signal after start is unconditional; the next one is not
      } else dev.push(chain.head, chain.writableBytes);
    }
    expect(seen).toEqual(["0:r13,w64", "5:r4,r4,w16", "7:w10,w20,w30"]);
    expect(new TextDecoder().decode(request)).toBe("hello, device");
    const interrupt = dev.needsInterrupt();
    saveImage(buffer);
    const check = runC("driver-check", img);
    expect(check).toEqual([
      "used_idx=3",
      "id=0 len=13",
      "id=5 len=16",
      "id=7 len=60",
      "need_event(used_event=1, new=3, old=1)=1",
      "reply=HELLO, DEVICE",
    ]);
    expect(interrupt).toBe(true);
  });
});
