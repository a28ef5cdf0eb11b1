// Saving and restoring the chains in flight (suspend / resume without waiting for every
// request): a device queue saves what it popped and did not push, a fresh queue over the same
// memory takes it back, and the model serves those chains again before the ring — so every
// buffer the driver posted comes back exactly once, on both layouts, with and without IN_ORDER.
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  BufferOutOfBoundsError,
  createDeviceQueue,
  DescriptorChain,
  type DeviceQueue,
  type DriverQueue,
  type InFlightChain,
  PackedDeviceQueue,
  PackedDriverQueue,
  PackedOvercommitError,
  ringFeatures,
  ringLayoutAt,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { availBits, F_NEXT, RawPackedRing } from "./helpers/raw-packed-ring.js";

type Layout = "split" | "packed";
const SIZE = 32;
const LAYOUT = ringLayoutAt(0x1000, SIZE);
const DATA = 0x8000;

function features(layout: Layout, inOrder: boolean): bigint {
  let f = featureMask(Feature.RING_INDIRECT_DESC);
  if (layout === "packed") f |= featureMask(Feature.RING_PACKED);
  if (inOrder) f |= featureMask(Feature.IN_ORDER);
  return f;
}

function rig(layout: Layout, inOrder = false) {
  const mem = createGuestMemory({ size: 0x20000 });
  const f = features(layout, inOrder);
  const rf = ringFeatures(f);
  const driver: DriverQueue<number> =
    layout === "split"
      ? new SplitDriverQueue<number>(mem, LAYOUT, rf)
      : new PackedDriverQueue<number>(mem, LAYOUT, rf);
  const device = createDeviceQueue(mem, LAYOUT, f);
  // Token t: two readable segments and one writable one, at addresses that name the token.
  const post = (t: number): boolean =>
    driver.add(
      [
        { addr: DATA + t * 64, len: 8 },
        { addr: DATA + t * 64 + 8, len: 8 },
      ],
      [{ addr: DATA + t * 64 + 16, len: 16 }],
      t,
    );
  return { mem, f, driver, device, post };
}

/** A fresh device queue over the same memory, brought to `from`'s saved state. */
function move(mem: GuestMemory, f: bigint, from: DeviceQueue): DeviceQueue {
  const state = from.getState();
  const inFlight = from.saveInFlight!();
  const to = createDeviceQueue(mem, LAYOUT, f);
  to.setState(state);
  to.restoreInFlight!(inFlight);
  return to;
}

function reapAll(driver: DriverQueue<number>): Map<number, number> {
  const got = new Map<number, number>();
  for (let t = driver.reap(); t !== undefined; t = driver.reap()) {
    expect(got.has(t)).toBe(false);
    got.set(t, driver.lastLen);
  }
  return got;
}

