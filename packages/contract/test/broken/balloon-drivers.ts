/** Deliberately broken balloon drivers, each breaking one rule. */
import { BalloonDriver } from "@virtio-ts/drivers";
import { BalloonConfig, BalloonFeature, BalloonQueue, balloonQueueIndex } from "@virtio-ts/spec";
import type { ConfigWritableTransport } from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import type { BalloonDriverAdapter, BalloonDriverEnv } from "../../src/index.js";

/** A free-page stack over `env.pages`. */
export function pagePool(env: BalloonDriverEnv) {
  const free: number[] = [];
  for (let a = env.pages.base + env.pages.size - 4096; a >= env.pages.base; a -= 4096) {
    free.push(a / 4096);
  }
  return { alloc: () => free.pop(), free: (pfn: number) => void free.push(pfn) };
}

/** `t` with some methods replaced; the others stay bound to it. */
function override(
  t: ConfigWritableTransport,
  with_: Partial<ConfigWritableTransport>,
): ConfigWritableTransport {
  return new Proxy(t, {
    get(target, key) {
      if (key in with_) return (with_ as Record<PropertyKey, unknown>)[key];
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** Our BalloonDriver behind `wrap`, with stats and reporting. */
export function balloonDriverAdapter(
  wrap: (t: ConfigWritableTransport) => ConfigWritableTransport = (t) => t,
  reportNow = false,
): BalloonDriverAdapter {
  let d: BalloonDriver | undefined;
  return {
    attach(transport, memory, env) {
      d = new BalloonDriver(wrap(transport), memory, {
        base: env.region.base,
        pages: pagePool(env),
        stats: () => ({ memFree: 1 << 20, memTotal: 16 << 20, available: 2 << 20 }),
      });
    },
    interrupt: () => void d!.onInterrupt(),
    report(runs: readonly Segment[]) {
      const p = d!.report(runs);
      // Broken: tells its caller the pages are usable before the device acknowledged them.
      return reportNow ? Promise.resolve() : p;
    },
  };
}

/** Never writes `actual` (§5.5.6.1: the driver MUST update it). */
export const noActual: BalloonDriverAdapter = balloonDriverAdapter((t) =>
  override(t, {
    writeConfig(offset, size, value) {
      if (offset !== BalloonConfig.ACTUAL) t.writeConfig(offset, size, value);
    },
  }),
);

/** Sends stats buffers 2 bytes longer than its 10-byte entries (§5.5.6.3.1). */
export const ragged: BalloonDriverAdapter = balloonDriverAdapter((t) =>
  override(t, {
    setupQueue<T>(...args: Parameters<ConfigWritableTransport["setupQueue"]>): DriverQueue<T> {
      const q = t.setupQueue<T>(...args);
      const f = t.features;
      if (
        (f & (1n << BigInt(BalloonFeature.STATS_VQ))) === 0n ||
        args[0] !== balloonQueueIndex(BalloonQueue.STATS, f)
      ) {
        return q;
      }
      return new Proxy(q, {
        get(target, key) {
          if (key === "add") {
            return (out: readonly Segment[], inn: readonly Segment[], token: T) =>
              target.add(
                out.map((s) => ({ addr: s.addr, len: s.len + 2 })),
                inn,
                token,
              );
          }
          const v = Reflect.get(target, key, target);
          return typeof v === "function" ? v.bind(target) : v;
        },
      });
    },
  }),
);

/** Resolves a report at once: the caller reuses pages the device may still discard (§5.5.6.7.1). */
export const eagerReport: BalloonDriverAdapter = balloonDriverAdapter((t) => t, true);
