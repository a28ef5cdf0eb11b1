// The README example, kept compiling and running (keep the two in sync).
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceId } from "@virtio-ts/spec";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type DeviceContext,
  type DeviceModel,
  MmioDevice,
  MmioDriverTransport,
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
    ctx.signalUsed(index); // a used buffer notification, if the driver wants one
  }
  reset(): void {
    this.#ctx = undefined;
  }
}

describe("README example", () => {
  it("reads 4 bytes of toy entropy with three exits", () => {
    const logs: string[] = [];
    const log = (...args: unknown[]) =>
      logs.push(args.map((a) => (typeof a === "object" ? JSON.stringify(a) : String(a))).join(" "));
    const memory = createGuestMemory({ size: 0x10000 });
    const device = new MmioDevice(new ToyEntropy(), {
      memory,
      interrupt: (status) => logs.push(`irq ${status}`),
    });
    const driver = new MmioDriverTransport({
      read: (offset, size) => device.read(offset, size), // a VMM routes MMIO exits here
      write: (offset, size, value) => device.write(offset, size, value),
    });

    driver.negotiate(0n); // reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (read back)
    const q = driver.setupQueue<string>(0, memory, {
      size: 8,
      desc: 0x1000,
      driver: 0x1080,
      device: 0x2000,
    });
    driver.driverOk();

    device.resetCounters();
    q.add([], [{ addr: 0x4000, len: 4 }], "entropy");
    if (q.publish()) driver.notify(0); // exit: QueueNotify; logs "irq 1"
    driver.takeInterrupt(); // exits: InterruptStatus, InterruptACK
    log(q.reap(), q.lastLen, memory.readU32(0x4000).toString(16)); // entropy 4 42424242
    log(device.exitCounts()); // { QueueNotify: 1, InterruptStatus: 1, InterruptACK: 1 }
    expect(logs).toEqual([
      "irq 1",
      "entropy 4 42424242",
      JSON.stringify({ QueueNotify: 1, InterruptStatus: 1, InterruptACK: 1 }),
    ]);
  });
});
