// InThreadMmio and InterruptLatch: the one in-thread wiring of a model and a driver.
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";
import { InThreadMmio, InterruptLatch } from "../src/index.js";
import { ECHO_ID, EchoModel } from "./helpers/echo-model.js";

describe("InterruptLatch", () => {
  it("runs the handler once per batch of raises: later raises while one is pending only count", async () => {
    const line = new InterruptLatch("macrotask");
    let runs = 0;
    line.handler = () => runs++;
    line.raise();
    line.raise();
    expect([line.raised, line.pending, runs]).toEqual([2, true, 0]);
    await new Promise((r) => setImmediate(r));
    expect([line.taken, line.pending, runs]).toEqual([1, false, 1]);
    line.raise();
    await new Promise((r) => setImmediate(r));
    expect(runs).toBe(2);
  });

  it("runs at once with sync, in a microtask with microtask, and only on take() with none", async () => {
    const sync = new InterruptLatch("sync");
    let s = 0;
    sync.handler = () => s++;
    sync.raise();
    expect(s).toBe(1);
    const micro = new InterruptLatch("microtask");
    let m = 0;
    micro.handler = () => m++;
    micro.raise();
    expect(m).toBe(0);
    await Promise.resolve();
    expect(m).toBe(1);
    const none = new InterruptLatch("none");
    let n = 0;
    none.handler = () => n++;
    none.raise();
    await new Promise((r) => setImmediate(r));
    expect([n, none.pending]).toEqual([0, true]);
    expect(none.take()).toBe(true);
    expect(none.take()).toBe(false);
    expect(n).toBe(1);
  });

  it("refuses an unknown delivery with a RangeError naming it", () => {
    expect(() => new InterruptLatch("later" as never)).toThrow(/delivery/);
  });
});

describe("InThreadMmio", () => {
  it("wires a model's registers to a driver transport and its interrupt line to the latch", () => {
    const memory = createGuestMemory({ size: 0x10000 });
    const vm = new InThreadMmio(new EchoModel(), { memory, delivery: "none" });
    expect(vm.device.read(0x008, 4)).toBe(ECHO_ID); // DeviceID
    vm.transport.negotiate(0n);
    const q = vm.transport.setupQueue<string>(0, memory, {
      size: 8,
      desc: 0x1000,
      driver: 0x1080,
      device: 0x2000,
    });
    vm.transport.driverOk();
    memory.write(0x4000, Uint8Array.of(1, 2, 3));
    q.add([{ addr: 0x4000, len: 3 }], [{ addr: 0x5000, len: 3 }], "echo");
    if (q.publish()) vm.transport.notify(0);
    expect(vm.line.pending).toBe(true);
    let reaped: string | undefined;
    vm.line.handler = () => {
      vm.transport.takeInterrupt();
      reaped = q.reap();
    };
    vm.line.take();
    expect(reaped).toBe("echo");
    expect(vm.device.exitCounts().QueueNotify).toBe(1);
  });
});

describe("deferred kicks (the ioeventfd behaviour)", () => {
  const EVENT_IDX = featureMask(Feature.RING_EVENT_IDX);
  const turn = () => new Promise((r) => setImmediate(r));

  function rig(features: bigint) {
    const memory = createGuestMemory({ size: 0x10000 });
    const model = new EchoModel(features);
    const vm = new InThreadMmio(model, { memory, delivery: "none", kicks: "deferred" });
    vm.transport.negotiate(features);
    const q = vm.transport.setupQueue<number>(0, memory, {
      size: 16,
      desc: 0x1000,
      driver: 0x1100,
      device: 0x2000,
    });
    vm.transport.driverOk();
    const send = (token: number): boolean => {
      q.add([{ addr: 0x4000, len: 4 }], [{ addr: 0x5000 + 8 * token, len: 4 }], token);
      const kick = q.publish();
      if (kick) vm.transport.notify(0);
      return kick;
    };
    const reapAll = (): number[] => {
      const out: number[] = [];
      for (let t = q.reap(); t !== undefined; t = q.reap()) out.push(t);
      return out;
    };
    return { vm, model, q, send, reapAll };
  }

  it("with EVENT_IDX the exit only records the kick: the model runs on the next turn and the driver kicks once for a batch", async () => {
    const { vm, model, send, reapAll } = rig(EVENT_IDX);
    expect(send(0)).toBe(true);
    expect(model.kicks).toHaveLength(0); // not served inside the exit
    // §2.7.10: avail_event did not move, so publishing more needs no kick.
    expect([send(1), send(2), send(3)]).toEqual([false, false, false]);
    await turn();
    expect(model.kicks).toHaveLength(1);
    expect(reapAll()).toEqual([0, 1, 2, 3]);
    expect(vm.device.exitCounts().QueueNotify).toBe(1);
    // Served and re-enabled: the next publish kicks again.
    expect(send(4)).toBe(true);
    await turn();
    expect(reapAll()).toEqual([4]);
  });

  it("without EVENT_IDX sets VIRTQ_USED_F_NO_NOTIFY from the kick until the queue is served (§2.7.10)", async () => {
    const { vm, model, send, reapAll } = rig(0n);
    expect(send(0)).toBe(true);
    expect([send(1), send(2)]).toEqual([false, false]);
    await turn();
    expect(model.kicks).toHaveLength(1);
    expect(reapAll()).toEqual([0, 1, 2]);
    expect(send(3)).toBe(true);
    expect(vm.device.exitCounts().QueueNotify).toBe(2);
  });

  it("drops a recorded kick when the device is reset before the turn, and serves nothing", async () => {
    const { vm, model, send } = rig(EVENT_IDX);
    send(0);
    vm.device.write(0x070, 4, 0); // Status = 0: reset
    await turn();
    expect(model.kicks).toHaveLength(0);
  });

  it("a kick recorded before a suspend is served after resume, and the queue kicks again afterwards", async () => {
    const { vm, model, send, reapAll } = rig(EVENT_IDX);
    send(0);
    await vm.device.core.suspend(); // before the deferred kick's turn
    await turn();
    expect(model.kicks).toHaveLength(0); // held while suspended
    vm.device.core.resume(); // kicks every queue once
    await turn();
    expect(reapAll()).toEqual([0]);
    expect(send(1)).toBe(true); // notifications were enabled again
    await turn();
    expect(reapAll()).toEqual([1]);
  });

  it("refuses an unknown kicks mode with a RangeError naming it", () => {
    const memory = createGuestMemory({ size: 0x10000 });
    expect(() => new InThreadMmio(new EchoModel(), { memory, kicks: "later" as never })).toThrow(
      /options\.kicks/,
    );
  });
});
