// The vhost hooks of the device core: DeviceModel.notifiers (kick doorbells installed at
// construction, a shared interrupt status word) and DeviceContext.queueLayout.
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceStatus, MmioInterrupt, MmioReg } from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";
import { type DeviceNotifiers, LocalDoorbell, MmioDevice, VirtioDeviceCore } from "../src/index.js";
import { EchoModel } from "./helpers/echo-model.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;
const LAYOUT = { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 } as const;

class OffloadedModel extends EchoModel {
  readonly notifiers: DeviceNotifiers;
  constructor(notifiers: DeviceNotifiers) {
    super();
    this.notifiers = notifiers;
  }
}

function live(notifiers: DeviceNotifiers) {
  const model = new OffloadedModel(notifiers);
  const irqs: number[] = [];
  const core = new VirtioDeviceCore(model, {
    memory: createGuestMemory({ size: 0x10000 }),
    interrupt: (s) => irqs.push(s),
  });
  core.writeStatus(ACKNOWLEDGE | DRIVER);
  core.writeDriverFeatureWord(1, 1); // VERSION_1
  core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  core.setQueueSize(0, LAYOUT.size);
  core.setQueueAddressWord(0, "desc", false, LAYOUT.desc);
  core.setQueueAddressWord(0, "driver", false, LAYOUT.driver);
  core.setQueueAddressWord(0, "device", false, LAYOUT.device);
  core.setQueueReady(0, 1);
  core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  return { model, core, irqs };
}

describe("DeviceModel.notifiers (vhost hooks)", () => {
  it("routes kicks of a queue with a kick doorbell to the doorbell instead of onQueueNotify", () => {
    const kick = new LocalDoorbell();
    const t = live({ kicks: [kick] });
    t.core.notify(0);
    t.core.notify(0);
    t.core.notify(1); // queue 1 is not enabled: ignored as before
    expect(kick.take()).toBe(2);
    expect(t.model.kicks).toEqual([]);
    expect(t.core.stats.ignoredNotifies).toBe(1);
  });

  it("keeps direct calls for queues without a doorbell entry", () => {
    const t = live({ kicks: [undefined] });
    t.core.notify(0);
    expect(t.model.kicks.map((k) => k.index)).toEqual([0]);
  });

  it("§4.2.2: InterruptStatus ORs in the shared word, and InterruptACK clears only the acknowledged bits there", () => {
    const word = new Int32Array(new SharedArrayBuffer(4));
    const model = new OffloadedModel({ interruptStatus: word });
    const dev = new MmioDevice(model, { memory: createGuestMemory({ size: 0x10000 }) });
    expect(dev.read(MmioReg.INTERRUPT_STATUS, 4)).toBe(0);
    Atomics.or(word, 0, MmioInterrupt.USED_BUFFER);
    expect(dev.read(MmioReg.INTERRUPT_STATUS, 4)).toBe(MmioInterrupt.USED_BUFFER);
    Atomics.or(word, 0, MmioInterrupt.CONFIG);
    dev.write(MmioReg.INTERRUPT_ACK, 4, MmioInterrupt.USED_BUFFER);
    expect(Atomics.load(word, 0)).toBe(MmioInterrupt.CONFIG);
    expect(dev.read(MmioReg.INTERRUPT_STATUS, 4)).toBe(MmioInterrupt.CONFIG);
  });

  it("§2.4.1: a device reset zeroes the shared interrupt status word", () => {
    const word = new Int32Array(new SharedArrayBuffer(4));
    const t = live({ interruptStatus: word });
    Atomics.or(word, 0, MmioInterrupt.USED_BUFFER);
    t.core.writeStatus(0);
    expect(Atomics.load(word, 0)).toBe(0);
    expect(t.core.interruptStatus).toBe(0);
  });

  it("refuses an interrupt status that is not an Int32Array, naming it", () => {
    const bad = { interruptStatus: new Uint32Array(1) as unknown as Int32Array };
    expect(
      () =>
        new VirtioDeviceCore(new OffloadedModel(bad), {
          memory: createGuestMemory({ size: 4096 }),
        }),
    ).toThrow(/model\.notifiers\.interruptStatus/);
  });

  it("refuses a kick doorbell for a queue index the model does not have", () => {
    const kicks = [undefined, undefined, new LocalDoorbell()];
    expect(
      () =>
        new VirtioDeviceCore(new OffloadedModel({ kicks }), {
          memory: createGuestMemory({ size: 4096 }),
        }),
    ).toThrow(RangeError);
  });
});

describe("DeviceContext.queueLayout", () => {
  it("returns the layout a queue was enabled with, and undefined once it is disabled", () => {
    const t = live({});
    expect(t.core.queueLayout(0)).toEqual(LAYOUT);
    expect(t.core.queueLayout(1)).toBeUndefined();
    t.core.setQueueReady(0, 0);
    expect(t.core.queueLayout(0)).toBeUndefined();
  });

  it("returns the contiguous legacy layout computed from QueuePFN (§2.7.2)", () => {
    const model = new EchoModel();
    const dev = new MmioDevice(model, { memory: createGuestMemory({ size: 0x10000 }), version: 1 });
    dev.write(MmioReg.GUEST_PAGE_SIZE, 4, 4096);
    dev.write(MmioReg.QUEUE_SEL, 4, 0);
    dev.write(MmioReg.QUEUE_NUM, 4, 8);
    dev.write(MmioReg.QUEUE_ALIGN, 4, 4096);
    dev.write(MmioReg.QUEUE_PFN, 4, 2);
    // 8 descriptors (128 B) then the avail ring at +128; the used ring aligned up to 4096.
    expect(dev.core.queueLayout(0)).toEqual({
      size: 8,
      desc: 0x2000,
      driver: 0x2080,
      device: 0x3000,
    });
  });
});
