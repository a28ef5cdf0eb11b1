// The rings order their per-buffer index and flag words with Atomics only in shared memory:
// memory in a plain ArrayBuffer is seen by one thread, where program order is all the ordering
// there is (and each Atomics call is a builtin call in V8 11.3). These tests count the Atomics
// calls of the per-buffer paths in both kinds of memory.

import { runInNewContext } from "node:vm";
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  PackedDeviceQueue,
  PackedDriverQueue,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { afterEach, describe, expect, it, vi } from "vitest";
import { inSharedMemory } from "../src/shared-view.js";

const SIZE = 16;
const FEATURES = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const split = { size: SIZE, desc: 0x1000, driver: 0x1000 + 16 * SIZE, device: 0x2000 };
const packed = { size: SIZE, desc: 0x1000, driver: 0x1000 + 16 * SIZE, device: 0x1004 + 16 * SIZE };

/**
 * Pop and push `n` buffers already published (the first outside the count), then reap them,
 * counting the Atomics loads and stores.
 */
function perBufferAtomics(kind: "split" | "packed", shared: boolean, n: number, deferred = false) {
  const mem = createGuestMemory({ size: 0x10000, shared });
  const drv =
    kind === "split"
      ? new SplitDriverQueue<number>(mem, split, FEATURES)
      : new PackedDriverQueue<number>(mem, packed, FEATURES);
  const dev =
    kind === "split"
      ? new SplitDeviceQueue(mem, split, FEATURES)
      : new PackedDeviceQueue(mem, packed, FEATURES);
  for (let i = 0; i < n; i++) drv.add([{ addr: 0x8000 + 64 * i, len: 16 }], [], i);
  drv.publish();
  const chain = new DescriptorChain(SIZE);
  // The first pop loads the published index (split) once per batch: outside the count.
  expect(dev.pop(chain)).toBe(true);
  dev.push(chain.head, 0);
  const load = vi.spyOn(Atomics, "load");
  const store = vi.spyOn(Atomics, "store");
  const popped: number[] = [];
  for (let i = 1; i < n; i++) {
    expect(dev.pop(chain)).toBe(true);
    popped.push(chain.head);
    if (deferred) dev.use(chain.head, 0);
    else dev.push(chain.head, 0);
  }
  if (deferred) dev.publishUsed();
  const reaped: number[] = [];
  for (let t = drv.reap(); t !== undefined; t = drv.reap()) reaped.push(t);
  const counts = { loads: load.mock.calls.length, stores: store.mock.calls.length };
  vi.restoreAllMocks();
  return { ...counts, reaped, popped: popped.length };
}

afterEach(() => vi.restoreAllMocks());

describe("Atomics only where another thread can see the ring", () => {
  for (const kind of ["split", "packed"] as const) {
    it(`${kind}: in a plain ArrayBuffer the Atomics calls do not grow with the buffers popped, pushed and reaped; in shared memory each buffer adds some`, () => {
      const plain7 = perBufferAtomics(kind, false, 8);
      const plain15 = perBufferAtomics(kind, false, 16);
      const shared7 = perBufferAtomics(kind, true, 8);
      const shared15 = perBufferAtomics(kind, true, 16);
      expect(plain15.reaped).toEqual(Array.from({ length: 16 }, (_, i) => i));
      expect(shared15.reaped).toEqual(plain15.reaped);
      expect([plain7.popped, plain15.popped]).toEqual([7, 15]);
      // What is left in plain memory is per batch (reading used.idx, setting the event index).
      expect(plain15.loads + plain15.stores).toBe(plain7.loads + plain7.stores);
      expect(plain15.loads + plain15.stores).toBeLessThanOrEqual(4);
      // Shared memory: a release store per used buffer (and for packed an acquire per
      // descriptor on each side): 8 more buffers, at least 8 more calls.
      const grown = shared15.loads + shared15.stores - (shared7.loads + shared7.stores);
      expect(grown).toBeGreaterThanOrEqual(8);
    });
  }
});

describe("use, then one publishUsed per batch", () => {
  for (const kind of ["split", "packed"] as const) {
    it(`${kind}: in shared memory the Atomics stores do not grow with the buffers used, and the driver reaps them all`, () => {
      const pushed = perBufferAtomics(kind, true, 16);
      const used7 = perBufferAtomics(kind, true, 8, true);
      const used15 = perBufferAtomics(kind, true, 16, true);
      expect(used15.reaped).toEqual(Array.from({ length: 16 }, (_, i) => i));
      expect(used15.stores).toBe(used7.stores);
      // push stores once per buffer: at least 15 stores in that run, at most 3 here.
      expect(pushed.stores).toBeGreaterThanOrEqual(15);
      expect(used15.stores).toBeLessThanOrEqual(3);
    });
  }
});

describe("inSharedMemory", () => {
  it("is false only for an ArrayBuffer of this realm: a SharedArrayBuffer from another realm still gets Atomics", () => {
    expect(inSharedMemory(new Uint8Array(8))).toBe(false);
    expect(inSharedMemory(new Uint16Array(new SharedArrayBuffer(8)))).toBe(true);
    const foreignShared = runInNewContext("new Int32Array(new SharedArrayBuffer(8))") as Int32Array;
    expect(foreignShared.buffer instanceof SharedArrayBuffer).toBe(false);
    expect(inSharedMemory(foreignShared)).toBe(true);
    // A foreign ArrayBuffer is not recognised either: it pays for Atomics, which is safe.
    expect(inSharedMemory(runInNewContext("new Uint8Array(8)") as Uint8Array)).toBe(true);
  });
});
