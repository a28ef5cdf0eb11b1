import { createGuestMemory, type GuestMemoryMap } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask, MmioInterrupt, MmioReg } from "@virtio-ts/spec";
import { DescriptorLoopError, PackedDriverQueue, SplitDriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type MmioBus,
  MmioDevice,
  MmioDriverTransport,
  RateLimitedLog,
  TransportError,
} from "../src/index.js";
import { busOf, EchoModel } from "./helpers/echo-model.js";

const LAYOUT = { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 } as const;

function pair(features = 0n, version: 1 | 2 = 2) {
  const model = new EchoModel(features);
  const memory = createGuestMemory({ size: 0x10000, shared: false });
  const irqs: number[] = [];
  const dev = new MmioDevice(model, {
    memory,
    version,
    interrupt: (s) => irqs.push(s),
    log: new RateLimitedLog({ sink: () => {} }),
  });
  const drv = new MmioDriverTransport(busOf(dev));
  return { model, memory, dev, drv, irqs };
}

/** Send `text` through the echo queue and return what came back. */
function echo(
  drv: MmioDriverTransport,
  q: SplitDriverQueue<string> | PackedDriverQueue<string>,
  mem: GuestMemoryMap,
  text: string,
): string {
  const bytes = new TextEncoder().encode(text);
  mem.write(0x4000, bytes);
  expect(q.add([{ addr: 0x4000, len: bytes.length }], [{ addr: 0x5000, len: 64 }], text)).toBe(
    true,
  );
  if (q.publish()) drv.notify(0);
  expect(drv.takeInterrupt() & MmioInterrupt.USED_BUFFER).toBe(1);
  expect(q.reap()).toBe(text);
  const out = new Uint8Array(q.lastLen);
  mem.read(0x5000, out);
  return new TextDecoder().decode(out);
}

