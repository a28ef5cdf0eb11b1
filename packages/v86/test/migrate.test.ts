// saveV86 / restoreV86 against real v86 machines (no guest boots: the tests play firmware and
// driver through v86's own port dispatcher, on a hand-written split ring in v86's RAM). A
// machine with an RNG function is configured, served, left with an interrupt the driver has
// not taken and a request it has not announced, then moved into a second, fresh emulator:
// RAM, the PIC and our function arrive together and the function goes on serving there.
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { ConsoleDevice, RngDevice } from "@virtio-ts/devices";
import {
  DeviceStateChecksumError,
  DeviceStateFormatError,
  DeviceStateMismatchError,
} from "@virtio-ts/transport";
import {
  decodeV86Snapshot,
  encodeV86Snapshot,
  restoreV86,
  saveV86,
  type V86Cpu,
  type V86Emulator,
  type V86Snapshot,
  V86VirtioBus,
} from "@virtio-ts/v86";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

interface Io {
  port_write32(port: number, v: number): void;
  port_write16(port: number, v: number): void;
  port_write8(port: number, v: number): void;
  port_read32(port: number): number;
  port_read8(port: number): number;
}
type Emu = V86Emulator & {
  add_listener(e: string, f: () => void): void;
  destroy(): Promise<void>;
  v86: { cpu: V86Cpu & { io: V86Cpu["io"] & Io } };
};

const SLOT = 0x14;
const IOBASE = 0xc000;
const IRQ = 11;
const DESC = 0x10000;
const AVAIL = 0x10100;
const USED = 0x10200;
const BUF = 0x20000;
/** virtio_pci_common_cfg offsets (VIRTIO 1.3 §4.1.4.3; @virtio-ts/spec's PciCommonCfg). */
const C = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  DEVICE_STATUS: 0x14,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_ENABLE: 0x1c,
  QUEUE_DESC_LO: 0x20,
  QUEUE_DRIVER_LO: 0x28,
  QUEUE_DEVICE_LO: 0x30,
} as const;
/** PCI configuration space offsets. */
const PciConfig = { COMMAND: 0x04, BASE_ADDRESS_0: 0x10, INTERRUPT_LINE: 0x3c } as const;
/** Device status bits (§2.1). */
const DeviceStatus = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8 } as const;
const machines: Emu[] = [];

async function machine(): Promise<Emu> {
  const req = createRequire(import.meta.url);
  const main = req.resolve("v86");
  const { V86 } = (await import(main)) as { V86: new (o: object) => Emu };
  const e = new V86({
    wasm_path: join(dirname(main), "v86.wasm"),
    memory_size: 32 << 20,
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    net_device: { type: "none" },
  });
  machines.push(e);
  await new Promise<void>((resolve) => e.add_listener("emulator-loaded", resolve));
  return e;
}

afterAll(async () => {
  for (const e of machines) await e.destroy();
});

const cfgAddr = (slot: number, reg: number) => (0x80000000 | (slot << 11) | reg) >>> 0;

