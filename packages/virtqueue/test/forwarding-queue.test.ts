// ForwardingDeviceQueue: the one pass-through device queue the wrappers extend; and the ring
// placement helper drivers and rigs share.
import {
  DescriptorChain,
  type DeviceQueue,
  ForwardingDeviceQueue,
  type InFlightChain,
  type QueueState,
  ringAreaBytes,
  ringLayoutAt,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

/** A fake queue recording every call it receives. */
class Recorder implements DeviceQueue {
  readonly size = 4;
  readonly calls: string[] = [];
  pop(chain: DescriptorChain): boolean {
    this.calls.push(`pop:${chain.capacity}`);
    return true;
  }
  push(head: number, written: number): void {
    this.calls.push(`push:${head}:${written}`);
  }
  use(head: number, written: number): void {
    this.calls.push(`use:${head}:${written}`);
  }
  publishUsed(): void {
    this.calls.push("publishUsed");
  }
  pushBatch(count: number, written: number): void {
    this.calls.push(`pushBatch:${count}:${written}`);
  }
  needsInterrupt(): boolean {
    this.calls.push("needsInterrupt");
    return true;
  }
  enableNotifications(): boolean {
    this.calls.push("enableNotifications");
    return true;
  }
  disableNotifications(): void {
    this.calls.push("disableNotifications");
  }
  getState(): QueueState {
    this.calls.push("getState");
    return { availIdx: 1, usedIdx: 2, availWrap: true, usedWrap: false };
  }
  setState(state: QueueState): void {
    this.calls.push(`setState:${state.availIdx}`);
  }
  saveInFlight(): InFlightChain[] {
    this.calls.push("saveInFlight");
    return [{ id: 3, descriptors: new Uint32Array(0) }];
  }
  restoreInFlight(chains: readonly InFlightChain[]): void {
    this.calls.push(`restoreInFlight:${chains.length}`);
  }
}

/** A wrapper that overrides only `push`, counting the calls. */
class Counting extends ForwardingDeviceQueue {
  pushes = 0;
  override push(head: number, written: number): void {
    this.pushes++;
    super.push(head, written);
  }
}

describe("ForwardingDeviceQueue", () => {
  it("forwards every DeviceQueue call, with its arguments and result, to the wrapped queue", () => {
    const r = new Recorder();
    const q = new ForwardingDeviceQueue(r);
    expect(q.size).toBe(4);
    expect(q.inner).toBe(r);
    expect(q.pop(new DescriptorChain(2))).toBe(true);
    q.push(1, 9);
    q.publishUsed();
    q.pushBatch(2, 3);
    expect(q.needsInterrupt()).toBe(true);
    expect(q.enableNotifications()).toBe(true);
    q.disableNotifications();
    expect(q.getState()).toEqual({ availIdx: 1, usedIdx: 2, availWrap: true, usedWrap: false });
    q.setState({ availIdx: 7, usedIdx: 0, availWrap: true, usedWrap: true });
    expect(q.saveInFlight()).toEqual([{ id: 3, descriptors: new Uint32Array(0) }]);
    q.restoreInFlight([]);
    expect(r.calls).toEqual([
      "pop:2",
      "push:1:9",
      "publishUsed",
      "pushBatch:2:3",
      "needsInterrupt",
      "enableNotifications",
      "disableNotifications",
      "getState",
      "setState:7",
      "saveInFlight",
      "restoreInFlight:0",
    ]);
  });

  it("lets a subclass change one call and keep the others", () => {
    const r = new Recorder();
    const q = new Counting(r);
    q.push(0, 1);
    q.disableNotifications();
    expect([q.pushes, r.calls]).toEqual([1, ["push:0:1", "disableNotifications"]]);
  });

  it("sends use through this.push, so a subclass that overrides only push sees every used chain", () => {
    const r = new Recorder();
    const q = new Counting(r);
    q.use(2, 5);
    expect([q.pushes, r.calls]).toEqual([1, ["push:2:5"]]);
  });

  it("names the missing capability when the wrapped queue cannot save or restore chains in flight", () => {
    const { saveInFlight: _s, restoreInFlight: _r, ...plain } = new Recorder();
    const bare = Object.assign(Object.create(Recorder.prototype), plain) as DeviceQueue;
    Object.defineProperty(bare, "saveInFlight", { value: undefined });
    Object.defineProperty(bare, "restoreInFlight", { value: undefined });
    const q = new ForwardingDeviceQueue(bare);
    expect(() => q.saveInFlight()).toThrow(/no saveInFlight/);
    expect(() => q.restoreInFlight([])).toThrow(/no restoreInFlight/);
  });

  it("refuses something that is not a DeviceQueue with a TypeError naming inner", () => {
    expect(() => new ForwardingDeviceQueue({} as DeviceQueue)).toThrow(/inner must be/);
  });
});

describe("ringLayoutAt / ringAreaBytes", () => {
  it("places the descriptor table, the driver area and the 4-aligned device area back to back (VIRTIO 1.3 §2.7 alignment table)", () => {
    // 256 entries: a 4096-byte table, 6 + 2·256 avail bytes (used_event included), then the
    // used ring (6 + 8·256 bytes) at the next 4-byte boundary.
    expect(ringLayoutAt(0x10000, 256)).toEqual({
      size: 256,
      desc: 0x10000,
      driver: 0x11000,
      device: 0x11208,
    });
    expect(ringAreaBytes(256)).toBe(0x1a10); // 0x1208 + 2054 = 0x1a0e, rounded up to 16
    expect(ringAreaBytes(256) % 16).toBe(0);
    expect(ringAreaBytes(1) % 16).toBe(0);
  });

  it("refuses a base or size out of range with a RangeError naming it", () => {
    expect(() => ringLayoutAt(-16, 8)).toThrow(/base/);
    expect(() => ringLayoutAt(0, 0)).toThrow(/size/);
    expect(() => ringAreaBytes(32769)).toThrow(/size/);
  });
});
