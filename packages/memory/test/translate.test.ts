import {
  createGuestMemory,
  dmaWindows,
  GuestMemoryError,
  TranslatedMemory,
} from "@virtio-ts/memory";
import { describe, expect, it } from "vitest";

function setup() {
  const ram = createGuestMemory({ size: 0x10000 });
  const dev = new TranslatedMemory(
    ram,
    dmaWindows([
      { iova: 0x0, gpa: 0x8000, size: 0x1000, access: "rw" },
      { iova: 0x1000, gpa: 0x2000, size: 0x1000, access: "r" },
      { iova: 0x4000, gpa: 0x3000, size: 0x100, access: "w" },
    ]),
  );
  return { ram, dev };
}

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(GuestMemoryError);
    return (e as GuestMemoryError).code;
  }
  return undefined;
}

describe("TranslatedMemory with DMA windows", () => {
  it("translates IO-virtual addresses to guest-physical ones", () => {
    const { ram, dev } = setup();
    dev.writeU32(0x10, 0xcafe);
    expect(ram.readU32(0x8010)).toBe(0xcafe);
    ram.writeU16(0x2004, 0x1234);
    expect(dev.readU16(0x1004)).toBe(0x1234);
  });

  it("faults on an address outside every window and touches nothing", () => {
    const { ram, dev } = setup();
    expect(codeOf(() => dev.readU8(0x3000))).toBe("translation-fault");
    expect(codeOf(() => dev.write(0x0ff0, new Uint8Array(0x2000)))).toBe("translation-fault");
    expect(ram.readU8(0x8ff0)).toBe(0);
    expect(dev.check(0x2000, 1)).toBe(false);
  });

  it("enforces per-window permissions: no writes to a read-only window, no reads from a write-only one", () => {
    const { dev } = setup();
    expect(codeOf(() => dev.writeU8(0x1000, 1))).toBe("translation-fault");
    expect(dev.check(0x1000, 16, "write")).toBe(false);
    expect(dev.check(0x1000, 16, "read")).toBe(true);
    expect(codeOf(() => dev.readU8(0x4000))).toBe("translation-fault");
    dev.writeU8(0x4000, 7);
  });

  it("copies and scatter-gathers across adjacent windows, but keeps views inside one", () => {
    const { ram, dev } = setup();
    ram.write(0x8ffe, new Uint8Array([1, 2]));
    ram.write(0x2000, new Uint8Array([3, 4]));
    const out = new Uint8Array(4);
    dev.read(0x0ffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
    expect(dev.sg(0x0ffe, 4).map((v) => [...v])).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(codeOf(() => dev.slice(0x0ffe, 4))).toBe("cross-region");
    expect(dev.u32View(0x100, 2).length).toBe(2);
  });

  it("validates the window table with messages naming the window", () => {
    expect(() => dmaWindows([{ iova: -1, gpa: 0, size: 1, access: "r" }])).toThrow(
      /windows\[0\]\.iova/,
    );
    expect(() => dmaWindows([{ iova: 0, gpa: 0, size: 0, access: "r" }])).toThrow(
      /windows\[0\]\.size/,
    );
    expect(() =>
      dmaWindows([
        { iova: 0, gpa: 0, size: 0x100, access: "r" },
        { iova: 0x80, gpa: 0, size: 0x100, access: "r" },
      ]),
    ).toThrow(/overlap/);
  });
});