/** Firmware and driver, as the guest would do them, through v86's ports. */
function bringUp(e: Emu): void {
  const io = e.v86.cpu.io;
  // SeaBIOS's work: PIRQA–D to IRQ 11 (PIIX3 0x60–0x63), BAR 0 at 0xc000, I/O and bus master.
  // Also the IDE function's BARs 0–1, which SeaBIOS clears when there is no primary channel:
  // v86 0.5.462's restore_state trips over them otherwise (a machine saved before its BIOS ran).
  for (const reg of [0x10, 0x14]) {
    io.port_write32(0xcf8, cfgAddr(0x1e, reg));
    io.port_write32(0xcfc, 0);
  }
  io.port_write32(0xcf8, cfgAddr(1, 0x60));
  io.port_write32(0xcfc, 0x0b0b0b0b);
  io.port_write32(0xcf8, cfgAddr(SLOT, PciConfig.BASE_ADDRESS_0));
  io.port_write32(0xcfc, IOBASE);
  io.port_write32(0xcf8, cfgAddr(SLOT, PciConfig.INTERRUPT_LINE));
  io.port_write8(0xcfc, IRQ);
  io.port_write32(0xcf8, cfgAddr(SLOT, PciConfig.COMMAND));
  io.port_write32(0xcfc, 0x5);
  // virtio_pci: negotiate VERSION_1, one queue of 8, DRIVER_OK.
  const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;
  io.port_write8(IOBASE + C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
  io.port_write32(IOBASE + C.DRIVER_FEATURE_SELECT, 1);
  io.port_write32(IOBASE + C.DRIVER_FEATURE, 1);
  io.port_write8(IOBASE + C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
  io.port_write16(IOBASE + C.QUEUE_SELECT, 0);
  io.port_write16(IOBASE + C.QUEUE_SIZE, 8);
  io.port_write32(IOBASE + C.QUEUE_DESC_LO, DESC);
  io.port_write32(IOBASE + C.QUEUE_DRIVER_LO, AVAIL);
  io.port_write32(IOBASE + C.QUEUE_DEVICE_LO, USED);
  io.port_write16(IOBASE + C.QUEUE_ENABLE, 1);
  io.port_write8(IOBASE + C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/** Post request `i` (64 writable bytes at BUF + 256·i) on the raw split ring; kick if asked. */
function post(e: Emu, i: number, kick: boolean): void {
  const mem = V86VirtioBus.of(e).memory;
  mem.writeU32(DESC + 16 * i, BUF + 256 * i);
  mem.writeU32(DESC + 16 * i + 4, 0);
  mem.writeU32(DESC + 16 * i + 8, 64);
  mem.writeU16(DESC + 16 * i + 12, 2); // VIRTQ_DESC_F_WRITE
  mem.writeU16(AVAIL + 4 + 2 * i, i);
  mem.writeU16(AVAIL + 2, i + 1);
  if (kick) {
    const dev = V86VirtioBus.of(e).devices[0]!;
    e.v86.cpu.io.port_write16(IOBASE + dev.pci.layout.notify, 0);
  }
}

describe("saveV86 / restoreV86: a v86 machine moved with its virtio-pci function", () => {
  let a: Emu;
  let b: Emu;
  let snapshot: V86Snapshot;
  const raised: number[] = [];

  beforeAll(async () => {
    a = await machine();
    V86VirtioBus.of(a).attach(new RngDevice(), { slot: SLOT });
    bringUp(a);
    post(a, 0, true); // served: used.idx 1, the ISR set, IRQ 11 up; the driver reads nothing
    post(a, 1, false); // announced to nobody: the destination finds it at its resume kick
    a.v86.cpu.io.port_write32(IOBASE + C.DEVICE_FEATURE_SELECT, 1);
    snapshot = decodeV86Snapshot(encodeV86Snapshot(await saveV86(a)));
    b = await machine();
    V86VirtioBus.of(b).attach(new RngDevice(), { slot: SLOT });
    const cpu = b.v86.cpu;
    const raise = cpu.device_raise_irq;
    cpu.device_raise_irq = function (this: V86Cpu, irq: number) {
      raised.push(irq);
      raise.call(this, irq);
    };
    await restoreV86(b, snapshot, { run: false });
  }, 60_000);

  it("abandons the source function (reset: late completions are dropped)", () => {
    const src = V86VirtioBus.of(a).devices[0]!;
    expect(src.pci.core.status).toBe(0);
    expect(snapshot.devices).toEqual([{ slot: SLOT, deviceId: 4, state: expect.any(Uint8Array) }]);
  });

  it("moves guest RAM inside v86's state: the random bytes served at the source are there", () => {
    const ma = V86VirtioBus.of(a).memory;
    const mb = V86VirtioBus.of(b).memory;
    const served = ma.slice(BUF, 64);
    expect(served.some((x) => x !== 0)).toBe(true);
    expect(mb.slice(BUF, 64)).toEqual(served);
  });

  it("maps the function's I/O ports where the guest put them and keeps its selectors", () => {
    const dev = V86VirtioBus.of(b).devices[0]!;
    expect(dev.barMapping(0)).toMatchObject({ space: "io", address: IOBASE });
    expect(b.v86.cpu.io.port_read32(IOBASE + C.DEVICE_FEATURE_SELECT)).toBe(1);
    expect(b.v86.cpu.io.port_read32(IOBASE + C.DEVICE_FEATURE) & 1).toBe(1); // VERSION_1
    expect(b.v86.cpu.io.port_read8(IOBASE + C.DEVICE_STATUS)).toBe(0xf);
    // v86's copy of the configuration space (what it lists and saves) equals ours.
    const space = b.v86.cpu.devices.pci!.device_spaces[SLOT << 3]!;
    expect(new Uint8Array(space.buffer, space.byteOffset, 256)).toEqual(dev.pci.configSpace);
  });

  it("§4.1.4.5.1: raises the INTx the driver had not taken on the restored PIC, and the ISR read lowers it", () => {
    const dev = V86VirtioBus.of(b).devices[0]!;
    expect(dev.irq).toBe(IRQ);
    expect(raised).toEqual([IRQ]);
    expect(dev.pci.intxAsserted).toBe(true);
    expect(b.v86.cpu.io.port_read8(IOBASE + dev.pci.layout.isr)).toBe(1);
    expect(dev.pci.intxAsserted).toBe(false);
  });

  it("serves at its resume kick the request the guest posted without a kick before the move", () => {
    const mb = V86VirtioBus.of(b).memory;
    expect(mb.readU16(USED + 2)).toBe(2);
    expect(mb.readU32(USED + 4 + 8)).toBe(1); // used.ring[1].id
    expect(mb.readU32(USED + 4 + 8 + 4)).toBe(64);
    expect(mb.slice(BUF + 256, 64).some((x) => x !== 0)).toBe(true);
    // And new requests after it.
    post(b, 2, true);
    expect(mb.readU16(USED + 2)).toBe(3);
  });
});

describe("restoreV86 refuses what does not fit, before v86 is touched", () => {
  let snapshot: V86Snapshot;
  beforeAll(async () => {
    const a = await machine();
    V86VirtioBus.of(a).attach(new RngDevice(), { slot: SLOT });
    bringUp(a);
    snapshot = await saveV86(a);
  }, 60_000);

  it("another device type at the slot: DeviceStateMismatchError naming devices[0].deviceId", async () => {
    const c = await machine();
    V86VirtioBus.of(c).attach(new ConsoleDevice({ write: () => true }), { slot: SLOT });
    await expect(restoreV86(c, snapshot, { run: false })).rejects.toMatchObject({
      code: "device-state-mismatch",
      field: "devices[0].deviceId",
    });
    await expect(restoreV86(c, { ...snapshot, devices: [] }, { run: false })).rejects.toThrow(
      DeviceStateMismatchError,
    );
  }, 60_000);

  it("another slot: naming devices[0].slot; a configured function: RangeError", async () => {
    const c = await machine();
    V86VirtioBus.of(c).attach(new RngDevice(), { slot: SLOT + 1 });
    await expect(restoreV86(c, snapshot, { run: false })).rejects.toMatchObject({
      field: "devices[0].slot",
    });
    const d = await machine();
    V86VirtioBus.of(d).attach(new RngDevice(), { slot: SLOT });
    bringUp(d);
    await expect(restoreV86(d, snapshot, { run: false })).rejects.toThrow(RangeError);
  }, 60_000);

  it("hostile blobs: a damaged byte anywhere (RAM included) is a checksum error; a truncated or foreign blob a format error", () => {
    const bytes = encodeV86Snapshot(snapshot);
    const v = new DataView(bytes.buffer);
    expect(v.getUint32(0, true)).toBe(0x36385456);
    // In the device state, in the middle of RAM, in the last byte before the checksum.
    for (const at of [40, bytes.length >> 1, bytes.length - 5]) {
      const d = bytes.slice();
      d[at]! ^= 0x40;
      expect(() => decodeV86Snapshot(d)).toThrow(DeviceStateChecksumError);
    }
    for (const d of [
      bytes.subarray(0, 19),
      bytes.subarray(0, bytes.length - 1),
      (() => {
        const x = bytes.slice();
        x[0] = 0;
        return x;
      })(),
      (() => {
        const x = bytes.slice();
        x[4] = 2;
        return x;
      })(),
    ]) {
      expect(() => decodeV86Snapshot(d)).toThrow(DeviceStateFormatError);
    }
  });
});
