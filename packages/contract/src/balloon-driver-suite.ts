/**
 * "any virtio-balloon driver": checks a third-party memory balloon driver (VIRTIO 1.3 §5.5)
 * against our BalloonDevice, behind a recording register bus and a model wrapper that watches
 * every buffer the driver makes available and can hold the device's acknowledgements back.
 * @module
 */
import { BalloonDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  BalloonFeature,
  BalloonQueue,
  BalloonStat,
  balloonQueueIndex,
  hasFeature,
} from "@virtio-ts/spec";
import type { ConfigWritableTransport } from "@virtio-ts/transport";
import type { Segment } from "@virtio-ts/virtqueue";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  expectEqual,
  expectThat,
} from "./contract.js";
import type { DriverEnv, GuestRange } from "./driver-env.js";
import { type BusEvent, checkInit, joinFeatureWords } from "./init-order.js";
import { attachDriver, type DriverSide, driverSide } from "./rig-link.js";
import { TapModel } from "./tap.js";
import { MAX_TURNS, macrotask } from "./wait.js";

/** Guest memory and device access the suite gives a balloon driver under test. */
export interface BalloonDriverEnv extends DriverEnv {
  /**
   * The guest's free pages: the driver's page allocator takes balloon pages from
   * `[base, base + size)` only (4096-aligned). `region` holds its rings and buffers.
   */
  readonly pages: GuestRange;
}

/**
 * How the "any virtio-balloon driver" suite reaches a third-party balloon driver.
 *
 * Implementer contract: `attach` is called once per check with a fresh, reset device; it
 * initialises the device (§3.1.1, §5.5.5) through `transport` and returns when the driver is
 * ready, with a page allocator over `env.pages`, supplying statistics if it supports the stats
 * queue. From then on the driver follows `num_pages` by itself: the suite runs the device and
 * calls `interrupt` whenever the device's interrupt line is asserted (configuration changes
 * included); the driver must not wait for anything else. `report` (optional) reports free
 * runs of `env.pages` and resolves when the driver may use them again.
 */
export interface BalloonDriverAdapter {
  /** Initialise the device behind `transport` and get ready. */
  attach(
    transport: ConfigWritableTransport,
    memory: GuestMemory,
    env: BalloonDriverEnv,
  ): Promise<void> | void;
  /** The interrupt handler. */
  interrupt(): void;
  /** Optional: report free page runs (inside `env.pages`); resolves when they are usable again. */
  report?(runs: readonly Segment[]): Promise<void>;
}

const MEM_SIZE = 0x1000000;
const REGION = { base: 0x100000, size: 0x100000 } as const;
/** 2048 pages the driver may balloon: 8 MiB to 16 MiB. */
const PAGES = { base: 0x800000, size: 0x800000 } as const;

class BalloonDriverRig {
  readonly memory = createGuestMemory({ size: MEM_SIZE });
  readonly inflated: number[] = [];
  readonly device: BalloonDevice;
  readonly tap: TapModel;
  readonly side: DriverSide;
  readonly events: BusEvent[] = [];
  readonly accepted = [0, 0];
  /** Chains per balloon queue (by `BalloonQueue`), as [readable bytes, readable segs, writable segs]. */
  readonly chains = new Map<number, [number, number, number][]>();
  /** PFNs each inflate / deflate buffer carried, in order, with whether it was a deflate. */
  readonly arrays: { deflate: boolean; pfns: number[] }[] = [];
  /** Writable segments of each report. */
  readonly reportSegs: Segment[][] = [];

