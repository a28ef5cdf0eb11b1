// Property test of the drivers' fast `add`: a call refused for its arguments changes nothing a
// device can see. Two twin rings run the same random workload (adds with 1–4 segments, publishes,
// a device popping everything and pushing in a random order, so the free lists get scrambled,
// reaps); one of them also gets refused `add` calls at random points (a bad segment anywhere in
// the list, segments adding up to 2^32 bytes, an undefined token). Both devices must pop the same
// chains (id, segments, directions), both drivers must reap the same tokens and lengths and report
// the same free count and indices, and every refused call must throw the error that names the
// argument. Split and packed rings, with and without indirect descriptors.
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  type DeviceQueue,
  NO_RING_FEATURES,
  PackedDeviceQueue,
  PackedDriverQueue,
  type RingFeatures,
  ringFeatures,
  type Segment,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";

const SIZE = 8;
const MEM = 0x20000;
const IND = 0x8000;
const DATA = 0x10000;

type Kind = "split" | "packed";

interface Twin {
  drv: SplitDriverQueue<number> | PackedDriverQueue<number>;
  dev: DeviceQueue;
}

function twin(kind: Kind, features: RingFeatures, indirect: boolean): Twin {
  const mem = createGuestMemory({ size: MEM, shared: false });
  const options = indirect ? { indirect: { addr: IND, maxEntries: 3 } } : {};
  if (kind === "split") {
    const layout = { size: SIZE, desc: 0x1000, driver: 0x1000 + 16 * SIZE, device: 0x2000 };
    return {
      drv: new SplitDriverQueue<number>(mem, layout, features, options),
      dev: new SplitDeviceQueue(mem, layout, features),
    };
  }
  const layout = { size: SIZE, desc: 0x1000, driver: 0x3000, device: 0x3004 };
  return {
    drv: new PackedDriverQueue<number>(mem, layout, features, options),
    dev: new PackedDeviceQueue(mem, layout, features),
  };
}

const segArb = fc.record({
  addr: fc.integer({ min: DATA, max: DATA + 0x8000 }),
  len: fc.integer({ min: 0, max: 300 }),
});

/** A value that makes a segment field invalid, and the field it goes in. */
const badFieldArb = fc.oneof(
  fc.record({
    field: fc.constant("len" as const),
    value: fc.constantFrom<unknown>(-1, 0.5, 2 ** 32, "8", 8n, Number.NaN, { valueOf: () => 8 }),
  }),
  fc.record({
    field: fc.constant("addr" as const),
    value: fc.constantFrom<unknown>(-1, 2 ** 53, 1.5, "4096", 4096n),
  }),
  fc.record({
    field: fc.constant("whole" as const),
    value: fc.constantFrom<unknown>(null, undefined, 7),
  }),
);

type Refusal =
  | {
      kind: "segment";
      r: Segment[];
      w: Segment[];
      at: number;
      bad: { field: "len" | "addr" | "whole"; value: unknown };
    }
  | { kind: "total" }
  | { kind: "token"; r: Segment[] };

const refusalArb: fc.Arbitrary<Refusal> = fc.oneof(
  fc.record({
    kind: fc.constant("segment" as const),
    r: fc.array(segArb, { maxLength: 2 }),
    w: fc.array(segArb, { maxLength: 2 }),
    at: fc.nat(),
    bad: badFieldArb,
  }),
  fc.record({ kind: fc.constant("total" as const) }),
  fc.record({
    kind: fc.constant("token" as const),
    r: fc.array(segArb, { minLength: 1, maxLength: 3 }),
  }),
);

type Op =
  | { kind: "add"; r: Segment[]; w: Segment[] }
  | { kind: "publish" }
  | { kind: "serve"; order: number[] }
  | { kind: "reap" }
  | { kind: "refuse"; refusal: Refusal };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc
      .tuple(fc.array(segArb, { maxLength: 2 }), fc.array(segArb, { maxLength: 2 }))
      .filter(([r, w]) => r.length + w.length > 0)
      .map(([r, w]) => ({ kind: "add" as const, r, w })),
    weight: 4,
  },
  { arbitrary: fc.constant({ kind: "publish" as const }), weight: 2 },
  {
    arbitrary: fc.array(fc.nat(), { minLength: SIZE, maxLength: SIZE }).map((order) => ({
      kind: "serve" as const,
      order,
    })),
    weight: 2,
  },
  { arbitrary: fc.constant({ kind: "reap" as const }), weight: 2 },
  { arbitrary: refusalArb.map((refusal) => ({ kind: "refuse" as const, refusal })), weight: 3 },
);

