import { createGuestMemory, GuestMemoryError } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask, MmioInterrupt } from "@virtio-ts/spec";
import {
  GatedDeviceQueue,
  PackedDeviceQueue,
  QueueConfigError,
  SplitDeviceQueue,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  LocalDoorbell,
  RateLimitedLog,
  splitNotificationData,
  VirtioDeviceCore,
} from "../src/index.js";
import { EchoModel, TestFault } from "./helpers/echo-model.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, FAILED, DEVICE_NEEDS_RESET } = DeviceStatus;
const V1 = featureMask(Feature.VERSION_1);
const LAYOUT = { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 } as const;

function make(features = 0n, options: { legacy?: boolean; maxSizes?: number[] } = {}) {
  const model = new EchoModel(features, options.maxSizes);
  const memory = createGuestMemory({ size: 0x10000, shared: false });
  const irqs: number[] = [];
  const logs: string[] = [];
  const core = new VirtioDeviceCore(model, {
    memory,
    legacy: options.legacy ?? false,
    interrupt: (s) => irqs.push(s),
    log: new RateLimitedLog({ sink: (m) => logs.push(m), burst: 2, now: () => 0 }),
  });
  return { model, memory, core, irqs, logs };
}

function writeFeatures(core: VirtioDeviceCore, f: bigint): void {
  core.writeDriverFeatureWord(0, Number(f & 0xffffffffn));
  core.writeDriverFeatureWord(1, Number((f >> 32n) & 0xffffffffn));
}

/** §3.1.1 steps 2–5. */
function negotiate(core: VirtioDeviceCore, f: bigint = core.offeredFeatures): void {
  core.writeStatus(ACKNOWLEDGE);
  core.writeStatus(ACKNOWLEDGE | DRIVER);
  writeFeatures(core, f);
  core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

function setLayout(
  core: VirtioDeviceCore,
  i: number,
  l: { size: number; desc: number; driver: number; device: number },
): void {
  core.setQueueSize(i, l.size);
  core.setQueueAddressWord(i, "desc", false, l.desc);
  core.setQueueAddressWord(i, "driver", false, l.driver);
  core.setQueueAddressWord(i, "device", false, l.device);
}

function live(features = 0n) {
  const t = make(features);
  negotiate(t.core);
  setLayout(t.core, 0, LAYOUT);
  t.core.setQueueReady(0, 1);
  t.core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  return t;
}

describe("device status (VIRTIO 1.3 §2.1)", () => {
  it("starts at 0 and goes through ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, activating the model once", () => {
    const { core, model } = make();
    expect(core.status).toBe(0);
    negotiate(core);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    expect(model.activations).toBe(0);
    core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    expect(core.status).toBe(15);
    expect(model.activations).toBe(1);
    expect(core.active).toBe(true);
    expect(core.stats.violations).toBe(0);
  });

  it("§2.4.1: writing 0 resets status, features, queues and interrupt status to 0 and resets the model", () => {
    const { core, model } = live(featureMask(Feature.RING_EVENT_IDX));
    core.interrupt(0);
    const epoch = core.epoch;
    core.writeStatus(0);
    expect(core.status).toBe(0);
    expect(core.features).toBe(0n);
    expect(core.interruptStatus).toBe(0);
    expect(core.queueReady(0)).toBe(false);
    expect(core.queue(0)).toBeUndefined();
    expect(core.queueAddress(0, "desc")).toBe(0);
    expect(core.queueSize(0)).toBe(16);
    expect(core.active).toBe(false);
    expect(core.epoch).toBe(epoch + 1);
    expect(model.resets).toBe(1);
  });

  it("§2.1.1: a write that omits set bits does not clear them, and counts a violation", () => {
    const { core } = make();
    core.writeStatus(ACKNOWLEDGE | DRIVER);
    core.writeStatus(DRIVER);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER);
    core.writeStatus(FAILED);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER | FAILED);
    expect(core.stats.violations).toBe(2);
    expect(core.lastViolation).toContain("clears bits");
  });

  it("DEVICE_NEEDS_RESET and undefined bits cannot be set by the driver", () => {
    const { core } = make();
    core.writeStatus(ACKNOWLEDGE | DEVICE_NEEDS_RESET | 16 | 32 | 0x100);
    expect(core.status).toBe(ACKNOWLEDGE);
    expect(core.needsReset).toBe(false);
  });

  it("§3.1.1: DRIVER_OK without FEATURES_OK is not kept on a modern device and does not activate it", () => {
    const { core, model } = make();
    core.writeStatus(ACKNOWLEDGE | DRIVER | DRIVER_OK);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER);
    expect(model.activations).toBe(0);
    expect(core.lastViolation).toBe("DRIVER_OK without FEATURES_OK");
  });

  it("§3.1.2: a legacy device has no FEATURES_OK and goes live on DRIVER_OK alone", () => {
    const { core, model } = make(0n, { legacy: true });
    core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER);
    core.writeStatus(ACKNOWLEDGE | DRIVER | DRIVER_OK);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER | DRIVER_OK);
    expect(model.activations).toBe(1);
  });
});