describe("MmioDriverTransport against MmioDevice (VIRTIO 1.3 §3.1.1, §4.2.3)", () => {
  it("§3.1.1: runs reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue setup, DRIVER_OK; the echo queue works", () => {
    const { dev, drv, memory, model } = pair(0b1n | featureMask(Feature.RING_EVENT_IDX));
    expect(drv.probe()).toEqual({ version: 2, deviceId: model.deviceId, vendorId: 0x554d4551 });
    const f = drv.negotiate((offered) => offered);
    expect(f).toBe(0b1n | featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.VERSION_1));
    expect(dev.core.status).toBe(
      DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK,
    );
    const q = drv.setupQueue<string>(0, memory, LAYOUT);
    expect(q).toBeInstanceOf(SplitDriverQueue);
    drv.driverOk();
    expect(dev.core.status).toBe(15);
    expect(model.activations).toBe(1);
    expect(echo(drv, q, memory, "hello")).toBe("hello");
    expect(echo(drv, q, memory, "virtio")).toBe("virtio");
    expect(dev.core.stats.violations).toBe(0);
    expect(dev.invalidAccesses).toBe(0);
  });

  it("counts the exits of one paravirtualized request: one QueueNotify, one InterruptStatus, one InterruptACK", () => {
    const { dev, drv, memory } = pair();
    drv.negotiate(0n);
    const q = drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    dev.resetCounters();
    echo(drv, q, memory, "x");
    expect(dev.exitCounts()).toEqual({ QueueNotify: 1, InterruptStatus: 1, InterruptACK: 1 });
  });

  it("uses a packed ring when RING_PACKED is negotiated, with NOTIFICATION_DATA carrying the next offset", () => {
    const f = featureMask(Feature.RING_PACKED) | featureMask(Feature.NOTIFICATION_DATA);
    const { drv, memory, model } = pair(f);
    drv.negotiate(f);
    const q = drv.setupQueue<string>(0, memory, {
      size: 5,
      desc: 0x1000,
      driver: 0x1100,
      device: 0x1104,
    });
    expect(q).toBeInstanceOf(PackedDriverQueue);
    drv.driverOk();
    expect(echo(drv, q, memory, "packed")).toBe("packed");
    expect(echo(drv, q, memory, "again")).toBe("again");
    expect(echo(drv, q, memory, "wraps")).toBe("wraps");
    // Each chain takes two ring descriptors; the third wraps past the end of the 5-entry ring.
    expect(model.kicks.map((k) => k.data)).toEqual([
      { queueIndex: 0, nextOff: 2, nextWrap: 1 },
      { queueIndex: 0, nextOff: 4, nextWrap: 1 },
      { queueIndex: 0, nextOff: 1, nextWrap: 0 },
    ]);
  });

  it("never accepts unoffered bits, accepts IN_ORDER, and always accepts VERSION_1 (§2.2.1, §6.1)", () => {
    const { drv } = pair(0b10n | featureMask(Feature.IN_ORDER));
    expect(drv.negotiate(~0n)).toBe(
      0b10n | featureMask(Feature.IN_ORDER) | featureMask(Feature.VERSION_1),
    );
  });

  it("§3.1.1 step 6: throws features-refused and sets FAILED when FEATURES_OK does not stick", () => {
    const { drv, dev, model } = pair(0b1n);
    model.accept = () => false;
    expect(() => drv.negotiate(0b1n)).toThrow(TransportError);
    expect(dev.core.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    try {
      drv.negotiate(0b1n);
    } catch (e) {
      expect((e as TransportError).code).toBe("features-refused");
    }
  });

  it("§4.2.3.1.1: refuses a bad magic, an unknown version and DeviceID 0", () => {
    const regs = new Map<number, number>([
      [MmioReg.MAGIC_VALUE, 0x74726976],
      [MmioReg.VERSION, 2],
      [MmioReg.DEVICE_ID, 0],
    ]);
    const bus: MmioBus = { read: (o) => regs.get(o) ?? 0, write: () => {} };
    const code = () => {
      try {
        new MmioDriverTransport(bus).probe();
      } catch (e) {
        return (e as TransportError).code;
      }
      return "none";
    };
    expect(code()).toBe("no-device");
    regs.set(MmioReg.VERSION, 3);
    expect(code()).toBe("unsupported-version");
    regs.set(MmioReg.MAGIC_VALUE, 0x12345678);
    expect(code()).toBe("bad-magic");
  });

  it("reads configuration fields with the generation loop, retrying a torn read", () => {
    const { drv, dev, model } = pair();
    model.setCounter(0x1_0000_0002n);
    let reads = 0;
    // Change the u64 between its two halves once, as a concurrently updating device would.
    const bus: MmioBus = {
      read: (o, s) => {
        const v = dev.read(o, s);
        if (o === 0x104 && reads++ === 0) {
          model.setCounter(0x2_0000_0003n, false);
          dev.core.notifyConfigChange();
        }
        return v;
      },
      write: (o, s, v) => dev.write(o, s, v),
    };
    const t = new MmioDriverTransport(bus);
    expect(t.readConfig((c) => c.u64(4))).toBe(0x2_0000_0003n);
    expect(reads).toBe(2);
    expect(drv.readConfig((c) => [c.u32(0), c.u16(0), c.u8(3)])).toEqual([0xc0ffee, 0xffee, 0]);
  });

  it("§2.5.1: gives up with config-unstable when the generation never settles (drivers distrust devices)", () => {
    const { dev } = pair();
    let gen = 0;
    const bus: MmioBus = {
      read: (o, s) => (o === MmioReg.CONFIG_GENERATION ? gen++ : dev.read(o, s)),
      write: (o, s, v) => dev.write(o, s, v),
    };
    const t = new MmioDriverTransport(bus, { maxRetries: 5 });
    expect(() => t.readConfig((c) => c.u32(0))).toThrow(/config-unstable/);
    expect(gen).toBe(10);
  });

  it("writes configuration fields after FEATURES_OK", () => {
    const { drv } = pair();
    drv.negotiate(0n);
    drv.writeConfig(0, 4, 0x1234);
    expect(drv.readConfig((c) => c.u32(0))).toBe(0x1234);
    expect(() => drv.writeConfig(1, 4, 0)).toThrow(RangeError);
  });

  it("§4.2.3.2: reports queue-unavailable, queue-too-large, queue-in-use and queue-refused", () => {
    const { drv, memory, dev } = pair();
    drv.negotiate(0n);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as TransportError).code;
      }
      return "none";
    };
    expect(code(() => drv.setupQueue(2, memory, LAYOUT))).toBe("queue-unavailable");
    expect(code(() => drv.setupQueue(1, memory, LAYOUT))).toBe("queue-too-large");
    drv.setupQueue(0, memory, LAYOUT);
    expect(code(() => drv.setupQueue(0, memory, LAYOUT))).toBe("queue-in-use");
    // The driver's memory is larger than what the device can reach: the device refuses.
    const big = createGuestMemory({ size: 0x40000, shared: false });
    expect(
      code(() =>
        drv.setupQueue(1, big, { size: 4, desc: 0x20000, driver: 0x20040, device: 0x20080 }),
      ),
    ).toBe("queue-refused");
    expect(dev.core.needsReset).toBe(true);
  });

  it("§2.6.1: resets one queue with RING_RESET and sets it up again", () => {
    const f = featureMask(Feature.RING_RESET);
    const { drv, memory, model } = pair(f);
    drv.negotiate(f);
    let q = drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    expect(echo(drv, q, memory, "one")).toBe("one");
    drv.resetQueue(0);
    expect(model.queueResets).toEqual([0]);
    q = drv.setupQueue<string>(0, memory, { ...LAYOUT, size: 4 });
    expect(echo(drv, q, memory, "two")).toBe("two");
    const plain = pair();
    plain.drv.negotiate(0n);
    expect(() => plain.drv.resetQueue(0)).toThrow(RangeError);
  });

  it("§4.2.4: drives a legacy version 1 device with QueuePFN and the contiguous layout", () => {
    const { drv, memory, dev } = pair(featureMask(Feature.RING_EVENT_IDX), 1);
    expect(drv.probe().version).toBe(1);
    expect(drv.negotiate(~0n)).toBe(featureMask(Feature.RING_EVENT_IDX));
    expect(dev.core.status).toBe(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    const q = drv.setupQueue<string>(0, memory, { size: 8, base: 0x2000 });
    expect(dev.read(MmioReg.QUEUE_PFN, 4)).toBe(2);
    drv.driverOk();
    expect(echo(drv, q, memory, "legacy")).toBe("legacy");
    expect(drv.configGeneration()).toBe(0);
    expect(drv.readConfig((c) => c.u32(0))).toBe(0xc0ffee);
  });
});

