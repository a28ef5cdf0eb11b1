// The adapter against a real v86 (no guest boots: the machine is created, never started), so the
// guest's config-space and port accesses are made with v86's own port dispatcher.
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { RngDevice } from "@virtio-ts/devices";
import { type V86Cpu, V86VirtioBus } from "@virtio-ts/v86";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

interface Io {
  port_write32(port: number, v: number): void;
  port_read32(port: number): number;
  port_read8(port: number): number;
  port_write8(port: number, v: number): void;
}
interface Emu {
  add_listener(e: string, f: () => void): void;
  destroy(): Promise<void>;
  v86: { cpu: V86Cpu & { io: V86Cpu["io"] & Io } };
}

let emulator: Emu;
let io: Io;

beforeAll(async () => {
  const req = createRequire(import.meta.url);
  const main = req.resolve("v86");
  const { V86 } = (await import(main)) as { V86: new (o: object) => Emu };
  emulator = new V86({
    wasm_path: join(dirname(main), "v86.wasm"),
    memory_size: 32 << 20,
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    net_device: { type: "none" },
  });
  await new Promise<void>((resolve) => emulator.add_listener("emulator-loaded", resolve));
  io = emulator.v86.cpu.io;
});

afterAll(async () => {
  await emulator.destroy();
});

const cfg = (slot: number, reg: number) => (0x80000000 | (slot << 11) | reg) >>> 0;

describe("V86VirtioBus", () => {
  it("puts a modern virtio-pci function on v86's bus: the guest reads 0x1af4:0x1044 through CONFIG_DATA", () => {
    const bus = V86VirtioBus.of(emulator);
    const dev = bus.attach(new RngDevice(), { slot: 0x14 });
    expect(dev.slot).toBe(0x14);
    io.port_write32(0xcf8, cfg(0x14, 0));
    expect(io.port_read32(0xcfc) >>> 0).toBe(0x10441af4);
    // Another slot is still v86's: the VGA at 0x12 answers with its own IDs.
    io.port_write32(0xcf8, cfg(0x12, 0));
    expect(io.port_read32(0xcfc) >>> 0).toBe(0x11111234);
  });

  it("follows the guest's BAR 0 placement: its ports reach the common configuration, and move with it", () => {
    const bus = V86VirtioBus.of(emulator);
    const dev = bus.devices[0]!;
    io.port_write32(0xcf8, cfg(0x14, 0x10));
    io.port_write32(0xcfc, 0xffffffff);
    const size = (~(io.port_read32(0xcfc) & ~3) + 1) & 0xffff;
    expect(size).toBe(dev.pci.bars[0]!.size);
    io.port_write32(0xcfc, 0xc000);
    io.port_write32(0xcf8, cfg(0x14, 0x04));
    io.port_write32(0xcfc, 1); // I/O space enable
    expect(dev.barMapping(0)).toEqual({ space: "io", address: 0xc000, size });
    // device_feature_select = 1, device_feature reads VERSION_1 (bit 32 → bit 0 of word 1).
    io.port_write32(0xc000, 1);
    expect(io.port_read32(0xc004) & 1).toBe(1);
    expect(dev.trapCounts().device_feature).toBe(1);
    io.port_write32(0xcf8, cfg(0x14, 0x10));
    io.port_write32(0xcfc, 0xc100);
    expect(dev.barMapping(0)?.address).toBe(0xc100);
    expect(io.port_read32(0xc000)).toBe(-1); // the old ports are empty again
    expect(io.port_read8(0xc100 + 0x14)).toBe(0); // device_status
  });

  it("refuses a slot v86 already uses, naming options.slot", () => {
    expect(() => V86VirtioBus.of(emulator).attach(new RngDevice(), { slot: 0x12 })).toThrow(
      /options\.slot 18 is taken/,
    );
  });

  it("follows a growing wasm memory: guest RAM stays reachable and the replacement is counted", () => {
    const bus = V86VirtioBus.of(emulator);
    bus.memory.writeU32(0x1000, 0x12345678);
    const mem = emulator.v86.cpu.wasm_memory as unknown as { grow(pages: number): number };
    mem.grow(1);
    expect(bus.memory.readU32(0x1000)).toBe(0x12345678);
    expect(bus.stats.memoryReplacements).toBe(1);
  });
});