describe("feature negotiation (VIRTIO 1.3 §2.2)", () => {
  it("§6.2: a modern device offers VERSION_1 and only the transport bits MMIO allows", () => {
    const sriov = featureMask(Feature.SR_IOV) | featureMask(Feature.ADMIN_VQ);
    const { core } = make(0b101n | featureMask(Feature.RING_PACKED) | sriov);
    expect(core.offeredFeatures).toBe(0b101n | featureMask(Feature.RING_PACKED) | V1);
    expect(core.deviceFeatureWord(0)).toBe(0b101);
    expect(core.deviceFeatureWord(1)).toBe(0b101);
    expect(core.deviceFeatureWord(4)).toBe(0);
    expect(core.deviceFeatureWord(0xffffffff)).toBe(0);
  });

  it("a legacy device offers bits 0–31 only, without VERSION_1", () => {
    const { core } = make(
      0b11n | featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.RING_PACKED),
      {
        legacy: true,
      },
    );
    expect(core.offeredFeatures).toBe(0b11n | featureMask(Feature.RING_EVENT_IDX));
  });

  it("§2.2.2: FEATURES_OK is not kept when the driver accepted a bit the device did not offer", () => {
    const { core } = make(0b1n);
    negotiate(core, V1 | 0b11n);
    expect(core.status & FEATURES_OK).toBe(0);
    expect(core.status).toBe(ACKNOWLEDGE | DRIVER);
    expect(core.featuresRefusal).toContain("did not offer");
  });

  it("§2.2.2: FEATURES_OK is not kept when an unoffered bit was written in a window past bit 127", () => {
    const { core } = make();
    core.writeStatus(ACKNOWLEDGE | DRIVER);
    writeFeatures(core, V1);
    core.writeDriverFeatureWord(7, 1);
    core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    expect(core.status & FEATURES_OK).toBe(0);
  });

  it("§6.2: FEATURES_OK is not kept when the driver of a modern device did not accept VERSION_1", () => {
    const { core } = make(0b1n);
    negotiate(core, 0b1n);
    expect(core.status & FEATURES_OK).toBe(0);
    expect(core.featuresRefusal).toContain("VERSION_1");
    // The driver may retry after a reset and succeed.
    core.writeStatus(0);
    negotiate(core, 0b1n | V1);
    expect(core.status & FEATURES_OK).toBe(FEATURES_OK);
    expect(core.features).toBe(0b1n | V1);
  });

  it("FEATURES_OK before ACKNOWLEDGE and DRIVER is not kept", () => {
    const { core } = make();
    writeFeatures(core, V1);
    core.writeStatus(FEATURES_OK);
    expect(core.status).toBe(0);
  });

  it("§2.2.2: FEATURES_OK is not kept when the model refuses the combination", () => {
    const { core, model } = make(0b11n);
    model.accept = (f) => (f & 0b11n) !== 0b10n;
    negotiate(core, V1 | 0b10n);
    expect(core.status & FEATURES_OK).toBe(0);
    core.writeStatus(0);
    negotiate(core, V1 | 0b11n);
    expect(core.status & FEATURES_OK).toBe(FEATURES_OK);
  });

  it("§3.1.1 step 5: features are frozen once FEATURES_OK is set", () => {
    const { core } = make(0b11n);
    negotiate(core, V1 | 0b1n);
    core.writeDriverFeatureWord(0, 0b11);
    expect(core.features).toBe(V1 | 0b1n);
    expect(core.driverFeatureWord(0)).toBe(1);
    expect(core.lastViolation).toContain("after negotiation");
  });
});

