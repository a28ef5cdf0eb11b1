// The device fuzz loop (fuzz-rig.ts) for BalloonDevice, on split and packed rings: a seeded
// hostile guest posts PFN arrays (mostly pages of the balloon's RAM, often any u32, odd lengths),
// stats buffers of any length, reports of any run, rewrites descriptors, scribbles on rings and
// buffers, resets queues and the device, while the host changes the target and asks for stats.
// After every operation: no exception escaped the host, NEEDS_RESET (if set) carries a typed
// fault, the host heard only whole pages of RAM, the device's count of inflated pages equals a
// model and never exceeds RAM; after random resets and at the end, a well-formed inflate is
// served and heard.
import { VirtioError } from "@virtio-ts/memory";
import { BalloonStatTag } from "@virtio-ts/spec";
import type { Segment } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { BalloonDevice } from "../src/balloon.js";
import { BASE_SEED, CLEAN, DATA, DATA_END, OPS, Rig } from "./fuzz-rig.js";

/** The balloon's RAM: the rig's data area (rings and the clean buffers stay outside it). */
const RAM_BASE = DATA;
const RAM_PAGES = (DATA_END - DATA) / 4096;

async function fuzzBalloon(packed: boolean, seed: number): Promise<Rig> {
  const heard = { inflated: 0, deflated: 0, reported: 0, outside: 0 };
  const inRam = (gpa: number, bytes: number) =>
    gpa % 4096 === 0 &&
    bytes > 0 &&
    bytes % 4096 === 0 &&
    gpa >= RAM_BASE &&
    gpa + bytes <= RAM_BASE + RAM_PAGES * 4096;
  const model = new BalloonDevice({
    ram: [{ base: RAM_BASE, size: RAM_PAGES * 4096 }],
    queueSize: 32,
    maxPfnsPerRequest: 512,
    host: {
      inflated: (g, b) => {
        heard.inflated += b / 4096;
        if (!inRam(g, b)) heard.outside++;
      },
      deflated: (g, b) => {
        heard.deflated += b / 4096;
        if (!inRam(g, b)) heard.outside++;
      },
      reported: (g, b) => {
        heard.reported += b / 4096;
        if (!inRam(g, b)) heard.outside++;
      },
    },
    timer: { now: () => 0, schedule: () => undefined, cancel: () => {} },
  });
  const rig = new Rig(`balloon ${packed ? "packed" : "split"}`, seed, model, packed, 4);
  const r = rig.rand;
  const u32 = () => (r(0x10000) * 0x10000 + r(0x10000)) >>> 0;
  const ramPfn = () => RAM_BASE / 4096 + r(RAM_PAGES);
  const pfnBuf = (n: number, odd: boolean): Segment => {
    const len = 4 * n + (odd ? 1 + r(3) : 0);
    const addr = rig.addr(len);
    for (let i = 0; i < n; i++) rig.mem.writeU32(addr + 4 * i, r(4) === 0 ? u32() : ramPfn());
    return { addr, len };
  };
  rig.init(false);
  const check = (): void => {
    rig.check(heard.outside === 0, "the host heard of a range outside the balloon's RAM");
    rig.check(model.inflatedPages <= RAM_PAGES, `${model.inflatedPages} pages inflated`);
    rig.check(
      model.inflatedPages === heard.inflated - heard.deflated,
      "inflated pages differ from what the host heard",
    );
  };
  const verify = (): void => {
    rig.init(false);
    const pfn = RAM_BASE / 4096 + RAM_PAGES - 1;
    if (model.isInflated(pfn)) return;
    rig.mem.writeU32(CLEAN, pfn);
    const before = heard.inflated;
    const t = rig.post(0, [{ addr: CLEAN, len: 4 }], []);
    rig.kick(0);
    const done: number[] = [];
    rig.reap(0, (tok) => done.push(tok));
    expect(done).toEqual([t]);
    expect(heard.inflated).toBe(before + 1);
    expect(model.isInflated(pfn)).toBe(true);
    rig.stats.verified++;
  };
  for (let i = 0; i < OPS; i++) {
    rig.op = i;
    rig.stats.ops++;
    const k = r(16);
    if (!rig.commonOp(k)) {
      const qi = r(4);
      switch (k) {
        case 6:
        case 7:
          rig.guest(() => rig.post(r(2), [pfnBuf(1 + r(8), r(8) === 0)], []));
          break;
        case 8:
          rig.guest(() => rig.post(qi, [pfnBuf(r(4), false)], rig.segs(r(2), 32)));
          break;
        case 9: {
          // A stats buffer: whole entries (known and unknown tags) or any length.
          const n = r(12);
          const len = r(6) === 0 ? rig.len(64) : 10 * n;
          const addr = rig.addr(len);
          for (let e = 0; e + 10 <= len; e += 10) {
            rig.mem.writeU16(addr + e, r(3) === 0 ? r(0x10000) : BalloonStatTag.MEMFREE);
          }
          rig.guest(() => rig.post(2, [{ addr, len }], []));
          break;
        }
        case 10: {
          // A report: aligned pages of RAM, or any run.
          const segs: Segment[] =
            r(2) === 0
              ? [{ addr: ramPfn() * 4096, len: 4096 * (1 + r(2)) }]
              : rig.segs(1 + r(2), 8192);
          rig.guest(() => rig.post(3, r(8) === 0 ? rig.segs(1, 16) : [], segs));
          break;
        }
        case 11:
          rig.guest(() => rig.kick(qi));
          break;
        case 12:
          model.setTarget(r(RAM_PAGES + 1));
          break;
        case 13:
          rig.host("requestStats", () => model.requestStats());
          break;
        case 14:
          if (r(40) === 0) verify();
          else rig.guest(() => rig.reap(qi));
          break;
        default:
          rig.guest(() => rig.reap(qi));
      }
    }
    rig.afterOp();
    check();
  }
  verify();
  console.log(`fuzz ${rig.name}: ${JSON.stringify({ ...rig.stats, model: model.stats, heard })}`);
  expect(model.stats.pagesInflated).toBeGreaterThan(0);
  expect(model.stats.malformed).toBeGreaterThan(0);
  return rig;
}

describe("fuzzing BalloonDevice with a hostile guest", () => {
  for (const packed of [false, true]) {
    const ring = packed ? "packed" : "split";
    it(`survives ${OPS.toLocaleString("en")} hostile operations on ${ring} rings, tells the host only pages of its RAM, and serves a well-formed inflate after every reset`, async () => {
      const seed = (BASE_SEED + (packed ? 1 : 0) * 7919 + 104729) >>> 0;
      console.log(`fuzz balloon ${ring}: seed ${seed} (replay with FUZZ_SEED=${BASE_SEED})`);
      const rig = await fuzzBalloon(packed, seed);
      expect(rig.stats.verified).toBeGreaterThan(0);
      expect(rig.stats.reaped).toBeGreaterThan(OPS / 50);
      expect(rig.stats.needsReset).toBeGreaterThan(0);
      expect(rig.stats.deviceResets).toBeGreaterThan(1);
      expect(rig.device.core.lastFault).toBeInstanceOf(VirtioError);
    }, 300_000);
  }
});
