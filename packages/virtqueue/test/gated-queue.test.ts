// GatedDeviceQueue: stop and drain a device queue from outside the model (vhost GET_VRING_BASE,
// migration), and vhost-style notification suppression while the model is busy.
import { createGuestMemory } from "@virtio-ts/memory";
import { VIRTQ_USED_F_NO_NOTIFY } from "@virtio-ts/spec";
import {
  DescriptorChain,
  GatedDeviceQueue,
  NO_RING_FEATURES,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

const LAYOUT = { size: 8, desc: 0x1000, driver: 0x1100, device: 0x1200 };

function pair(suppressWhileBusy = false) {
  const mem = createGuestMemory({ size: 0x10000 });
  const drv = new SplitDriverQueue<number>(mem, LAYOUT, NO_RING_FEATURES);
  const q = new GatedDeviceQueue(new SplitDeviceQueue(mem, LAYOUT, NO_RING_FEATURES), {
    suppressWhileBusy,
  });
  const add = (t: number) => drv.add([], [{ addr: 0x4000 + 16 * t, len: 16 }], t);
  const usedFlags = () => mem.readU16(LAYOUT.device);
  return { drv, q, add, usedFlags };
}

describe("GatedDeviceQueue", () => {
  it("popBudget: pop takes that many chains, then answers false and keeps notifications off until it is raised", () => {
    const { drv, q, add, usedFlags } = pair(true);
    const chain = new DescriptorChain(8);
    for (let t = 1; t <= 3; t++) add(t);
    drv.publish();
    q.popBudget = 2;
    expect([q.pop(chain), q.pop(chain), q.pop(chain)]).toEqual([true, true, false]);
    // A model's "re-enable, pop again if something arrived" step must not loop: false, and
    // the driver is still asked not to notify.
    expect(q.enableNotifications()).toBe(false);
    expect(usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(VIRTQ_USED_F_NO_NOTIFY);
    q.popBudget = Number.POSITIVE_INFINITY;
    expect(q.pop(chain)).toBe(true);
    expect(q.pops).toBe(3);
  });

  it("onPushed hears of every push, with its count, once the buffer is used", () => {
    const { drv, q, add } = pair();
    const chain = new DescriptorChain(8);
    for (let t = 1; t <= 3; t++) add(t);
    drv.publish();
    const heard: [number, number, number][] = [];
    q.onPushed = (n) => heard.push([n, q.inFlight, drv.reap() === undefined ? 0 : 1]);
    const heads: number[] = [];
    for (let k = 0; k < 3; k++) {
      expect(q.pop(chain)).toBe(true);
      heads.push(chain.head);
    }
    for (const h of heads) q.push(h, 0);
    // Each call comes after the buffer is in the used ring (the driver reaps it there).
    expect(heard).toEqual([
      [1, 2, 1],
      [1, 1, 1],
      [1, 0, 1],
    ]);
  });

  it("finds nothing while stopping, counts chains in flight and calls onIdle when they drain", () => {
    const { drv, q, add } = pair();
    const chain = new DescriptorChain(8);
    add(1);
    add(2);
    drv.publish();
    expect(q.pop(chain)).toBe(true);
    const first = chain.head;
    q.stopping = true;
    expect(q.pop(chain)).toBe(false);
    expect([q.inFlight, q.pops]).toEqual([1, 1]);
    let idle = 0;
    q.onIdle = () => idle++;
    q.push(first, 0);
    expect([q.inFlight, idle]).toEqual([0, 1]);
    // The second chain is still available, untouched: the next owner resumes from here.
    expect(q.getState()).toMatchObject({ availIdx: 1, usedIdx: 1 });
    q.stopping = false;
    expect(q.pop(chain)).toBe(true);
  });

  it("with suppressWhileBusy, turns kicks off on a pop and back on (re-checking) when the ring is empty", () => {
    const { drv, q, add, usedFlags } = pair(true);
    const chain = new DescriptorChain(8);
    add(1);
    drv.publish();
    expect(q.pop(chain)).toBe(true);
    expect(usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(VIRTQ_USED_F_NO_NOTIFY);
    // Published while notifications were off: the re-check on the empty pop finds it.
    add(2);
    expect(drv.publish()).toBe(false);
    expect(q.pop(chain)).toBe(true);
    expect(q.pop(chain)).toBe(false);
    expect(usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
  });

  it("without suppressWhileBusy leaves notifications to the model", () => {
    const { drv, q, add, usedFlags } = pair(false);
    const chain = new DescriptorChain(8);
    add(1);
    drv.publish();
    q.disableNotifications();
    expect(q.pop(chain)).toBe(true);
    expect(q.pop(chain)).toBe(false);
    expect(usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(VIRTQ_USED_F_NO_NOTIFY);
  });

  it("while stopping, reports nothing to pop from enableNotifications, so a model's pop loop ends", () => {
    const { drv, q, add } = pair();
    add(1);
    drv.publish();
    q.stopping = true;
    expect(q.enableNotifications()).toBe(false);
    q.stopping = false;
    expect(q.enableNotifications()).toBe(true);
  });
});