describe.each(["split", "packed"] as const)("%s ring: chains in flight across a move", (layout) => {
  it("serves the saved chains first, with the same segments, then the ring; every token comes back once", () => {
    const { mem, f, driver, device, post } = rig(layout);
    for (let t = 0; t < 6; t++) expect(post(t)).toBe(true);
    driver.publish();
    const chain = new DescriptorChain(SIZE);
    const popped: number[] = [];
    for (let i = 0; i < 4; i++) {
      expect(device.pop(chain)).toBe(true);
      popped.push(chain.head);
    }
    // Completed out of order: on the packed ring the used descriptor lands over the first
    // list's descriptors, which are still in flight.
    device.push(popped[1]!, 5);
    const saved = device.saveInFlight!();
    expect(saved.map((c) => c.id).sort()).toEqual([popped[0], popped[2], popped[3]].sort());
    const moved = move(mem, f, device);
    const seen: number[] = [];
    while (moved.pop(chain)) {
      // Token t's first segment is at DATA + t·64: the chain is the one the driver posted.
      const t = (chain.addrs[0]! - DATA) / 64;
      expect([chain.count, chain.lens[0], chain.lens[2], chain.readableCount]).toEqual([
        3, 8, 16, 2,
      ]);
      seen.push(t);
      moved.push(chain.head, t);
    }
    expect(seen.slice(0, 3).sort()).toEqual([0, 2, 3]);
    expect(seen.slice(3).sort()).toEqual([4, 5]);
    const got = reapAll(driver);
    expect([...got.keys()].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(got.get(1)).toBe(5);
    expect(got.get(4)).toBe(4);
  });

  it("with IN_ORDER, saves the chains in pop order and serves them in that order", () => {
    const { mem, f, driver, device, post } = rig(layout, true);
    for (let t = 0; t < 5; t++) post(t);
    driver.publish();
    const chain = new DescriptorChain(SIZE);
    for (let i = 0; i < 3; i++) device.pop(chain);
    const moved = move(mem, f, device);
    const order: number[] = [];
    while (moved.pop(chain)) {
      order.push((chain.addrs[0]! - DATA) / 64);
      moved.push(chain.head, 0);
    }
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect([...reapAll(driver).keys()]).toEqual([0, 1, 2, 3, 4]);
  });

  it("saves chains handed back and not popped again yet, so a second move keeps them", () => {
    const { mem, f, driver, device, post } = rig(layout);
    for (let t = 0; t < 3; t++) post(t);
    driver.publish();
    const chain = new DescriptorChain(SIZE);
    for (let i = 0; i < 3; i++) device.pop(chain);
    const once = move(mem, f, device);
    expect(once.pop(chain)).toBe(true);
    const twice = move(mem, f, once);
    let n = 0;
    while (twice.pop(chain)) {
      twice.push(chain.head, 0);
      n++;
    }
    expect(n).toBe(3);
    expect(reapAll(driver).size).toBe(3);
  });

  it("enableNotifications reports chains handed back as something to pop", () => {
    const { mem, f, driver, device, post } = rig(layout);
    post(0);
    driver.publish();
    device.pop(new DescriptorChain(SIZE));
    const moved = move(mem, f, device);
    expect(moved.enableNotifications()).toBe(true);
  });

  it("revalidates a chain handed back: a buffer now outside guest memory is a ChainError whose head can be pushed", () => {
    const { mem, f, device } = rig(layout);
    const raw = { id: 0, descriptors: new Uint32Array(0) };
    const chain = new DescriptorChain(SIZE);
    if (layout === "split") {
      // Descriptor 0 of the table points past the end of guest memory.
      mem.writeU32(LAYOUT.desc, 0x40000);
      mem.writeU32(LAYOUT.desc + 8, 16);
      mem.writeU16(LAYOUT.desc + 12, 0);
    } else {
      raw.descriptors = Uint32Array.of(0x40000, 0, 16, availBits(true) << 16);
    }
    const to = createDeviceQueue(mem, LAYOUT, f);
    to.setState(device.getState());
    to.restoreInFlight!([raw]);
    expect(() => to.pop(chain)).toThrow(BufferOutOfBoundsError);
    to.push(0, 0);
  });

  it.each([
    ["an id out of range", [{ id: SIZE, descriptors: new Uint32Array(0) }], /chains\[0\]\.id/],
    [
      "an id listed twice",
      [
        { id: 1, descriptors: Uint32Array.of(0, 0, 4, 1) },
        { id: 1, descriptors: Uint32Array.of(0, 0, 4, 1) },
      ],
      /chains\[1\]\.id/,
    ],
    ["a non-array", "nope", /chains must be an array/],
  ])("restoreInFlight refuses %s with a RangeError naming the entry", (_what, chains, msg) => {
    const { device } = rig(layout);
    expect(() => device.restoreInFlight!(chains as unknown as InFlightChain[])).toThrow(msg);
    expect(() => device.restoreInFlight!(chains as unknown as InFlightChain[])).toThrow(RangeError);
  });
});

describe("packed ring: saved lists", () => {
  it("restoreInFlight refuses a list without its buffer ID in the last descriptor, or with NEXT on the last (VIRTIO 1.3 §2.8.6)", () => {
    const { device } = rig("packed");
    const last = (flags: number, id: number) => (flags << 16) | id;
    expect(() =>
      device.restoreInFlight!([{ id: 2, descriptors: Uint32Array.of(0, 0, 4, last(0, 3)) }]),
    ).toThrow(/descriptors\[0\]/);
    expect(() =>
      device.restoreInFlight!([{ id: 2, descriptors: Uint32Array.of(0, 0, 4, last(F_NEXT, 2)) }]),
    ).toThrow(/descriptors\[0\]/);
    expect(() =>
      device.restoreInFlight!([{ id: 2, descriptors: new Uint32Array(4 * (SIZE + 1)) }]),
    ).toThrow(/descriptors must hold/);
  });

  it("throws PackedOvercommitError when saving a buffer popped while the driver had more than queue size descriptors outstanding (VIRTIO 1.3 §2.8.10.1)", () => {
    const raw = new RawPackedRing(4);
    const q = new PackedDeviceQueue(raw.mem, raw.layout, ringFeatures(0n));
    const chain = new DescriptorChain(4);
    // Lap 1: one list of all 4 descriptors (buffer 0), popped and kept in flight.
    for (let i = 0; i < 4; i++) {
      raw.writeDesc(i, RawPackedRing.DATA, 4, 0, availBits(true) | (i < 3 ? F_NEXT : 0));
    }
    expect(q.pop(chain)).toBe(true);
    // Lap 2: a hostile driver reuses the same slots for buffer 1 while buffer 0 is in flight.
    raw.writeDesc(0, RawPackedRing.DATA, 4, 1, availBits(false));
    expect(q.pop(chain)).toBe(true);
    expect(() => q.saveInFlight()).toThrow(PackedOvercommitError);
    // Pushing the buffers frees their records: a later save works.
    q.push(0, 0);
    q.push(1, 0);
    expect(q.saveInFlight()).toEqual([]);
  });
});

describe("chains in flight, property", () => {
  it("for random traffic and a move at a random moment, every posted token comes back exactly once", () => {
    fc.assert(
      fc.property(
        fc.constantFrom<Layout>("split", "packed"),
        fc.boolean(),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.nat()), {
          minLength: 10,
          maxLength: 80,
        }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
        (layout, inOrder, ops, moveAts) => {
          const moves = new Set(moveAts.map((m) => m % ops.length));
          const { mem, f, driver, post } = rig(layout, inOrder);
          let device: DeviceQueue = createDeviceQueue(mem, LAYOUT, f);
          const chain = new DescriptorChain(SIZE);
          const held: number[] = [];
          let next = 0;
          const reaped = new Map<number, number>();
          const reap = () => {
            for (const [t, n] of reapAll(driver)) {
              expect(reaped.has(t)).toBe(false);
              reaped.set(t, n);
            }
          };
          ops.forEach(([op, arg], i) => {
            if (moves.has(i)) {
              // The model forgets what it held; the new queue hands those chains back.
              device = move(mem, f, device);
              held.length = 0;
            }
            if (op === 0) {
              if (post(next)) next++;
              driver.publish();
            } else if (op === 1) {
              if (device.pop(chain)) held.push(chain.head);
            } else if (op === 2 && held.length > 0) {
              // IN_ORDER: the oldest; otherwise any.
              const at = inOrder ? 0 : arg % held.length;
              device.push(held.splice(at, 1)[0]!, 0);
            } else {
              reap();
            }
          });
          // Drain: everything popped or still in the ring completes.
          for (const h of held.splice(0)) device.push(h, 0);
          while (device.pop(chain)) device.push(chain.head, 0);
          reap();
          expect(reaped.size).toBe(next);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("queue factory", () => {
  it("builds a packed queue when VIRTIO_F_RING_PACKED was negotiated and a split one otherwise, with the ring features of the same bits", () => {
    const mem = createGuestMemory({ size: 0x20000 });
    const packed = createDeviceQueue(mem, LAYOUT, features("packed", true));
    const split = createDeviceQueue(mem, LAYOUT, featureMask(Feature.RING_EVENT_IDX));
    expect(packed).toBeInstanceOf(PackedDeviceQueue);
    expect((packed as PackedDeviceQueue).features).toEqual({
      indirect: true,
      eventIdx: false,
      inOrder: true,
    });
    expect(split).toBeInstanceOf(SplitDeviceQueue);
    expect((split as SplitDeviceQueue).features.eventIdx).toBe(true);
  });
});
