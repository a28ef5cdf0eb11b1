/**
 * Deliberately broken virtio-net device models, each breaking one rule, built around our
 * NetDevice (the suite must catch them, and only in the checks the tests name).
 */
import { NetDevice } from "@virtio-ts/devices";
import { featureMask, NetFeature, NetHdr } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import type { DescriptorChain, DeviceQueue } from "@virtio-ts/virtqueue";
import type { NetDeviceAdapter } from "../../src/index.js";

const MAC = Uint8Array.of(0x02, 0x00, 0x00, 0x00, 0x00, 0x42);

/** Hooks on one queue's pop and push. */
interface QueueHooks {
  pop?(chain: DescriptorChain, ctx: DeviceContext): void;
  push?(head: number, written: number, ctx: DeviceContext): number;
}

/** Our NetDevice seen through queue hooks, with some feature bits withdrawn. */
function hooked(inner: NetDevice, hooks: Record<number, QueueHooks>, withdraw = 0n): DeviceModel {
  const wrapQueue = (q: DeviceQueue, h: QueueHooks, ctx: DeviceContext): DeviceQueue =>
    new Proxy(q, {
      get(t, p) {
        if (p === "pop" && h.pop !== undefined) {
          return (c: DescriptorChain) => {
            const ok = t.pop(c);
            if (ok) h.pop!(c, ctx);
            return ok;
          };
        }
        if (p === "push" && h.push !== undefined) {
          return (head: number, written: number) => t.push(head, h.push!(head, written, ctx));
        }
        const v = Reflect.get(t, p);
        return typeof v === "function" ? v.bind(t) : v;
      },
    });
  return new Proxy(inner, {
    get(t, p) {
      if (p === "features") return t.features & ~withdraw;
      if (p === "activate") {
        return (ctx: DeviceContext) => {
          const wrapped = new Proxy(ctx, {
            get(c, k) {
              if (k === "queue") {
                return (i: number) => {
                  const q = c.queue(i);
                  return q === undefined || hooks[i] === undefined
                    ? q
                    : wrapQueue(q, hooks[i]!, wrapped);
                };
              }
              const v = Reflect.get(c, k);
              return typeof v === "function" ? v.bind(c) : v;
            },
          });
          t.activate(wrapped);
        };
      }
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
}

/** Passes the 12-byte header to the back-end in front of every frame (§5.1.6.2). */
export const forwardsHeader: NetDeviceAdapter = {
  mac: MAC,
  create: (backend) =>
    new NetDevice(
      {
        transmit: (f) => backend.transmit(Uint8Array.from([...new Uint8Array(NetHdr.SIZE), ...f])),
        attach: (s) => backend.attach(s),
        detach: () => backend.detach(),
      },
      { mac: MAC },
    ),
};

/** Without MRG_RXBUF, writes num_buffers 0 into every receive header (§5.1.6.4.1 wants 1). */
export const zeroNumBuffers: NetDeviceAdapter = {
  mac: MAC,
  create(backend) {
    const first = new Map<number, number>();
    return hooked(
      new NetDevice(backend, { mac: MAC }),
      {
        0: {
          pop: (c) => void first.set(c.head, c.addrs[c.readableCount]!),
          push(head, written, ctx) {
            if (written >= NetHdr.SIZE)
              ctx.memory.writeU16(first.get(head)! + NetHdr.NUM_BUFFERS, 0);
            return written;
          },
        },
      },
      featureMask(NetFeature.MRG_RXBUF),
    );
  },
};