describe("configuration space (VIRTIO 1.3 §2.5)", () => {
  it("§2.5.2: is readable before FEATURES_OK, field by field, little-endian", () => {
    const { core } = make();
    expect(core.readConfig(0, 4)).toBe(0xc0ffee);
    expect(core.readConfig(0, 2)).toBe(0xffee);
    expect(core.readConfig(1, 1)).toBe(0xff);
  });

  it("reads 0 for out-of-range, misaligned or odd-sized accesses, counting violations", () => {
    const { core } = make();
    expect(core.readConfig(12, 1)).toBe(0);
    expect(core.readConfig(10, 4)).toBe(0);
    expect(core.readConfig(1, 2)).toBe(0);
    expect(core.readConfig(0, 3)).toBe(0);
    expect(core.readConfig(0, 8)).toBe(0);
    expect(core.readConfig(-4, 4)).toBe(0);
    expect(core.stats.violations).toBe(6);
  });

  it("§3.1.1 step 4: ignores writes before FEATURES_OK and passes them to the model after", () => {
    const { core, model } = make();
    core.writeStatus(ACKNOWLEDGE | DRIVER);
    core.writeConfig(0, 4, 7);
    expect(model.config.getUint32(0, true)).toBe(0xc0ffee);
    negotiate(core);
    core.writeConfig(0, 4, 7);
    expect(core.readConfig(0, 4)).toBe(7);
  });

  it("§4.2.2.1: a device change bumps the generation; the config interrupt waits for DRIVER_OK", () => {
    const { core, irqs } = make();
    const g0 = core.configGeneration;
    core.notifyConfigChange();
    expect(core.configGeneration).toBe(g0 + 1);
    expect(core.interruptStatus).toBe(0);
    negotiate(core);
    core.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    core.notifyConfigChange();
    expect(core.configGeneration).toBe(g0 + 2);
    expect(core.interruptStatus).toBe(MmioInterrupt.CONFIG);
    expect(irqs).toEqual([MmioInterrupt.CONFIG]);
    expect(core.stats.configInterrupts).toBe(1);
  });
});

