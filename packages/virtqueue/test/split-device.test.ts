import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  NO_RING_FEATURES,
  QueueConfigError,
  ringFeatures,
  SplitDeviceQueue,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { F_INDIRECT, F_NEXT, F_WRITE, RawSplitRing } from "./helpers/raw-split-ring.js";

const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const D = RawSplitRing.DATA;

function setup(size = 8, features = NO_RING_FEATURES) {
  const raw = new RawSplitRing(size);
  const q = new SplitDeviceQueue(raw.mem, raw.layout, features);
  return { raw, q, chain: new DescriptorChain(size) };
}

describe("SplitDeviceQueue layout checks", () => {
  it("§2.7 refuses a queue size that is not a power of 2", () => {
    const raw = new RawSplitRing(8);
    let e: unknown;
    try {
      new SplitDeviceQueue(raw.mem, { ...raw.layout, size: 6 }, NO_RING_FEATURES);
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(QueueConfigError);
    expect((e as QueueConfigError).field).toBe("size");
    expect((e as QueueConfigError).value).toBe(6);
  });

  it("§2.7 refuses a descriptor table that is not 16-byte aligned", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, desc: 0x1008 }, NO_RING_FEATURES),
    ).toThrow(/desc area must be 16-byte aligned/);
  });

  it("§2.7 refuses a used ring that is not 4-byte aligned and an avail ring that is not 2-byte aligned", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, device: 0x3002 }, NO_RING_FEATURES),
    ).toThrow(QueueConfigError);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, driver: 0x2001 }, NO_RING_FEATURES),
    ).toThrow(QueueConfigError);
  });

  it("refuses a used ring that runs past the end of guest memory", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, device: 0x10000 - 8 }, NO_RING_FEATURES),
    ).toThrow(/outside guest memory/);
  });
});

describe("SplitDeviceQueue.pop", () => {
  it("returns false when the driver has made nothing available", () => {
    const { q, chain } = setup();
    expect(q.pop(chain)).toBe(false);
  });

  it("§2.7.5 reads a chain of readable then writable descriptors in order", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(3, { addr: D, len: 16, flags: F_NEXT, next: 5 });
    raw.writeDesc(5, { addr: D + 0x100, len: 512, flags: F_NEXT | F_WRITE, next: 1 });
    raw.writeDesc(1, { addr: D + 0x400, len: 1, flags: F_WRITE });
    raw.offer(3);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(3);
    expect(chain.count).toBe(3);
    expect(chain.readableCount).toBe(1);
    expect([chain.addr(0), chain.len(0), chain.writable(0)]).toEqual([D, 16, false]);
    expect([chain.addr(1), chain.len(1), chain.writable(1)]).toEqual([D + 0x100, 512, true]);
    expect([chain.addr(2), chain.len(2), chain.writable(2)]).toEqual([D + 0x400, 1, true]);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writableBytes).toBe(513);
    expect(q.pop(chain)).toBe(false);
  });

  it("keeps the validated copy when the guest rewrites a descriptor after pop", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8 });
    raw.offer(0);
    q.pop(chain);
    raw.writeDesc(0, { addr: 0xdead0000, len: 0xffff });
    expect([chain.addr(0), chain.len(0)]).toEqual([D, 8]);
  });

  it("§2.7.5.3 follows an indirect table placed after direct descriptors", () => {
    const { raw, q, chain } = setup(8, INDIRECT);
    const table = 0x5000;
    raw.writeDesc(0, { addr: D, len: 16, flags: F_NEXT, next: 2 });
    raw.writeDesc(2, { addr: table, len: 32, flags: F_INDIRECT | F_WRITE });
    raw.writeDesc(0, { addr: D + 0x10, len: 100, flags: F_NEXT, next: 1 }, table);
    raw.writeDesc(1, { addr: D + 0x200, len: 200, flags: F_WRITE }, table);
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.count).toBe(3);
    expect(chain.readableBytes).toBe(116);
    expect(chain.writableBytes).toBe(200);
    expect(chain.addr(2)).toBe(D + 0x200);
  });

  it("gathers readable bytes and scatters writable bytes across segments", () => {
    const { raw, q, chain } = setup();
    raw.mem.write(D, new Uint8Array([1, 2, 3]));
    raw.mem.write(D + 0x10, new Uint8Array([4, 5]));
    raw.writeDesc(0, { addr: D, len: 3, flags: F_NEXT, next: 1 });
    raw.writeDesc(1, { addr: D + 0x10, len: 2, flags: F_NEXT, next: 2 });
    raw.writeDesc(2, { addr: D + 0x20, len: 2, flags: F_NEXT | F_WRITE, next: 3 });
    raw.writeDesc(3, { addr: D + 0x30, len: 4, flags: F_WRITE });
    raw.offer(0);
    q.pop(chain);
    const got = new Uint8Array(8);
    expect(chain.copyFromReadable(raw.mem, 1, got)).toBe(4);
    expect([...got.subarray(0, 4)]).toEqual([2, 3, 4, 5]);
    expect(chain.copyToWritable(raw.mem, 1, new Uint8Array([9, 8, 7, 6, 5, 4]))).toBe(5);
    expect(raw.mem.readU8(D + 0x21)).toBe(9);
    expect([...raw.mem.slice(D + 0x30, 4)]).toEqual([8, 7, 6, 5]);
  });

  it("accepts a chain exactly as long as the queue", () => {
    const { raw, q, chain } = setup(4);
    for (let i = 0; i < 4; i++)
      raw.writeDesc(i, { addr: D + i * 16, len: 16, flags: i < 3 ? F_NEXT : 0, next: i + 1 });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.count).toBe(4);
  });

  it("accepts a buffer ending exactly at the end of guest memory", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 0x10000 - 64, len: 64, flags: F_WRITE });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.writableBytes).toBe(64);
  });

  it("accepts a zero-length buffer inside guest memory", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 0 });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.count).toBe(1);
    expect(chain.len(0)).toBe(0);
  });
});

