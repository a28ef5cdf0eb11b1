// InThreadMmio and InterruptLatch: the one in-thread wiring of a model and a driver.
import { createGuestMemory } from "@virtio-ts/memory";
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
