// Interop with C code written against <linux/virtio_ring.h> (test/c/interop.c): a C device
// consumes rings our SplitDriverQueue filled, and our SplitDeviceQueue consumes a ring a C driver
// filled (including indirect tables). JS cannot share memory with a process, so the guest memory
// image travels through a file between the two. gcc is required: without it these tests fail
// (they never skip), naming the Debian packages to install.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { Feature, featureMask, LEGACY_VRING_ALIGN, legacySplitLayout } from "@virtio-ts/spec";
import {
  DescriptorChain,
  NO_RING_FEATURES,
  type QueueLayout,
  type RingFeatures,
  ringFeatures,
  SplitDeviceQueue,
  type SplitDriverOptions,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { afterAll, describe, expect, it } from "vitest";

const IMG = 0x20000;
let dir = "";
let bin = "";
let img = "";
const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT_EVENT = ringFeatures(
  featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.RING_INDIRECT_DESC),
);

// Compiled on first use, from inside a test, so that a missing gcc fails every test with the
// message below instead of leaving them skipped (as a failing beforeAll would).
let built: Error | "ok" | undefined;
function build(): void {
  if (built === undefined) built = compile();
  if (built !== "ok") throw built;
}
function compile(): Error | "ok" {
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-interop-"));
  bin = join(dir, "interop");
  img = join(dir, "guest.img");
  const src = fileURLToPath(new URL("./c/interop.c", import.meta.url));
  try {
    execFileSync("gcc", ["-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-o", bin, src], {
      stdio: "pipe",
    });
    return "ok";
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === "ENOENT") {
      return new Error(
        "gcc not found: the C interop tests need the Debian packages gcc and linux-libc-dev (apt-get install gcc linux-libc-dev)",
      );
    }
    const stderr = err.stderr?.toString() ?? String(e);
    if (stderr.includes("virtio_ring.h")) {
      return new Error(
        `<linux/virtio_ring.h> is missing: install the Debian package linux-libc-dev\n${stderr}`,
      );
    }
    return new Error(`gcc could not compile test/c/interop.c:\n${stderr}`);
  }
}

afterAll(() => {
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
});

function memOver(buffer: ArrayBuffer) {
  return new GuestMemoryMap([{ guestBase: 0, size: IMG, buffer }]);
}
function runC(...args: (string | number)[]): string[] {
  build();
  try {
    return execFileSync(bin, args.map(String), { encoding: "utf8", stdio: "pipe" })
      .trim()
      .split("\n");
  } catch (e) {
    const err = e as { stderr?: string; status?: number };
    throw new Error(`interop ${args[0]} exited ${err.status}: ${err.stderr}`);
  }
}
function saveImage(buffer: ArrayBuffer) {
  writeFileSync(img, new Uint8Array(buffer));
}
function loadImage(buffer: ArrayBuffer) {
  new Uint8Array(buffer).set(readFileSync(img));
}