describe("a hostile ring (VIRTIO 1.3 §2.1.2)", () => {
  it("§2.1.2: a descriptor loop sets DEVICE_NEEDS_RESET, raises a config interrupt, registers still answer, reset recovers", () => {
    const { drv, dev, memory, irqs } = pair();
    drv.negotiate(0n);
    drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    // Written raw, not through the driver queue: descriptors 0 → 1 → 0 with NEXT.
    for (const [i, next] of [
      [0, 1],
      [1, 0],
    ] as const) {
      const at = LAYOUT.desc + 16 * i;
      memory.writeU32(at, 0x4000);
      memory.writeU32(at + 4, 0);
      memory.writeU32(at + 8, 16);
      memory.writeU16(at + 12, 1); // VIRTQ_DESC_F_NEXT
      memory.writeU16(at + 14, next);
    }
    memory.writeU16(LAYOUT.driver + 4, 0); // avail.ring[0] = head 0
    memory.writeU16(LAYOUT.driver + 2, 1); // avail.idx = 1
    dev.write(MmioReg.QUEUE_NOTIFY, 4, 0);

    expect(dev.core.needsReset).toBe(true);
    expect(dev.core.lastFault).toBeInstanceOf(DescriptorLoopError);
    expect(irqs).toEqual([MmioInterrupt.CONFIG]);
    expect(drv.needsReset).toBe(true);
    expect(drv.takeInterrupt()).toBe(MmioInterrupt.CONFIG);
    expect(drv.probe().deviceId).toBe(dev.core.model.deviceId);
    expect(drv.readConfig((c) => c.u32(0))).toBe(0xc0ffee);

    // Recovery: the driver resets and initialises again.
    drv.negotiate(0n);
    expect(drv.needsReset).toBe(false);
    const q = drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    expect(echo(drv, q, memory, "back")).toBe("back");
  });
});