describe("queues (VIRTIO 1.3 §2.6, §4.2.3.2)", () => {
  it("enables a split queue with the negotiated ring features", () => {
    const { core } = live(featureMask(Feature.RING_EVENT_IDX));
    // The model sees the ring through a gate the core can stop (suspend).
    const q = core.queue(0) as GatedDeviceQueue;
    expect(q).toBeInstanceOf(GatedDeviceQueue);
    expect(q.inner).toBeInstanceOf(SplitDeviceQueue);
    expect((q.inner as SplitDeviceQueue).features.eventIdx).toBe(true);
    expect(core.queueReady(0)).toBe(true);
    expect(core.queueAddress(0, "driver")).toBe(0x1080);
  });

  it("enables a packed queue of any size up to the maximum when RING_PACKED is negotiated", () => {
    const { core } = make(featureMask(Feature.RING_PACKED));
    negotiate(core);
    setLayout(core, 0, { size: 5, desc: 0x1000, driver: 0x1100, device: 0x1104 });
    core.setQueueReady(0, 1);
    expect((core.queue(0) as GatedDeviceQueue).inner).toBeInstanceOf(PackedDeviceQueue);
    expect(core.queue(0)?.size).toBe(5);
  });

  it("refuses a split queue whose size is not a power of 2: not ready, DEVICE_NEEDS_RESET, QueueConfigError recorded", () => {
    const { core } = make();
    negotiate(core);
    setLayout(core, 0, { ...LAYOUT, size: 6 });
    core.setQueueReady(0, 1);
    expect(core.queueReady(0)).toBe(false);
    expect(core.needsReset).toBe(true);
    expect(core.lastFault).toBeInstanceOf(QueueConfigError);
    expect(core.faultCounts.get("queue-config")).toBe(1);
  });

  it("refuses a queue larger than its maximum, or a queue whose maximum is 0", () => {
    const a = make();
    negotiate(a.core);
    setLayout(a.core, 1, { ...LAYOUT, size: 8 });
    a.core.setQueueReady(1, 1);
    expect(a.core.queueReady(1)).toBe(false);
    expect((a.core.lastFault as QueueConfigError).field).toBe("size");
    const b = make(0n, { maxSizes: [0] });
    negotiate(b.core);
    setLayout(b.core, 0, { ...LAYOUT, size: 1 });
    b.core.setQueueReady(0, 1);
    expect(b.core.queueReady(0)).toBe(false);
  });

  it("refuses a queue whose areas are misaligned or outside guest memory", () => {
    const { core } = make();
    negotiate(core);
    setLayout(core, 0, { ...LAYOUT, desc: 0x1008 });
    core.setQueueReady(0, 1);
    expect((core.lastFault as QueueConfigError).field).toBe("desc");
    core.writeStatus(0);
    negotiate(core);
    setLayout(core, 0, LAYOUT);
    core.setQueueAddressWord(0, "device", true, 1); // 2^32 + 0x2000
    core.setQueueReady(0, 1);
    expect(core.queueReady(0)).toBe(false);
    expect((core.lastFault as QueueConfigError).field).toBe("device");
  });

  it("ignores QueueReady before FEATURES_OK (the ring type is not known yet)", () => {
    const { core } = make();
    core.writeStatus(ACKNOWLEDGE | DRIVER);
    setLayout(core, 0, LAYOUT);
    core.setQueueReady(0, 1);
    expect(core.queueReady(0)).toBe(false);
    expect(core.needsReset).toBe(false);
  });

  it("§4.2.2.2: ignores size and address writes while the queue is ready", () => {
    const { core } = live();
    core.setQueueSize(0, 4);
    core.setQueueAddressWord(0, "desc", false, 0x3000);
    expect(core.queueSize(0)).toBe(8);
    expect(core.queueAddress(0, "desc")).toBe(0x1000);
    expect(core.lastViolation).toBe("queue 0 changed while enabled");
  });

  it("disables a queue on QueueReady 0 and tells the model", () => {
    const { core, model } = live();
    core.setQueueReady(0, 0);
    expect(core.queueReady(0)).toBe(false);
    expect(core.queue(0)).toBeUndefined();
    expect(model.queueResets).toEqual([0]);
  });

  it("§2.6.1.1.1: RING_RESET returns one queue to its default state and tells the model; re-enable works", () => {
    const { core, model } = live(featureMask(Feature.RING_RESET));
    const epoch = core.epoch;
    core.resetQueue(0);
    expect(core.queueReady(0)).toBe(false);
    expect(core.queueSize(0)).toBe(16);
    expect(core.queueAddress(0, "desc")).toBe(0);
    expect(model.queueResets).toEqual([0]);
    expect(core.epoch).toBeGreaterThan(epoch);
    expect(core.status & DRIVER_OK).toBe(DRIVER_OK);
    setLayout(core, 0, { ...LAYOUT, size: 4 });
    core.setQueueReady(0, 1);
    expect(core.queue(0)?.size).toBe(4);
    expect(model.enabled).toEqual([0]);
  });

  it("ignores a queue reset when RING_RESET was not negotiated", () => {
    const { core, model } = live();
    core.resetQueue(0);
    expect(core.queueReady(0)).toBe(true);
    expect(model.queueResets).toEqual([]);
    expect(core.lastViolation).toContain("RING_RESET");
  });

  it("legacy: QueuePFN enables the contiguous layout at pfn × page size and 0 stops it", () => {
    const { core, model } = make(0n, { legacy: true });
    core.setQueueSize(0, 8);
    core.setLegacyQueueAlign(0, 4096);
    core.setLegacyQueuePfn(0, 2, 4096);
    expect(core.queueReady(0)).toBe(true);
    expect(core.legacyQueuePfn(0)).toBe(2);
    expect((core.queue(0) as GatedDeviceQueue).inner).toBeInstanceOf(SplitDeviceQueue);
    core.setLegacyQueuePfn(0, 0, 4096);
    expect(core.legacyQueuePfn(0)).toBe(0);
    expect(model.queueResets).toEqual([0]);
  });

  it("legacy: a bad QueueAlign or a queue beyond guest memory leaves QueuePFN at 0 with DEVICE_NEEDS_RESET", () => {
    const a = make(0n, { legacy: true });
    a.core.setLegacyQueueAlign(0, 3);
    a.core.setLegacyQueuePfn(0, 2, 4096);
    expect(a.core.legacyQueuePfn(0)).toBe(0);
    expect((a.core.lastFault as QueueConfigError).field).toBe("align");
    const b = make(0n, { legacy: true });
    b.core.setLegacyQueuePfn(0, 0xffffffff, 4096);
    expect(b.core.legacyQueuePfn(0)).toBe(0);
    expect(b.core.needsReset).toBe(true);
  });
});