describe("our driver against a C device using <linux/virtio_ring.h>", () => {
  const BASE = 0x1000;
  const legacy = legacySplitLayout(16);
  const layouts: {
    name: string;
    layout: QueueLayout;
    device: (evt: number) => string[];
    header: string[];
  }[] = [
    {
      name: "the legacy contiguous layout of vring_init",
      layout: { size: 16, desc: BASE, driver: BASE + legacy.avail, device: BASE + legacy.used },
      device: (evt) => runC("device-legacy", img, 16, BASE, LEGACY_VRING_ALIGN, evt),
      // vring_init must place the areas where legacySplitLayout says.
      header: [`vring_init avail=${legacy.avail} used=${legacy.used} size=${legacy.total}`],
    },
    {
      name: "separately placed areas",
      layout: { size: 16, desc: 0x6000, driver: 0x4002, device: 0x5004 },
      device: (evt) => runC("device", img, 16, 0x6000, 0x4002, 0x5004, evt),
      header: [],
    },
  ];
  const configs: {
    name: string;
    features: RingFeatures;
    options: SplitDriverOptions;
    evt: number;
    heads: number[];
    ind: string[];
  }[] = [
    {
      name: "no ring features",
      features: NO_RING_FEATURES,
      options: {},
      evt: -1,
      heads: [0, 2, 4, 6],
      ind: ["", "", "", ""],
    },
    {
      name: "EVENT_IDX",
      features: EVENT_IDX,
      options: {},
      evt: 2,
      heads: [0, 2, 4, 6],
      ind: ["", "", "", ""],
    },
    {
      name: "INDIRECT_DESC and EVENT_IDX",
      features: INDIRECT_EVENT,
      options: { indirect: { addr: 0x8000, maxEntries: 4 } },
      evt: 2,
      heads: [0, 1, 2, 3],
      // 2-segment chains go indirect; the 5-segment one does not fit a 4-entry slot.
      ind: [" indirect=2", " indirect=2", " indirect=2", ""],
    },
  ];
  for (const { name, layout, device, header } of layouts) {
    for (const c of configs) {
      it(`the C device walks our chains, our driver reaps its answers and kicks as asked, with ${name} and ${c.name}`, () => {
        build();
        const eventIdx = c.evt >= 0;
        const buffer = new ArrayBuffer(IMG);
        const mem = memOver(buffer);
        const drv = new SplitDriverQueue<string>(mem, layout, c.features, c.options);
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
        drv.add(
          [
            { addr: 0x10000, len: 1 },
            { addr: 0x10001, len: 1 },
          ],
          [0, 1, 2].map((i) => ({ addr: 0x13000 + i, len: 1 })),
          "four",
        );
        expect(drv.publish()).toBe(true); // a fresh used ring asks for notifications
        saveImage(buffer);

        const [h1, h2, h3, h4] = c.heads;
        const [i1, i2, i3, i4] = c.ind;
        expect(device(c.evt)).toEqual([
          ...header,
          `head=${h1}${i1} r5 w32 sum=15`,
          `head=${h2}${i2} w7 w9 sum=0`,
          `head=${h3}${i3} r2 r3 sum=15`,
          `head=${h4}${i4} r1 r1 w1 w1 w1 sum=3`,
          // §2.7.7.1: with EVENT_IDX our flags stay 0 and used_event (0) asks for this interrupt.
          eventIdx ? "avail_flags=0 used_event=0 interrupt=1" : "avail_flags=0 interrupt=1",
        ]);
        loadImage(buffer);
        const reaped: [string | undefined, number][] = [];
        for (let i = 0; i < 5; i++) reaped.push([drv.reap(), drv.lastLen]);
        expect(reaped).toEqual([
          ["one", 32],
          ["two", 16],
          ["three", 0],
          ["four", 3],
          [undefined, 3],
        ]);
        expect(mem.readU8(0x11000 + 5)).toBe(h1! + 5); // the C device wrote (head + offset) & 0xff
        expect(mem.readU8(0x12100)).toBe(h2! + 7);

        // Round 2. The C device set avail_event = 4 + 2 (EVENT_IDX: kick when entry 6 is
        // written) or VRING_USED_F_NO_NOTIFY (no kicks at all).
        const kicks: boolean[] = [];
        for (const t of ["five", "six", "seven"]) {
          drv.add([{ addr: 0x10000, len: 1 }], [], t);
          kicks.push(drv.publish());
        }
        expect(kicks).toEqual(eventIdx ? [false, false, true] : [false, false, false]);
        drv.disableInterrupts();
        saveImage(buffer);
        const lines = device(c.evt).slice(header.length);
        expect(lines.slice(0, 3).every((l) => /^head=\d+ r1 sum=1$/.test(l))).toBe(true);
        // Interrupts off: used_event one behind what we reaped (4 - 1), or flags = 1.
        expect(lines.slice(3)).toEqual([
          eventIdx ? "avail_flags=0 used_event=3 interrupt=0" : "avail_flags=1 interrupt=0",
        ]);
        loadImage(buffer);
        expect(drv.enableInterrupts()).toBe(true); // the re-check finds the silent answers
        expect([drv.reap(), drv.reap(), drv.reap(), drv.reap()]).toEqual([
          "five",
          "six",
          "seven",
          undefined,
        ]);
        expect(drv.numFree).toBe(16);
      });
    }
  }
});

describe("our device against a C driver using <linux/virtio_ring.h>", () => {
  it("pops the C driver's chains, including indirect tables, and the C driver checks the used ring and the notifications", () => {
    build();
    const out = runC("driver-build", img);
    const [, avail, used] = /avail=(\d+) used=(\d+)/.exec(out[0]!)!.map(Number);
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
    // Chain 4 is a normal descriptor followed by an indirect one (§2.7.5.3.2).
    expect(seen).toEqual(["0:r13,w64", "5:r4,r4,w16", "7:w10,w20,w30", "4:r4,w8,w8"]);
    expect(new TextDecoder().decode(request)).toBe("hello, device");
    const interrupt = dev.needsInterrupt();
    expect(dev.enableNotifications()).toBe(false);
    saveImage(buffer);
    expect(runC("driver-check", img)).toEqual([
      "used_flags=0 used_idx=4",
      "id=0 len=13",
      "id=5 len=16",
      "id=7 len=60",
      "id=4 len=16",
      "need_event(used_event=1, new=4, old=1)=1",
      "avail_event=4 kick_next=1",
      "reply=HELLO, DEVICE",
    ]);
    // Our device's decision agrees with vring_need_event in C.
    expect(interrupt).toBe(true);
  });
});
