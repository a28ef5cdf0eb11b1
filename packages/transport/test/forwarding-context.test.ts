// ForwardingDeviceContext: the one forwarding DeviceContext model wrappers build on.
import { createGuestMemory, type VirtioError } from "@virtio-ts/memory";
import { type DeviceQueue, ForwardingDeviceQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { type DeviceContext, ForwardingDeviceContext } from "../src/index.js";
import { TestFault } from "./helpers/echo-model.js";

function fakeContext() {
  const calls: string[] = [];
  const fakeQueue = (size: number) =>
    ({ size, pop: () => false, push: () => {} }) as unknown as DeviceQueue;
  const queues: (DeviceQueue | undefined)[] = [fakeQueue(8), undefined];
  const ctx: DeviceContext = {
    memory: createGuestMemory({ size: 0x1000 }),
    features: 5n,
    numQueues: 2,
    epoch: 3,
    needsReset: false,
    queue: (i) => queues[i],
    queueLayout: (i) => ({ size: 8, desc: i, driver: 0, device: 0 }),
    interrupt: (i) => {
      calls.push(`interrupt:${i}`);
      return true;
    },
    signalUsed: (i) => {
      calls.push(`signalUsed:${i}`);
      return false;
    },
    notifyConfigChange: () => void calls.push("config"),
    fail: (e: VirtioError) => void calls.push(`fail:${e.code}`),
    noteFault: (e: VirtioError) => void calls.push(`noteFault:${e.code}`),
    guard: (fn) => {
      calls.push("guard");
      return fn();
    },
  };
  return { ctx, calls, queues, fakeQueue };
}

describe("ForwardingDeviceContext", () => {
  it("forwards every member to the wrapped context", () => {
    const { ctx, calls } = fakeContext();
    const f = new ForwardingDeviceContext(ctx);
    expect([f.memory, f.features, f.numQueues, f.epoch, f.needsReset]).toEqual([
      ctx.memory,
      5n,
      2,
      3,
      false,
    ]);
    expect(f.queue(0)).toBe(ctx.queue(0));
    expect(f.queue(1)).toBeUndefined();
    expect(f.queueLayout(1)).toEqual({ size: 8, desc: 1, driver: 0, device: 0 });
    expect(f.interrupt(0)).toBe(true);
    expect(f.signalUsed(1)).toBe(false);
    f.notifyConfigChange();
    f.fail(new TestFault("x"));
    f.noteFault(new TestFault("y"));
    expect(f.guard(() => 42)).toBe(42);
    expect(calls).toEqual([
      "interrupt:0",
      "signalUsed:1",
      "config",
      "fail:test-fault",
      "noteFault:test-fault",
      "guard",
    ]);
  });

  it("wraps each queue object once, and again when the inner queue object changes (a queue reset)", () => {
    const { ctx, queues, fakeQueue } = fakeContext();
    let made = 0;
    class Wrapping extends ForwardingDeviceContext {
      protected override wrapQueue(_index: number, queue: DeviceQueue): DeviceQueue {
        made++;
        return new ForwardingDeviceQueue(queue);
      }
    }
    const f = new Wrapping(ctx);
    const a = f.queue(0);
    expect(f.queue(0)).toBe(a);
    expect((a as ForwardingDeviceQueue).inner).toBe(queues[0]);
    queues[0] = fakeQueue(16);
    const b = f.queue(0);
    expect(b).not.toBe(a);
    expect(b?.size).toBe(16);
    expect(made).toBe(2);
  });

  it("refuses something that is not a DeviceContext with a TypeError naming inner", () => {
    expect(() => new ForwardingDeviceContext({} as DeviceContext)).toThrow(/inner must be/);
  });
});