describe("notifications and interrupts (VIRTIO 1.3 §2.3, §2.9)", () => {
  it("§3.1.1: ignores and counts a kick before DRIVER_OK", () => {
    const { core, model } = make();
    negotiate(core);
    setLayout(core, 0, LAYOUT);
    core.setQueueReady(0, 1);
    core.notify(0);
    expect(model.kicks).toEqual([]);
    expect(core.stats.ignoredNotifies).toBe(1);
    expect(core.lastViolation).toContain("before DRIVER_OK");
  });

  it("ignores kicks for unknown or disabled queues", () => {
    const { core, model } = live();
    core.notify(1);
    core.notify(2);
    core.notify(0x10000);
    expect(model.kicks).toEqual([]);
    expect(core.stats).toMatchObject({ notifies: 3, ignoredNotifies: 3 });
  });

  it("legacy: a kick before DRIVER_OK activates the model (§3.1.2)", () => {
    const { core, model } = make(0n, { legacy: true });
    core.setLegacyQueuePfn(0, 1, 4096);
    core.notify(0);
    expect(model.activations).toBe(1);
    expect(model.kicks.map((k) => k.index)).toEqual([0]);
  });

  it("§2.9: decodes NOTIFICATION_DATA when negotiated", () => {
    const { core, model } = live(featureMask(Feature.NOTIFICATION_DATA));
    core.notify(splitNotificationData(0, 0x8005));
    expect(model.kicks).toEqual([{ index: 0, data: { queueIndex: 0, nextOff: 5, nextWrap: 1 } }]);
  });

  it("§2.1.2: sends no used buffer notification before DRIVER_OK", () => {
    const { core, irqs } = make();
    negotiate(core);
    setLayout(core, 0, LAYOUT);
    core.setQueueReady(0, 1);
    expect(core.interrupt(0)).toBe(false);
    expect(core.interruptStatus).toBe(0);
    expect(irqs).toEqual([]);
  });

  it("sets InterruptStatus bits, calls the line each time and clears only the acknowledged bits", () => {
    const { core, irqs } = live();
    expect(core.interrupt(0)).toBe(true);
    core.notifyConfigChange();
    expect(core.interruptStatus).toBe(3);
    expect(irqs).toEqual([1, 3]);
    core.ackInterrupt(1 | 0xfc);
    expect(core.interruptStatus).toBe(2);
    core.ackInterrupt(2);
    expect(core.interruptStatus).toBe(0);
    expect(core.stats.usedInterrupts).toBe(1);
  });

  it("routes kicks to a kick doorbell instead of the model", () => {
    const { core, model } = live();
    const bell = new LocalDoorbell();
    core.setKickDoorbell(0, bell);
    core.notify(0);
    core.notify(0);
    expect(bell.take()).toBe(2);
    expect(model.kicks).toEqual([]);
    core.setKickDoorbell(0, undefined);
    core.notify(0);
    expect(model.kicks).toHaveLength(1);
    expect(() => core.setKickDoorbell(9, bell)).toThrow(RangeError);
  });
});

