import { MemoryDisk } from "@virtio-ts/backend-disk";
import { InterruptLatch } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import {
  AtaCommandError,
  AtaError,
  AtaPioDevice,
  AtaPioDriver,
  AtaReg,
  AtaStatus,
} from "../src/ata.js";

function rig(sectors = 64) {
  const disk = MemoryDisk.ofSize(sectors * 512);
  for (let i = 0; i < disk.bytes.length; i++) disk.bytes[i] = (i * 7 + (i >> 9)) & 0xff;
  const irq = new InterruptLatch();
  const dev = new AtaPioDevice(disk, { interrupt: irq.raise });
  const driver = new AtaPioDriver({
    read: (o, s) => dev.read(o, s),
    write: (o, s, v) => dev.write(o, s, v),
  });
  irq.handler = () => driver.onInterrupt();
  return { disk, dev, driver, irq };
}

describe("the emulated ATA-PIO controller (mode 1)", () => {
  it("costs exactly 1038 exits and 8 interrupts for a 4 KiB read: 6 task-file writes, then per sector one Status read and 128 Data reads", async () => {
    const { disk, dev, driver, irq } = rig();
    const got = await driver.read(16, 8);
    expect(got).toEqual(disk.bytes.subarray(16 * 512, 24 * 512));
    expect(dev.exits).toBe(1038);
    expect(dev.exitCounts()).toEqual({
      Data: 1024,
      SectorCount: 1,
      LbaLow: 1,
      LbaMid: 1,
      LbaHigh: 1,
      Device: 1,
      "Status/Command": 9,
    });
    expect(irq.taken).toBe(8);
    expect(dev.bytesCopied).toBe(4096);
    expect(dev.invalidAccesses).toBe(0);
  });

  it("writes 4 KiB with 1039 exits and 8 interrupts, and the bytes reach the disk", async () => {
    const { disk, dev, driver, irq } = rig();
    const data = new Uint8Array(4096).map((_, i) => (i * 13) & 0xff);
    await driver.write(8, data);
    expect(disk.bytes.subarray(8 * 512, 16 * 512)).toEqual(data);
    expect(dev.exits).toBe(1039);
    expect(irq.taken).toBe(8);
    expect(dev.bytesCopied).toBe(4096);
  });

  it("serializes concurrent commands: four reads cost four times one read's exits", async () => {
    const { dev, driver } = rig();
    const got = await Promise.all([0, 8, 16, 24].map((l) => driver.read(l, 8)));
    expect(got.map((d) => d.length)).toEqual([4096, 4096, 4096, 4096]);
    expect(dev.exits).toBe(4 * 1038);
  });

  it("fails a range past the disk with ERR and IDNF, without throwing to the VMM", async () => {
    const { dev, driver } = rig(16);
    const e = await driver.read(12, 8).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AtaCommandError);
    expect((e as AtaCommandError).error).toBe(AtaError.IDNF);
    expect(dev.status & AtaStatus.ERR).toBe(AtaStatus.ERR);
    // The controller keeps working.
    expect((await driver.read(0, 1)).length).toBe(512);
  });

  it("aborts an unknown command and CHS addressing with ABRT", () => {
    const { dev } = rig();
    dev.write(AtaReg.DEVICE, 1, 0x40);
    dev.write(AtaReg.STATUS_COMMAND, 1, 0x99);
    expect(dev.read(AtaReg.ERROR, 1)).toBe(AtaError.ABRT);
    dev.write(AtaReg.DEVICE, 1, 0x00);
    dev.write(AtaReg.STATUS_COMMAND, 1, 0x20);
    expect(dev.read(AtaReg.ERROR, 1)).toBe(AtaError.ABRT);
  });

  it("reads 0 and counts hostile accesses: no register, wrong width, Data without DRQ", () => {
    const { dev } = rig();
    expect(dev.read(0x40, 4)).toBe(0);
    expect(dev.read(0x05, 1)).toBe(0);
    expect(dev.read(AtaReg.DATA, 1)).toBe(0);
    expect(dev.read(AtaReg.DATA, 4)).toBe(0);
    dev.write(AtaReg.DATA, 4, 0xdeadbeef);
    expect(dev.invalidAccesses).toBe(5);
    expect(dev.exitCounts().Invalid).toBe(2);
    expect(() => dev.read(-4, 4)).toThrow(RangeError);
  });
});
