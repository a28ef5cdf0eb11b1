/** Deliberately broken entropy drivers, each breaking one rule. */
import type { DriverTransport } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import type { RngDriverAdapter } from "../../src/index.js";

/**
 * A minimal driver that hands back the whole buffer it posted, ignoring the used length
 * (§5.4.6.1: the driver MUST examine it). Correct otherwise: one writable buffer per read.
 */
export function wholeBuffer(): RngDriverAdapter {
  let q: DriverQueue<() => void> | undefined;
  let t: DriverTransport | undefined;
  let mem: Parameters<RngDriverAdapter["attach"]>[1] | undefined;
  let heap = 0;
  return {
    attach(transport, memory, env) {
      t = transport;
      mem = memory;
      transport.negotiate(0n);
      q = transport.setupQueue(0, memory, {
        size: 16,
        desc: env.region.base,
        driver: env.region.base + 256,
        device: env.region.base + 512,
      });
      heap = env.region.base + 0x10000;
      transport.driverOk();
    },
    read(n) {
      const addr = heap;
      heap += (n + 15) & ~15;
      return new Promise((resolve) => {
        q!.add([], [{ addr, len: n }], () => resolve(mem!.slice(addr, n).slice()));
        q!.publish();
        t!.notify(0);
      });
    },
    interrupt() {
      t!.takeInterrupt();
      for (let done = q!.reap(); done !== undefined; done = q!.reap()) done();
    },
  };
}