describe("faults (VIRTIO 1.3 §2.1.2)", () => {
  it("§2.1.2: fail sets DEVICE_NEEDS_RESET and, with DRIVER_OK set, sends a configuration change notification", () => {
    const { core, irqs, model } = live();
    core.fail(new TestFault("boom"));
    expect(core.status).toBe(15 | DEVICE_NEEDS_RESET);
    expect(core.interruptStatus).toBe(MmioInterrupt.CONFIG);
    expect(irqs).toEqual([MmioInterrupt.CONFIG]);
    // Kicks are no longer delivered; a second failure is counted but raises nothing new.
    core.notify(0);
    expect(model.kicks).toEqual([]);
    core.fail(new TestFault("again"));
    expect(irqs).toHaveLength(1);
    expect(core.stats.faults).toBe(2);
    expect(core.faultCounts.get("test-fault")).toBe(2);
    // A reset clears it.
    core.writeStatus(0);
    expect(core.status).toBe(0);
  });

  it("fail before DRIVER_OK sets DEVICE_NEEDS_RESET without an interrupt", () => {
    const { core, irqs } = make();
    core.fail(new TestFault("early"));
    expect(core.needsReset).toBe(true);
    expect(irqs).toEqual([]);
  });

  it("rate-limits the fault log", () => {
    const { core, logs } = make();
    for (let i = 0; i < 5; i++) core.noteFault(new TestFault(`f${i}`));
    expect(logs).toHaveLength(2);
    expect(logs[0]).toContain("TestFault: f0");
    expect(core.stats.faults).toBe(5);
    expect(core.needsReset).toBe(false);
  });

  it("turns a VirtioError thrown by the model into DEVICE_NEEDS_RESET and lets other errors through", () => {
    const { core, model } = live();
    model.onQueueNotify = () => {
      throw new GuestMemoryError("out-of-bounds", 0x9000, 4);
    };
    core.notify(0);
    expect(core.needsReset).toBe(true);
    expect(core.lastFault).toBeInstanceOf(GuestMemoryError);
    const other = live();
    other.model.onQueueNotify = () => {
      throw new Error("bug");
    };
    expect(() => other.core.notify(0)).toThrow("bug");
    expect(other.core.needsReset).toBe(false);
  });

  it("guard returns the value, or undefined after failing the device", () => {
    const { core } = live();
    expect(core.guard(() => 5)).toBe(5);
    expect(
      core.guard(() => {
        throw new TestFault("x");
      }),
    ).toBeUndefined();
    expect(core.needsReset).toBe(true);
  });
});

describe("construction", () => {
  it("rejects invalid models with RangeErrors naming the field", () => {
    const memory = createGuestMemory({ size: 0x1000, shared: false });
    expect(() => new VirtioDeviceCore(new EchoModel(0n, [40000]), { memory })).toThrow(
      /queueMaxSizes\[0\]/,
    );
    const bad = Object.assign(new EchoModel(), { configSize: -1 });
    expect(() => new VirtioDeviceCore(bad, { memory })).toThrow(/configSize/);
  });
});
