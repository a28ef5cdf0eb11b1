// Rings in memory whose backing buffer is replaced (a WebAssembly.Memory that grows, as in JS
// emulators): remap() makes a queue follow the new buffer without losing its place.
import { WasmGuestMemory } from "@virtio-ts/memory";
import {
  DescriptorChain,
  NO_RING_FEATURES,
  PackedDeviceQueue,
  SplitDeviceQueue,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

// The tests' lib has no DOM types; Node has WebAssembly at run time.
declare const WebAssembly: {
  Memory: new (d: {
    initial: number;
    maximum?: number;
  }) => { buffer: ArrayBuffer; grow(pages: number): number };
};

import { RawPackedRing } from "./helpers/raw-packed-ring.js";
import { RawSplitRing } from "./helpers/raw-split-ring.js";

function wasmRam() {
  const wasm = new WebAssembly.Memory({ initial: 2, maximum: 16 });
  return { wasm, mem: new WasmGuestMemory({ memory: wasm, byteOffset: 0, size: 0x10000 }) };
}

describe("SplitDeviceQueue.remap", () => {
  it("keeps serving after the memory's buffer is replaced, with the chain in flight still pushable", () => {
    const { wasm, mem } = wasmRam();
    const raw = new RawSplitRing(8, 0x10000, mem);
    const q = new SplitDeviceQueue(mem, raw.layout, NO_RING_FEATURES);
    const chain = new DescriptorChain(8);
    raw.writeDesc(0, { addr: RawSplitRing.DATA, len: 4 });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    wasm.grow(1);
    q.remap();
    q.push(0, 0);
    expect(mem.readU16(raw.layout.device + 2)).toBe(1);
    raw.writeDesc(1, { addr: RawSplitRing.DATA, len: 4 });
    raw.offer(1);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(1);
    q.push(1, 0);
    expect(mem.readU16(raw.layout.device + 2)).toBe(2);
  });
});

describe("PackedDeviceQueue.remap", () => {
  it("keeps its position and the buffer in flight across a buffer replacement", () => {
    const { wasm, mem } = wasmRam();
    const raw = new RawPackedRing(4, 0x10000, mem);
    const q = new PackedDeviceQueue(mem, raw.layout, NO_RING_FEATURES);
    const chain = new DescriptorChain(4);
    raw.offer([{ addr: 0x4000, len: 8 }], 3);
    expect(q.pop(chain)).toBe(true);
    wasm.grow(2);
    q.remap();
    q.push(3, 0);
    expect(raw.id(0)).toBe(3);
    raw.offer([{ addr: 0x4000, len: 8 }], 2);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(2);
  });
});