  constructor(
    readonly adapter: BalloonDriverAdapter,
    readonly kind: ContractTransport,
  ) {
    this.device = new BalloonDevice({
      ram: MEM_SIZE,
      queueSize: 64,
      deflateOnOom: true,
      host: { inflated: (gpa) => this.inflated.push(gpa) },
    });
    this.tap = new TapModel(this.device, {
      onPop: (index, chain, ctx) => {
        const role = this.roleOf(index, ctx.features);
        if (role === undefined) return;
        let list = this.chains.get(role);
        if (list === undefined) {
          list = [];
          this.chains.set(role, list);
        }
        list.push([chain.readableBytes, chain.readableCount, chain.count - chain.readableCount]);
        if (role === BalloonQueue.INFLATE || role === BalloonQueue.DEFLATE) {
          const bytes = new Uint8Array(chain.readableBytes - (chain.readableBytes % 4));
          chain.copyFromReadable(ctx.memory, 0, bytes);
          const v = new DataView(bytes.buffer);
          const pfns: number[] = [];
          for (let i = 0; i < bytes.length; i += 4) pfns.push(v.getUint32(i, true));
          this.arrays.push({ deflate: role === BalloonQueue.DEFLATE, pfns });
        } else if (role === BalloonQueue.REPORTING) {
          const segs: Segment[] = [];
          for (let i = chain.readableCount; i < chain.count; i++) {
            segs.push({ addr: chain.addrs[i]!, len: chain.lens[i]! });
          }
          this.reportSegs.push(segs);
        }
      },
    });
    this.side = driverSide(this.tap, this.memory, kind, this.events, this.accepted);
  }

  roleOf(index: number, features: bigint): BalloonQueue | undefined {
    for (const q of [
      BalloonQueue.INFLATE,
      BalloonQueue.DEFLATE,
      BalloonQueue.STATS,
      BalloonQueue.REPORTING,
    ] as const) {
      if (balloonQueueIndex(q, features) === index) return q;
    }
    return undefined;
  }

  get features(): bigint {
    return this.side.core.features;
  }

  get acceptedFeatures(): bigint {
    return joinFeatureWords(this.accepted);
  }

