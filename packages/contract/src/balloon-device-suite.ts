/**
 * "any virtio-balloon device": checks a third-party memory balloon {@link DeviceModel} (VIRTIO
 * 1.3 §5.5) through our transport, raw driver queues the suite fills itself, and a recording
 * {@link BalloonHost} that hears what the device tells its host.
 * @module
 */
import type { BalloonGuestStats, BalloonHost } from "@virtio-ts/devices";
import {
  BalloonConfig,
  BalloonFeature,
  BalloonQueue,
  BalloonStatTag,
  balloonQueueIndex,
  DeviceId,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { noThrow, QueueRig } from "./queue-rig.js";
import { macrotask } from "./wait.js";

/**
 * The host side the suite gives a balloon under test: it records every range the device reports
 * through {@link BalloonHost} and the statistics it passes on.
 */
export class RecordingBalloonHost implements BalloonHost {
  /** Inflated ranges, as [guest address, bytes]. */
  readonly inflatedRanges: [number, number][] = [];
  /** Deflated ranges. */
  readonly deflatedRanges: [number, number][] = [];
  /** Reported ranges. */
  readonly reportedRanges: [number, number][] = [];
  /** Copies of the statistics the device passed on, in order. */
  readonly statsSeen: BalloonGuestStats[] = [];
  /** Values of `actual` the device passed on. */
  readonly actuals: number[] = [];

  /** Record an inflated range. */
  inflated(gpa: number, bytes: number): void {
    this.inflatedRanges.push([gpa, bytes]);
  }
  /** Record a deflated range. */
  deflated(gpa: number, bytes: number): void {
    this.deflatedRanges.push([gpa, bytes]);
  }
  /** Record a reported range. */
  reported(gpa: number, bytes: number): void {
    this.reportedRanges.push([gpa, bytes]);
  }
  /** Record a copy of the statistics. */
  stats(s: Readonly<BalloonGuestStats>): void {
    this.statsSeen.push({ ...s });
  }
  /** Record `actual`. */
  actual(pages: number): void {
    this.actuals.push(pages);
  }
}

/** What the suite asks the adapter's factory for. */
export interface BalloonDeviceSetup {
  /** Bytes of guest RAM from address 0 the balloon may take pages from. */
  readonly ram: number;
  /** Where the device tells its host what happens. */
  readonly host: BalloonHost;
}

/** A balloon under test and the host controls the suite uses. */
export interface BalloonDeviceHandle {
  /** The device model. */
  readonly model: DeviceModel;
  /** Set `num_pages` (the device sends a configuration change notification once live). */
  setTarget(pages: number): void;
  /** Ask the driver for statistics: use the stats buffer the device holds. @returns whether one was used */
  requestStats(): boolean;
}

/**
 * How the "any virtio-balloon device" suite reaches a third-party memory balloon.
 *
 * Implementer contract: `create` returns a fresh, never activated device with device ID 5 over
 * `setup.ram` bytes of RAM at guest address 0, telling `setup.host` about every inflated,
 * deflated and reported range and every statistics buffer it reads (as a `BalloonGuestStats`).
 * Queues are numbered densely over the negotiated optional queues, as Linux does
 * (`balloonQueueIndex`), unless `queueNumbering` says "fixed". The device offers STATS_VQ;
 * PAGE_REPORTING and PAGE_POISON are checked when offered.
 */
export interface BalloonDeviceAdapter {
  /** A fresh balloon. */
  create(setup: BalloonDeviceSetup): BalloonDeviceHandle | Promise<BalloonDeviceHandle>;
  /** The device's queue numbering (default "dense"). */
  readonly queueNumbering?: "dense" | "fixed";
  /** Optional: resolves when the model has no work in flight. */
  whenIdle?(model: DeviceModel): Promise<void>;
}

/** The rig's guest memory is 8 MiB; balloon pages come from its top 2 MiB, far from the rings. */
const RAM = 0x800000;
const PAGE0 = 0x600000 / 4096;
const STATS = featureMask(BalloonFeature.STATS_VQ);
const REPORTING = featureMask(BalloonFeature.PAGE_REPORTING);
const POISON = featureMask(BalloonFeature.PAGE_POISON);
const KNOWN = [
  BalloonFeature.MUST_TELL_HOST,
  BalloonFeature.STATS_VQ,
  BalloonFeature.DEFLATE_ON_OOM,
  BalloonFeature.PAGE_REPORTING,
].reduce((m, b) => m | featureMask(b), 0n);

interface Balloon {
  readonly rig: QueueRig;
  readonly handle: BalloonDeviceHandle;
  readonly host: RecordingBalloonHost;
  /** Queue index of each balloon queue in this negotiation. */
  readonly index: (q: BalloonQueue) => number | undefined;
}

async function make(
  a: BalloonDeviceAdapter,
  kind: ContractTransport,
  accept: bigint = KNOWN,
  beforeOk?: (rig: QueueRig) => void,
): Promise<Balloon> {
  const host = new RecordingBalloonHost();
  const handle = await a.create({ ram: RAM, host });
  const model = handle.model;
  if (model.deviceId !== DeviceId.BALLOON) {
    throw new ContractViolation("the model's deviceId (§5.5.1)", DeviceId.BALLOON, model.deviceId);
  }
  const fixed = a.queueNumbering === "fixed";
  const rig = new QueueRig(model, kind, a.whenIdle?.bind(a));
  const index = (q: BalloonQueue) => balloonQueueIndex(q, rig.features, fixed);
  rig.init(
    (offered) => offered & accept,
    (f) =>
      [BalloonQueue.INFLATE, BalloonQueue.DEFLATE, BalloonQueue.STATS, BalloonQueue.REPORTING]
        .map((q) => balloonQueueIndex(q, f, fixed))
        .filter((i): i is number => i !== undefined),
    { driverOk: beforeOk === undefined },
  );
  if (beforeOk !== undefined) {
    beforeOk(rig);
    rig.transport.driverOk();
  }
  return { rig, handle, host, index };
}

/** A PFN array as device-readable bytes. */
function pfnArray(pfns: readonly number[]): Uint8Array {
  const b = new Uint8Array(4 * pfns.length);
  const v = new DataView(b.buffer);
  pfns.forEach((p, i) => {
    v.setUint32(4 * i, p, true);
  });
  return b;
}

/** A stats buffer of [tag, value] entries (§5.5.6.3, 10 bytes each, packed). */
function statsArray(entries: readonly [number, number][]): Uint8Array {
  const b = new Uint8Array(10 * entries.length);
  const v = new DataView(b.buffer);
  entries.forEach(([tag, val], i) => {
    v.setUint16(10 * i, tag, true);
    v.setBigUint64(10 * i + 2, BigInt(val), true);
  });
  return b;
}

/** The 4 KiB pages the ranges cover, sorted. */
function pagesOf(ranges: readonly [number, number][]): number[] {
  const out: number[] = [];
  for (const [gpa, bytes] of ranges) {
    for (let a = gpa; a < gpa + bytes; a += 4096) out.push(a / 4096);
  }
  return out.sort((x, y) => x - y);
}

function queueOf(b: Balloon, q: BalloonQueue, name: string): number {
  const i = b.index(q);
  if (i === undefined)
    throw new ContractViolation(`the ${name} queue (§5.5.2)`, "present", "absent");
  return i;
}

/** Inflate `pfns` and wait for the buffer to be used. */
async function inflate(b: Balloon, pfns: readonly number[], what: string): Promise<void> {
  const qi = queueOf(b, BalloonQueue.INFLATE, "inflate");
  const p = noThrow(what, () => b.rig.submit(qi, [pfnArray(pfns)]));
  await b.rig.wait([p], what);
}

const checks: ContractCheck<BalloonDeviceAdapter>[] = [
  {
    name: "shows the host's target in num_pages and sends a configuration change notification",
    spec: "§5.5.4, §5.5.6, §2.5",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport);
      expectEqual(
        "num_pages before the host sets a target",
        b.rig.transport.readConfig((c) => c.u32(BalloonConfig.NUM_PAGES)),
        0,
      );
      b.handle.setTarget(123);
      for (let i = 0; i < 4 && !b.rig.configInterrupt; i++) await macrotask();
      expectThat(
        "a configuration change notification after the target changed",
        b.rig.configInterrupt,
        "pending",
        "none",
      );
      expectEqual(
        "num_pages after setTarget(123)",
        b.rig.transport.readConfig((c) => c.u32(BalloonConfig.NUM_PAGES)),
        123,
      );
    },
  },
  {
    name: "keeps the value the driver writes to actual",
    spec: "§5.5.4, §5.5.6.1",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport);
      b.rig.transport.writeConfig(BalloonConfig.ACTUAL, 4, 77);
      expectEqual(
        "actual after the driver wrote 77",
        b.rig.transport.readConfig((c) => c.u32(BalloonConfig.ACTUAL)),
        77,
      );
    },
  },
  {
    name: "acknowledges inflate and deflate requests by using the buffer and tells the host those 4 KiB pages",
    spec: "§5.5.6",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport);
      const pfns = [PAGE0, PAGE0 + 1, PAGE0 + 2, PAGE0 + 7, PAGE0 + 300];
      await inflate(b, pfns, "an inflate request");
      expectEqual(
        "the pages the host heard inflated",
        pagesOf(b.host.inflatedRanges).join(","),
        pfns.join(","),
      );
      const qi = queueOf(b, BalloonQueue.DEFLATE, "deflate");
      const back = [PAGE0 + 1, PAGE0 + 300];
      const p = noThrow("a deflate request", () => b.rig.submit(qi, [pfnArray(back)]));
      await b.rig.wait([p], "a deflate request");
      expectEqual(
        "the pages the host heard deflated",
        pagesOf(b.host.deflatedRanges).join(","),
        back.join(","),
      );
    },
  },
  {
    name: "keeps serving after PFNs outside guest memory and tells the host none of them",
    spec: "§5.5.6, §2.1.2",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport);
      const qi = queueOf(b, BalloonQueue.INFLATE, "inflate");
      const bad = [RAM / 4096 + 5, 0xffffffff, 0x80000000];
      const p = noThrow("an inflate of PFNs outside memory", () =>
        b.rig.submit(qi, [pfnArray([...bad, PAGE0 + 9])]),
      );
      await b.rig.until(() => b.rig.isDone(p) || b.rig.needsReset);
      expectThat(
        "the request with PFNs outside memory",
        b.rig.isDone(p) || b.rig.needsReset,
        "used, or DEVICE_NEEDS_RESET",
        "neither",
      );
      const heard = pagesOf(b.host.inflatedRanges);
      expectThat(
        "pages outside guest memory the host heard of",
        heard.every((x) => x < RAM / 4096),
        "none",
        heard.filter((x) => x >= RAM / 4096).join(","),
      );
      if (!b.rig.needsReset) await inflate(b, [PAGE0 + 10], "a valid inflate afterwards");
    },
  },
  {
    name: "holds the stats buffer until the host asks for statistics, then uses it",
    spec: "§5.5.6.3",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport, KNOWN | STATS);
      const qi = queueOf(b, BalloonQueue.STATS, "stats");
      const p = noThrow("a stats buffer", () =>
        b.rig.submit(qi, [statsArray([[BalloonStatTag.MEMFREE, 4096]])]),
      );
      for (let i = 0; i < 20; i++) await b.rig.turn();
      expectThat(
        "the stats buffer before the host asked",
        !b.rig.isDone(p),
        "held by the device",
        "used at once",
      );
      expectThat("requestStats()", b.handle.requestStats(), true, false);
      await b.rig.wait([p], "the stats buffer after the host asked");
    },
  },
  {
    name: "reads statistics in any order and ignores unknown tags",
    spec: "§5.5.6.3.2",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport, KNOWN | STATS);
      const qi = queueOf(b, BalloonQueue.STATS, "stats");
      noThrow("a stats buffer", () =>
        b.rig.submit(qi, [
          statsArray([
            [0x7777, 1],
            [BalloonStatTag.MEMTOT, 8 << 20],
            [0x8001, 2],
            [BalloonStatTag.MEMFREE, 3 << 20],
            [BalloonStatTag.SWAP_IN, 5],
          ]),
        ]),
      );
      await b.rig.until(() => b.host.statsSeen.length > 0, 50);
      const s = b.host.statsSeen.at(-1);
      expectEqual(
        "memTotal, memFree and swapIn the host heard",
        s === undefined ? "nothing" : `${s.memTotal} ${s.memFree} ${s.swapIn}`,
        `${8 << 20} ${3 << 20} 5`,
      );
    },
  },
  {
    name: "acknowledges free page reports by using the buffer and tells the host the runs",
    spec: "§5.5.6.7",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport, KNOWN | REPORTING);
      if (!hasFeature(b.rig.features, BalloonFeature.PAGE_REPORTING)) return;
      const qi = queueOf(b, BalloonQueue.REPORTING, "reporting");
      const runs = [
        { addr: PAGE0 * 4096, len: 16384 },
        { addr: (PAGE0 + 64) * 4096, len: 4096 },
      ];
      const p = noThrow("a report", () => b.rig.submitSegments(qi, [], runs));
      await b.rig.wait([p], "a report");
      const total = b.host.reportedRanges.reduce((n, [, bytes]) => n + bytes, 0);
      expectEqual("bytes the host heard reported", total, 16384 + 4096);
    },
  },
  {
    name: "changes reported pages to nothing but poison_val under PAGE_POISON",
    spec: "§5.5.6.7.2, §5.5.6.6",
    async run({ adapter, transport }) {
      const probe = await make(adapter, transport, 0n);
      if ((probe.rig.offered & (REPORTING | POISON)) !== (REPORTING | POISON)) return;
      const b = await make(adapter, transport, KNOWN | REPORTING | POISON, (rig) =>
        rig.transport.writeConfig(BalloonConfig.POISON_VAL, 4, 0xaaaaaaaa),
      );
      const qi = queueOf(b, BalloonQueue.REPORTING, "reporting");
      const run = { addr: PAGE0 * 4096, len: 8192 };
      b.rig.memory.fill(run.addr, run.len, 0xaa);
      const p = noThrow("a report", () => b.rig.submitSegments(qi, [], [run]));
      const [c] = await b.rig.wait([p], "a report under PAGE_POISON");
      const other = c!.data.findIndex((x) => x !== 0xaa);
      expectThat(
        "bytes of the reported pages after the report",
        other < 0,
        "all 0xaa (poison_val)",
        `0x${(c!.data[other] ?? 0).toString(16)} at offset ${other}`,
      );
    },
  },
  {
    name: "uses no held stats buffer after a device reset",
    spec: "§2.4.1, §5.5.6.3",
    async run({ adapter, transport }) {
      const b = await make(adapter, transport, KNOWN | STATS);
      const qi = queueOf(b, BalloonQueue.STATS, "stats");
      noThrow("a stats buffer", () =>
        b.rig.submit(qi, [statsArray([[BalloonStatTag.MEMFREE, 1]])]),
      );
      await b.rig.turn();
      const used = b.rig.usedIdx(qi);
      b.rig.transport.reset();
      b.handle.requestStats();
      for (let i = 0; i < 5; i++) {
        await b.rig.idle();
        await macrotask();
      }
      expectEqual("used.idx of the stats queue after the reset", b.rig.usedIdx(qi), used);
    },
  },
];

/**
 * The "any virtio-balloon device" suite (VIRTIO 1.3 §5.5): the host's target in `num_pages`
 * with a configuration change notification, `actual` kept as written, inflate and deflate
 * buffers used and their 4 KiB pages passed to the host, PFNs outside memory survived, the stats
 * buffer held until the host asks, statistics in any order with unknown tags ignored, reports
 * used and passed on, reported pages left at `poison_val` under PAGE_POISON, and no stats
 * buffer used after a reset.
 */
export const balloonDeviceSuite: ContractSuite<BalloonDeviceAdapter> = {
  name: "any virtio-balloon device",
  checks,
};
