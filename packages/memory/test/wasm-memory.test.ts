import { GuestMemoryError, WasmGuestMemory } from "@virtio-ts/memory";
import { describe, expect, it } from "vitest";

// The tests' lib has no DOM types; Node has WebAssembly at run time.
declare const WebAssembly: {
  Memory: new (d: {
    initial: number;
    maximum?: number;
  }) => { buffer: ArrayBuffer; grow(pages: number): number };
};

const PAGE = 0x10000;

describe("WasmGuestMemory", () => {
  it("reads and writes guest RAM at its offset inside the wasm memory", () => {
    const wasm = new WebAssembly.Memory({ initial: 2, maximum: 8 });
    const mem = new WasmGuestMemory({ memory: wasm, byteOffset: 0x1000, size: 0x8000 });
    mem.writeU32(0x10, 0xdeadbeef);
    expect(new DataView(wasm.buffer).getUint32(0x1010, true)).toBe(0xdeadbeef);
    expect(mem.check(0x8000 - 4, 4)).toBe(true);
    expect(mem.check(0x8000 - 3, 4)).toBe(false);
    expect(() => mem.readU8(0x8000)).toThrow(GuestMemoryError);
  });

  it("keeps guest RAM as its stableRange across a grow", () => {
    const wasm = new WebAssembly.Memory({ initial: 1, maximum: 8 });
    const mem = new WasmGuestMemory({
      memory: wasm,
      byteOffset: 0x100,
      size: 0x1000,
      guestBase: 0x8000,
    });
    expect(mem.stableRange).toEqual({ start: 0x8000, end: 0x9000 });
    wasm.grow(1);
    expect(mem.check(0x8000, 0x1000, "write")).toBe(true);
    expect(mem.stableRange).toEqual({ start: 0x8000, end: 0x9000 });
  });

  it("follows the buffer a grow puts in place, calling onReplaced once, so data written before stays readable", () => {
    const wasm = new WebAssembly.Memory({ initial: 1, maximum: 8 });
    let replaced = 0;
    const mem = new WasmGuestMemory({
      memory: wasm,
      byteOffset: 0x100,
      size: 0x1000,
      onReplaced: () => replaced++,
    });
    mem.writeU16(0x20, 0x1234);
    const before = mem.u16View(0x20, 1);
    wasm.grow(1);
    // The view made before the grow died with the old buffer.
    expect(before.length).toBe(0);
    expect(mem.readU16(0x20)).toBe(0x1234);
    expect(replaced).toBe(1);
    expect(mem.replacements).toBe(1);
    mem.writeU8(0x21, 0x56);
    expect(mem.u16View(0x20, 1)[0]).toBe(0x5634);
    expect(mem.refresh()).toBe(false);
    wasm.grow(1);
    expect(mem.refresh()).toBe(true);
    expect(replaced).toBe(2);
  });

  it("addressOf finds views of guest RAM in the current buffer, after a grow too", () => {
    const wasm = new WebAssembly.Memory({ initial: 1, maximum: 4 });
    const mem = new WasmGuestMemory({
      memory: wasm,
      byteOffset: 0x100,
      size: 0x1000,
      guestBase: 0x8000,
    });
    expect(mem.addressOf(new Uint8Array(wasm.buffer, 0x180, 8))).toBe(0x8080);
    expect(mem.addressOf(new Uint8Array(wasm.buffer, 0x80, 8))).toBeUndefined();
    wasm.grow(1);
    expect(mem.addressOf(new Uint8Array(wasm.buffer, 0x180, 8))).toBe(0x8080);
  });

  it("refuses RAM that does not fit in the wasm memory, naming the option", () => {
    const wasm = new WebAssembly.Memory({ initial: 1 });
    expect(() => new WasmGuestMemory({ memory: wasm, byteOffset: 0, size: PAGE + 1 })).toThrow(
      /options\.size/,
    );
    expect(() => new WasmGuestMemory({ memory: wasm, byteOffset: -8, size: 16 })).toThrow(
      /options\.byteOffset/,
    );
  });
});
