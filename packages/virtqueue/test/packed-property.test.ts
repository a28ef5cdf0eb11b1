// Model-based property test of the packed ring: a driver and a device share one ring and wake
// each other only through kicks and interrupts. Against a reference model (the tokens in
// flight), every token must come back exactly once with the length the device reported, the
// device must see exactly the segments (and descriptor count) the driver added, completions
// happen in random order (with VIRTIO_F_IN_ORDER: in order, one by one or in batches), and — because sleeping sides are woken only by the notification
// decisions — no wakeup may be lost, or the final drain leaves tokens behind.
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  indirectAreaSize,
  PackedDeviceQueue,
  PackedDriverQueue,
  ringFeatures,
  type Segment,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";

interface Sent {
  readable: Segment[];
  writable: Segment[];
  descCount: number;
}

const segArb = fc.record({
  addr: fc.integer({ min: 0x10000, max: 0x1ff00 }),
  len: fc.integer({ min: 0, max: 255 }),
});
type Op =
  | { kind: "add"; r: Segment[]; w: Segment[]; publish: boolean }
  | { kind: "publish" }
  | { kind: "device"; max: number }
  | { kind: "complete"; pick: number; frac: number; count: number; defer: number }
  | { kind: "driver" };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("add" as const),
    r: fc.array(segArb, { maxLength: 4 }),
    w: fc.array(segArb, { maxLength: 4 }),
    publish: fc.boolean(),
  }),
  fc.record({ kind: fc.constant("publish" as const) }),
  fc.record({ kind: fc.constant("device" as const), max: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    kind: fc.constant("complete" as const),
    pick: fc.nat(),
    frac: fc.double({ min: 0, max: 1, noNaN: true }),
    count: fc.integer({ min: 1, max: 3 }),
    // 0: push each; 1: use each, needsInterrupt publishes; 2: use each, then publishUsed.
    defer: fc.integer({ min: 0, max: 2 }),
  }),
  fc.record({ kind: fc.constant("driver" as const) }),
);

const MAX_ENTRIES = 4;

/**
 * One random workload. `shared` picks the memory: a SharedArrayBuffer (the rings order their
 * index and flag words with Atomics) or an ArrayBuffer (plain accesses, one thread only).
 */