/** The arguments of a refused call and the error it must throw. */
function refusedCall(f: Refusal): {
  r: Segment[];
  w: Segment[];
  token: number | undefined;
  error: RegExp;
} {
  if (f.kind === "total") {
    return {
      r: [{ addr: DATA, len: 2 ** 31 }],
      w: [{ addr: DATA, len: 2 ** 31 }],
      token: 1,
      error: /add up to 4294967296 bytes/,
    };
  }
  if (f.kind === "token")
    return { r: f.r, w: [], token: undefined, error: /token must not be undefined/ };
  const all = [...f.r, ...f.w, { addr: DATA, len: 1 }];
  const at = f.at % all.length;
  const bad: unknown =
    f.bad.field === "whole" ? f.bad.value : { ...all[at]!, [f.bad.field]: f.bad.value };
  const segs = all.map((s, i) => (i === at ? bad : s)) as Segment[];
  const nr = f.r.length;
  const name = at < nr ? `readable\\[${at}\\]` : `writable\\[${at - nr}\\]`;
  const field =
    f.bad.field === "whole" ? " must be a \\{ addr, len \\} object" : `\\.${f.bad.field} must be`;
  return { r: segs.slice(0, nr), w: segs.slice(nr), token: 1, error: new RegExp(name + field) };
}

interface Popped {
  head: number;
  segs: [number, number, boolean][];
}

function popAll(dev: DeviceQueue): Popped[] {
  const chain = new DescriptorChain(SIZE);
  const out: Popped[] = [];
  while (dev.pop(chain)) {
    const segs: [number, number, boolean][] = [];
    for (let i = 0; i < chain.count; i++) {
      segs.push([chain.addrs[i]!, chain.lens[i]!, i >= chain.readableCount]);
    }
    out.push({ head: chain.head, segs });
  }
  return out;
}

function run(kind: Kind, features: RingFeatures, indirect: boolean, ops: Op[]): void {
  const a = twin(kind, features, indirect); // gets the refused calls too
  const b = twin(kind, features, indirect);
  const inFlight: Popped[] = []; // popped by both devices, not yet pushed
  let token = 0;
  for (const op of ops) {
    switch (op.kind) {
      case "add": {
        const t = token++;
        expect(a.drv.add(op.r, op.w, t)).toBe(b.drv.add(op.r, op.w, t));
        break;
      }
      case "publish":
        a.drv.publish();
        b.drv.publish();
        break;
      case "serve": {
        const pa = popAll(a.dev);
        expect(pa).toEqual(popAll(b.dev));
        inFlight.push(...pa);
        // Push in a random order, so the drivers' free lists are scrambled.
        const order = inFlight
          .map((_, i) => i)
          .sort((x, y) => op.order[x % SIZE]! - op.order[y % SIZE]!);
        for (const i of order) {
          const c = inFlight[i]!;
          const writable = c.segs.filter((s) => s[2]).reduce((n, s) => n + s[1], 0);
          a.dev.push(c.head, writable);
          b.dev.push(c.head, writable);
        }
        inFlight.length = 0;
        break;
      }
      case "reap":
        for (;;) {
          const ta = a.drv.reap();
          expect(ta).toBe(b.drv.reap());
          expect(a.drv.lastLen).toBe(b.drv.lastLen);
          if (ta === undefined) break;
        }
        break;
      case "refuse": {
        const call = refusedCall(op.refusal);
        expect(() => a.drv.add(call.r, call.w, call.token as number)).toThrow(call.error);
        break;
      }
    }
    expect(a.drv.numFree).toBe(b.drv.numFree);
    expect(a.drv.getState()).toEqual(b.drv.getState());
  }
  // Whatever is still added or published reaches both devices alike.
  a.drv.publish();
  b.drv.publish();
  expect(popAll(a.dev)).toEqual(popAll(b.dev));
}

const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));

describe("a refused add changes nothing a device can see", () => {
  for (const kind of ["split", "packed"] as const) {
    for (const [name, features, indirect] of [
      ["direct descriptors", NO_RING_FEATURES, false],
      ["indirect descriptors negotiated", INDIRECT, true],
    ] as const) {
      it(`${kind} ring, ${name}: the twin without the refused calls pops, reaps and counts the same`, () => {
        fc.assert(
          fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => {
            run(kind, features, indirect, ops);
          }),
          { numRuns: 150 },
        );
      });
    }
  }
});