  /** Run the device and the driver's interrupt handler for up to `turns` rounds or until `cond`. */
  async run(cond: () => boolean = () => false, turns = MAX_TURNS): Promise<boolean> {
    for (let i = 0; i < turns && !cond(); i++) {
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
    return cond();
  }

  /** Set the target and run until the balloon holds it (bounded). */
  async follow(pages: number, what: string): Promise<void> {
    this.device.setTarget(pages);
    const ok = await this.run(() => this.device.inflatedPages === pages);
    expectThat(`${what}: pages in the balloon`, ok, pages, this.device.inflatedPages);
    // A few more rounds so that a last `actual` write lands.
    await this.run(() => false, 10);
  }
}

async function rig(
  adapter: BalloonDriverAdapter,
  kind: ContractTransport,
): Promise<BalloonDriverRig> {
  const r = new BalloonDriverRig(adapter, kind);
  await attachDriver(r.side, kind, REGION, (t, env) =>
    adapter.attach(t, r.memory, { ...env, pages: PAGES }),
  );
  await r.run(() => false, 5);
  return r;
}

const checks: ContractCheck<BalloonDriverAdapter>[] = [
  {
    name: "initialises the device in the order of §3.1.1",
    spec: "§3.1.1, §5.5.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      checkInit(r.events);
    },
  },
  {
    name: "accepts only offered features",
    spec: "§2.2.1, §3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const extra = r.acceptedFeatures & ~r.side.offeredFeatures();
      expectEqual("features accepted but not offered", extra, 0n);
    },
  },
  {
    name: "inflates to the target and deflates to a lower one with its own free pages, never a page twice",
    spec: "§5.5.6, §5.5.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.follow(600, "target 600");
      const outside = r.inflated.filter(
        (gpa) => gpa < PAGES.base || gpa >= PAGES.base + PAGES.size,
      );
      expectEqual("inflated pages outside env.pages", outside.length, 0);
      await r.follow(100, "target 100");
      await r.follow(700, "target 700");
      const refused = [...r.side.core.faultCounts]
        .filter(([code]) => code.startsWith("balloon-pfn"))
        .map(([code, n]) => `${code} ×${n}`);
      expectEqual(
        "inflate / deflate PFNs the device refused (twice inflated, deflated while not in the balloon)",
        refused.join(", "),
        "",
      );
    },
  },
  {
    name: "updates actual after changing the number of pages in the balloon",
    spec: "§5.5.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.follow(300, "target 300");
      expectEqual("actual after inflating to 300", r.device.actual, 300);
      await r.follow(40, "target 40");
      expectEqual("actual after deflating to 40", r.device.actual, 40);
    },
  },
  {
    name: "sends inflate and deflate arrays as device-readable buffers of whole 32-bit PFNs",
    spec: "§5.5.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.follow(300, "target 300");
      await r.follow(0, "target 0");
      for (const role of [BalloonQueue.INFLATE, BalloonQueue.DEFLATE]) {
        const list = r.chains.get(role) ?? [];
        expectThat(`buffers on queue ${role}`, list.length > 0, "at least one", 0);
        for (const [bytes, , writable] of list) {
          expectEqual(`device-writable descriptors in a buffer of queue ${role}`, writable, 0);
          expectEqual(`bytes of a PFN array on queue ${role}, modulo 4`, bytes % 4, 0);
        }
      }
    },
  },
  {
    name: "does not deflate pages before the device has acknowledged their inflation",
    spec: "§5.5.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.tap.hold = true;
      r.device.setTarget(256);
      await r.run(() => r.arrays.length > 0, 50);
      r.device.setTarget(0);
      await r.run(() => false, 30);
      const early = r.arrays.filter((a) => a.deflate);
      expectEqual("deflate buffers sent while the inflate was not acknowledged", early.length, 0);
      r.tap.hold = false;
      r.tap.release();
      await r.run(() => r.device.inflatedPages === 0 && r.device.actual === 0);
      expectEqual("pages in the balloon once acknowledged and deflated", r.device.inflatedPages, 0);
    },
  },
  {
    name: "keeps one stats buffer of whole 10-byte entries available, with the same tags every time",
    spec: "§5.5.6.3.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      if (!hasFeature(r.features, BalloonFeature.STATS_VQ)) return;
      const got = () => r.device.stats.statsBuffers;
      await r.run(() => got() >= 1, 20);
      expectEqual("stats buffers after initialisation", got(), 1);
      const tags: string[] = [];
      for (let i = 0; i < 3; i++) {
        const before = got();
        expectThat("a held stats buffer to return", r.device.requestStats(), true, false);
        await r.run(() => got() > before, 50);
        expectEqual(`stats buffers after request ${i + 1}`, got(), before + 1);
        const s = r.device.guestStats;
        tags.push(
          s === undefined
            ? ""
            : Object.entries(s)
                .filter(
                  ([k, v]) => v !== undefined && k !== "seq" && k !== "at" && k !== "unknownTags",
                )
                .map(([k]) => k)
                .join(","),
        );
      }
      for (const [bytes] of r.chains.get(BalloonQueue.STATS) ?? []) {
        expectEqual("stats buffer bytes modulo 10", bytes % BalloonStat.SIZE, 0);
      }
      expectThat(
        "the statistics subset in each buffer",
        tags.every((t) => t === tags[0]),
        tags[0],
        tags.join(" | "),
      );
    },
  },
  {
    name: "does not use reported pages before the device has acknowledged the report",
    spec: "§5.5.6.7.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const report = adapter.report;
      if (report === undefined || !hasFeature(r.features, BalloonFeature.PAGE_REPORTING)) return;
      r.tap.hold = true;
      let done = false;
      const p = report.call(adapter, [{ addr: PAGES.base + PAGES.size - 0x10000, len: 0x10000 }]);
      p.then(
        () => {
          done = true;
        },
        () => {},
      );
      await r.run(() => r.reportSegs.length > 0, 50);
      await r.run(() => false, 10);
      expectThat(
        "the report before the device used its buffer",
        !done,
        "still pending",
        "resolved",
      );
      const segs = r.reportSegs[0] ?? [];
      expectThat(
        "the reported run as device-writable 4 KiB pages",
        segs.length > 0 && segs.every((s) => s.addr % 4096 === 0 && s.len % 4096 === 0),
        "aligned whole pages",
        JSON.stringify(segs),
      );
      r.tap.hold = false;
      r.tap.release();
      await r.run(() => done, 50);
      expectThat("the report after the device used its buffer", done, "resolved", "pending");
    },
  },
];

/**
 * The "any virtio-balloon driver" suite (VIRTIO 1.3 §5.5): §3.1.1 initialisation order, only
 * offered features accepted, the target followed both ways with the driver's own pages and no
 * page inflated twice or deflated unheld, `actual` updated, PFN arrays as readable whole
 * entries, no deflate before the inflate is acknowledged, one stats buffer of whole entries
 * with a fixed subset, and reported pages kept until acknowledged. The device is our
 * BalloonDevice (dense queue numbering, as Linux).
 */
export const balloonDriverSuite: ContractSuite<BalloonDriverAdapter> = {
  name: "any virtio-balloon driver",
  checks,
};
