/** Our VsockDriver as a contract adapter, and deliberately broken variants of it. */
import { SlabAllocator, VsockDriver } from "@virtio-ts/drivers";
import type { GuestMemory } from "@virtio-ts/memory";
import { VsockHdr } from "@virtio-ts/spec";
import type { VsockDriverAdapter } from "../../src/index.js";

/**
 * Our VsockDriver, as a third party would wrap theirs, over `memory` as `wrap` rewrites it (a
 * broken driver is ours with a misreading or miswriting memory).
 */
export function vsockDriverAdapter(
  wrap: (m: GuestMemory) => GuestMemory = (m) => m,
): VsockDriverAdapter {
  let d: VsockDriver | undefined;
  const driver = (): VsockDriver => {
    if (d === undefined) throw new Error("not attached");
    return d;
  };
  return {
    attach(transport, memory, env) {
      d = new VsockDriver(
        transport,
        wrap(memory),
        new SlabAllocator(env.region.base + 0x80000, 4096, 256),
        { ringBase: env.region.base, queueSize: 64 },
      );
    },
    async exchange(port, data) {
      const c = await driver().connect(port);
      const written = c.write(data);
      c.end();
      await written;
      const parts: Uint8Array[] = [];
      for (let b = await c.read(); b !== null; b = await c.read()) parts.push(b);
      c.close();
      return Buffer.concat(parts);
    },
    interrupt: () => driver().onInterrupt(),
  };
}

/**
 * `memory` with `read` and `write` of a whole packet header passed through `fix`: 44 bytes at
 * a 16-aligned address (a packet slot's start; payload starts 44 bytes in, never aligned).
 */
function headers(
  memory: GuestMemory,
  fix: { read?: (h: DataView) => void; write?: (h: DataView) => void },
): GuestMemory {
  return new Proxy(memory, {
    get(t, p) {
      if (p === "read" && fix.read !== undefined) {
        return (addr: number, dst: Uint8Array) => {
          t.read(addr, dst);
          if (dst.length === VsockHdr.SIZE)
            fix.read!(new DataView(dst.buffer, dst.byteOffset, dst.length));
        };
      }
      if (p === "write" && fix.write !== undefined) {
        return (addr: number, src: Uint8Array) => {
          if (src.length === VsockHdr.SIZE && addr % 16 === 0) {
            const copy = src.slice();
            fix.write!(new DataView(copy.buffer));
            t.write(addr, copy);
          } else {
            t.write(addr, src);
          }
        };
      }
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
}

/** Sets the reserved upper 32 bits of src_cid in every packet (§5.10.6: zeroed). */
export const highSrcCid = vsockDriverAdapter((m) =>
  headers(m, { write: (h) => h.setUint32(VsockHdr.SRC_CID + 4, 1, true) }),
);

/** Reads every host buf_alloc as 1 MiB, so it sends past the host's credit (§5.10.6.3.1). */
export const creditBlindDriver = vsockDriverAdapter((m) =>
  headers(m, { read: (h) => h.setUint32(VsockHdr.BUF_ALLOC, 1 << 20, true) }),
);