describe("SplitDeviceQueue.push", () => {
  it("§2.7.8.2 writes the used element, then advances used.idx", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(6, { addr: D, len: 64, flags: F_WRITE });
    raw.offer(6);
    q.pop(chain);
    q.push(chain.head, 42);
    expect(raw.usedIdx()).toBe(1);
    expect(raw.usedElem(0)).toEqual({ id: 6, len: 42 });
  });

  it("refuses a head that is not in flight, naming it", () => {
    const { q } = setup();
    expect(() => q.push(3, 0)).toThrow(/head 3 is not a chain in flight/);
  });

  it("refuses a written length larger than the chain's writable bytes", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 64, flags: F_WRITE });
    raw.offer(0);
    q.pop(chain);
    expect(() => q.push(0, 65)).toThrow(/written must be an integer in \[0, 64\]/);
    q.push(0, 64);
    expect(raw.usedElem(0).len).toBe(64);
  });
});

describe("SplitDeviceQueue notifications", () => {
  it("§2.7.7.2 without EVENT_IDX interrupts unless VIRTQ_AVAIL_F_NO_INTERRUPT is set", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 4 });
    raw.writeDesc(1, { addr: D, len: 4 });
    raw.offer(0);
    raw.offer(1);
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true);
    expect(q.needsInterrupt()).toBe(false); // nothing new pushed
    raw.setAvailFlags(1);
    q.pop(chain);
    q.push(1, 0);
    expect(q.needsInterrupt()).toBe(false);
  });

  it("§2.7.7.2 with EVENT_IDX interrupts only when used.idx passes used_event", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    for (let i = 0; i < 4; i++) {
      raw.writeDesc(i, { addr: D, len: 4 });
      raw.offer(i);
    }
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true); // first signal after start is unconditional
    raw.setUsedEvent(2); // interrupt when used.idx moves past 2, i.e. reaches 3
    q.pop(chain);
    q.push(1, 0);
    expect(q.needsInterrupt()).toBe(false); // used.idx = 2
    q.pop(chain);
    q.push(2, 0);
    expect(q.needsInterrupt()).toBe(true); // used.idx = 3
  });

  it("§2.7.10 with EVENT_IDX publishes avail_event as the next index it will read", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    raw.writeDesc(0, { addr: D, len: 4 });
    raw.offer(0);
    raw.offer(0, false);
    q.pop(chain);
    expect(raw.availEvent()).toBe(1);
  });

  it("§2.7.10 without EVENT_IDX sets and clears VIRTQ_USED_F_NO_NOTIFY", () => {
    const { raw, q } = setup();
    q.disableNotifications();
    expect(raw.usedFlags()).toBe(1);
    expect(q.enableNotifications()).toBe(false);
    expect(raw.usedFlags()).toBe(0);
  });

  it("enableNotifications reports buffers that arrived while notifications were off", () => {
    const { raw, q } = setup(8, EVENT_IDX);
    q.disableNotifications();
    raw.writeDesc(0, { addr: D, len: 4 });
    raw.offer(0);
    expect(q.enableNotifications()).toBe(true);
  });
});

describe("SplitDeviceQueue state", () => {
  it("getState and setState carry ring positions across a restart", () => {
    const { raw, q, chain } = setup();
    for (let i = 0; i < 3; i++) {
      raw.writeDesc(i, { addr: D, len: 4 });
      raw.offer(i);
    }
    q.pop(chain);
    q.push(0, 0);
    const state = q.getState();
    expect(state).toMatchObject({ availIdx: 1, usedIdx: 1 });
    const q2 = new SplitDeviceQueue(raw.mem, raw.layout, NO_RING_FEATURES);
    q2.setState(state);
    expect(q2.pop(chain)).toBe(true);
    expect(chain.head).toBe(1);
    q2.push(1, 0);
    expect(raw.usedElem(1).id).toBe(1);
  });

  it("setState rejects indices outside 16 bits, naming the field", () => {
    const { q } = setup();
    expect(() =>
      q.setState({ availIdx: 70000, usedIdx: 0, availWrap: true, usedWrap: true }),
    ).toThrow(/state.availIdx/);
  });
});
