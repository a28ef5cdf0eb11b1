// The README's virtio-pci example, kept compiling and running (keep the two in sync).
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceId } from "@virtio-ts/spec";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type DeviceContext,
  type DeviceModel,
  PciDriverTransport,
  type PciHost,
  VirtioPciDevice,
} from "../src/index.js";

class ToyEntropy implements DeviceModel {
  readonly deviceId = DeviceId.RNG;
  readonly features = 0n;
  readonly queueMaxSizes = [8];
  readonly configSize = 0;
  #ctx: DeviceContext | undefined;
  readonly #chain = new DescriptorChain(8);
  readonly #bytes = new Uint8Array(4096).fill(0x42);

  readConfig(): number {
    return 0;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
  }
  onQueueNotify(index: number): void {
    const ctx = this.#ctx!;
    const q = ctx.queue(index)!;
    const chain = this.#chain;
    while (q.pop(chain)) q.push(chain.head, chain.copyToWritable(ctx.memory, 0, this.#bytes));
    ctx.signalUsed(index);
  }
  reset(): void {
    this.#ctx = undefined;
  }
}

describe("README virtio-pci example", () => {
  it("places an I/O BAR, drives the device through port I/O and takes an INTx interrupt", () => {
    const logs: string[] = [];
    const log = (...args: unknown[]) =>
      logs.push(args.map((a) => (typeof a === "object" ? JSON.stringify(a) : String(a))).join(" "));
    const memory = createGuestMemory({ size: 0x10000 });

    // The emulator's side: a port space, an interrupt line.
    const ports = new Map<number, [bar: number, offset: number]>();
    const host: PciHost = {
      mapBar(bar, m) {
        for (const [p, [b]] of ports) if (b === bar) ports.delete(p);
        if (m !== undefined) for (let i = 0; i < m.size; i++) ports.set(m.address + i, [bar, i]);
        log("BAR", bar, m === undefined ? "off" : `${m.space} 0x${m.address.toString(16)}`);
      },
      setIntx: (level) => log("INTx", level ? "up" : "down"),
    };
    const device = new VirtioPciDevice(new ToyEntropy(), { memory, host, bar: "io" });
    const inb = (port: number, size: 1 | 2 | 4) => {
      const [bar, off] = ports.get(port)!; // an emulator's port dispatch
      return device.barRead(bar, off, size);
    };
    const outb = (port: number, size: 1 | 2 | 4, value: number) => {
      const [bar, off] = ports.get(port)!;
      device.barWrite(bar, off, size, value);
    };

    // Firmware assigns the BAR; the guest's PCI core enables I/O decoding.
    device.configWrite(0x10, 4, 0xc000); // BAR 0
    device.configWrite(0x04, 2, 0x1); // command: I/O space on; logs "BAR 0 io 0xc000"

    // The guest side: configuration space, and each BAR at the port where it is mapped.
    const base = (bar: number) => device.barMapping(bar)!.address;
    const driver = new PciDriverTransport({
      configRead: (o, s) => device.configRead(o, s),
      configWrite: (o, s, v) => device.configWrite(o, s, v),
      barRead: (bar, o, s) => inb(base(bar) + o, s),
      barWrite: (bar, o, s, v) => outb(base(bar) + o, s, v),
    });
    log(driver.probe().deviceId, driver.info.bars[0]); // 4 { kind: "io", size: 128 }
    driver.negotiate(0n);
    const q = driver.setupQueue<string>(0, memory, {
      size: 8,
      desc: 0x1000,
      driver: 0x1080,
      device: 0x2000,
    });
    driver.driverOk();

    device.resetCounters();
    q.add([], [{ addr: 0x4000, len: 4 }], "entropy");
    if (q.publish()) driver.notify(0); // a 16-bit OUT to the queue's notify port; logs "INTx up"
    driver.takeInterrupt(); // reads the ISR (read-to-clear); logs "INTx down"
    log(q.reap(), memory.readU32(0x4000).toString(16)); // entropy 42424242
    log(device.exitCounts()); // { notify: 1, isr: 1 }
    expect(logs).toEqual([
      "BAR 0 io 0xc000",
      // The driver sizes the BARs with decoding off, then turns it back on.
      "BAR 0 off",
      "BAR 0 io 0xc000",
      `4 ${JSON.stringify({ kind: "io", size: 128 })}`,
      "INTx up",
      "INTx down",
      "entropy 42424242",
      JSON.stringify({ notify: 1, isr: 1 }),
    ]);
  });
});