function run(size: number, featureBits: bigint, useIndirect: boolean, ops: Op[], shared: boolean) {
  const features = ringFeatures(featureBits);
  const mem = createGuestMemory({ size: 0x20000, shared });
  const layout = { size, desc: 0x1000, driver: 0x1000 + 16 * size, device: 0x1004 + 16 * size };
  expect(indirectAreaSize(size, MAX_ENTRIES)).toBeLessThanOrEqual(0x8000);
  const drv = new PackedDriverQueue<number>(
    mem,
    layout,
    features,
    useIndirect ? { indirect: { addr: 0x8000, maxEntries: Math.min(MAX_ENTRIES, size) } } : {},
  );
  const dev = new PackedDeviceQueue(mem, layout, features);
  const free: DescriptorChain[] = Array.from({ length: size }, () => new DescriptorChain(size));
  const pending: { chain: DescriptorChain; token: number }[] = [];
  const inFlight = new Map<number, Sent>();
  // Which token starts at a ring position (and lap): the device finds its chain there.
  const atPosition = new Map<string, number>();
  const returned = new Map<number, number>();
  const expectedLen = new Map<number, number>();
  let nextToken = 1;
  // Each side is "awake" (working with notifications disabled), "settling" (found no work,
  // notifications still disabled: the other side may publish now without notifying) or asleep.
  let device: "awake" | "settling" | "asleep" = "awake";
  let driver: "irq" | "settling" | "idle" = "idle";

  // Read through a closure: the steps below change both states behind TypeScript's narrowing.
  const bothAsleep = () => device === "asleep" && driver === "idle";
  const key = (s: { availIdx: number; availWrap: boolean }) => `${s.availIdx}/${s.availWrap}`;
  const publish = () => {
    if (drv.publish()) device = "awake";
  };
  const deviceStep = (max: number) => {
    if (device === "asleep") return;
    if (device === "settling") {
      // Re-enable notifications; the re-check closes the race with a publish made meanwhile.
      device = dev.enableNotifications() ? "awake" : "asleep";
      return;
    }
    dev.disableNotifications();
    for (let i = 0; i < max && free.length > 0; i++) {
      const chain = free.pop()!;
      const at = key(dev.getState());
      if (!dev.pop(chain)) {
        free.push(chain);
        device = "settling";
        return;
      }
      const token = atPosition.get(at)!;
      atPosition.delete(at);
      const sent = inFlight.get(token)!;
      expect(sent).toBeDefined();
      expect(chain.descCount).toBe(sent.descCount);
      expect(chain.readableCount).toBe(sent.readable.length);
      expect(chain.count).toBe(sent.readable.length + sent.writable.length);
      [...sent.readable, ...sent.writable].forEach((s, k) => {
        expect(chain.addr(k)).toBe(s.addr);
        expect(chain.len(k)).toBe(s.len);
      });
      pending.push({ chain, token });
    }
  };
  const complete = (pick: number, frac: number, count: number, defer: number) => {
    if (pending.length === 0) return;
    const give = (head: number, len: number) =>
      defer === 0 ? dev.push(head, len) : dev.use(head, len);
    const decide = () => {
      if (defer === 2) dev.publishUsed();
      if (dev.needsInterrupt()) driver = "irq";
    };
    if (features.inOrder) {
      // §2.8.8: oldest first, `pick` buffers at once; odd picks use one used descriptor for the
      // batch, and the driver must take every buffer but the last as completely written.
      const n = 1 + (pick % Math.min(3, pending.length));
      const batch = pending.splice(0, n);
      const lastLen = Math.floor(batch[n - 1]!.chain.writableBytes * frac);
      batch.forEach(({ chain, token }, k) => {
        expectedLen.set(token, k === n - 1 ? lastLen : chain.writableBytes);
        if (pick % 2 === 0) give(chain.head, expectedLen.get(token)!);
        free.push(chain);
      });
      if (pick % 2 === 1) dev.pushBatch(n, lastLen);
      decide();
      return;
    }
    for (let c = 0; c < count && pending.length > 0; c++) {
      const { chain, token } = pending.splice((pick + c) % pending.length, 1)[0]!;
      const len = Math.floor(chain.writableBytes * frac);
      expectedLen.set(token, len);
      give(chain.head, len);
      free.push(chain);
    }
    decide();
  };
  const driverStep = () => {
    if (driver === "idle") return;
    if (driver === "settling") {
      driver = drv.enableInterrupts() ? "irq" : "idle";
      return;
    }
    drv.disableInterrupts();
    for (let t = drv.reap(); t !== undefined; t = drv.reap()) {
      expect(returned.has(t)).toBe(false);
      returned.set(t, drv.lastLen);
      inFlight.delete(t);
    }
    driver = "settling";
  };

  for (const op of ops) {
    switch (op.kind) {
      case "add": {
        const n = op.r.length + op.w.length;
        if (n === 0 || n > size) break;
        const token = nextToken++;
        const before = drv.numFree;
        const at = key(drv.getState());
        if (!drv.add(op.r, op.w, token)) {
          expect(drv.numFree).toBe(before);
          break;
        }
        const descCount = useIndirect && n > 1 && n <= Math.min(MAX_ENTRIES, size) ? 1 : n;
        expect(before - drv.numFree).toBe(descCount);
        inFlight.set(token, { readable: op.r, writable: op.w, descCount });
        atPosition.set(at, token);
        if (op.publish) publish();
        break;
      }
      case "publish":
        publish();
        break;
      case "device":
        deviceStep(op.max);
        break;
      case "complete":
        complete(op.pick, op.frac, op.count, op.defer);
        break;
      case "driver":
        driverStep();
        break;
    }
  }
  // Drain, moved only by notifications: publish the rest, then let each side run while it is
  // awake. A lost kick or interrupt leaves tokens in flight.
  publish();
  for (let guard = 0; guard < 10 * size + 100 && (!bothAsleep() || pending.length > 0); guard++) {
    deviceStep(size);
    while (pending.length > 0) complete(0, 1, 1, 0);
    driverStep();
  }
  expect([...inFlight.keys()]).toEqual([]);
  expect(drv.numFree).toBe(size);
  for (const [t, len] of returned) expect(len).toBe(expectedLen.get(t));
}

const configs = [
  { name: "plain", bits: 0n, indirect: false },
  { name: "EVENT_IDX", bits: featureMask(Feature.RING_EVENT_IDX), indirect: false },
  { name: "INDIRECT_DESC", bits: featureMask(Feature.RING_INDIRECT_DESC), indirect: true },
  {
    name: "INDIRECT_DESC + EVENT_IDX",
    bits: featureMask(Feature.RING_INDIRECT_DESC) | featureMask(Feature.RING_EVENT_IDX),
    indirect: true,
  },
  { name: "IN_ORDER", bits: featureMask(Feature.IN_ORDER), indirect: false },
  {
    name: "IN_ORDER + INDIRECT_DESC + EVENT_IDX",
    bits:
      featureMask(Feature.IN_ORDER) |
      featureMask(Feature.RING_INDIRECT_DESC) |
      featureMask(Feature.RING_EVENT_IDX),
    indirect: true,
  },
];

describe("packed ring driver ↔ device over random workloads", () => {
  for (const c of configs) {
    it(`with ${c.name}, in shared or plain memory, every token returns exactly once with its length and no wakeup is lost`, () => {
      fc.assert(
        fc.property(
          fc.constantFrom(1, 2, 3, 4, 5, 8, 13),
          fc.array(opArb, { maxLength: 300 }),
          fc.boolean(),
          (size, ops, shared) => {
            run(size, c.bits, c.indirect && size >= 2, ops, shared);
          },
        ),
        { numRuns: 150 },
      );
    });
  }
});
