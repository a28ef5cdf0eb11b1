/**
 * "any virtio-blk device": checks a third-party virtio-blk {@link DeviceModel} through our
 * virtio-mmio or virtio-pci transport and a raw driver queue the suite fills itself.
 * @module
 */
import { BLK_ID_BYTES, BlkFeature, BlkRequestType, BlkStatus, hasFeature } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { BlkRig, type Completion, INDIRECT_BIT, PACKED_BIT, pattern } from "./blk-rig.js";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { macrotask } from "./wait.js";

/** What the suite asks the adapter's factory for. */
export interface BlkDeviceSetup {
  /**
   * The disk contents the device must serve (a private copy; its length, a multiple of 512,
   * is the capacity in bytes). The device may use it in place.
   */
  readonly image: Uint8Array;
  /** Whether the device must be read-only (serve the image, refuse writes). */
  readonly readOnly: boolean;
}

/**
 * How the "any virtio-blk device" suite reaches a third-party device model.
 *
 * Implementer contract: `create` returns a fresh, never activated {@link DeviceModel} (the
 * device core contract of `@virtio-ts/transport`) serving `setup.image`, every time it is
 * called (checks are independent). The optional hooks make failures easier to pin down and
 * the run faster; without them the suite observes the disk only through requests and waits a
 * bounded number of macrotasks for completions.
 */
export interface BlkDeviceAdapter<M extends DeviceModel = DeviceModel> {
  /** A fresh device model serving `setup.image`, read-only if `setup.readOnly`. */
  create(setup: BlkDeviceSetup): M | Promise<M>;
  /**
   * Optional: the back-end's current contents, `length` bytes from `sector` (to check that a
   * refused write changed nothing, without trusting the device's own reads).
   */
  readDisk?(model: M, sector: number, length: number): Uint8Array | Promise<Uint8Array>;
  /**
   * Optional: resolves when the model has no request in flight. Default: the model's own
   * `whenIdle` (an optional hook of the device contract, e.g. `BlkDevice.whenIdle`), if any.
   */
  whenIdle?(model: M): Promise<void>;
}

/** Disk size the suite uses, in sectors. */
const SECTORS = 256;
const { IN, OUT, FLUSH, GET_ID } = BlkRequestType;

async function rig(
  a: BlkDeviceAdapter,
  kind: ContractTransport,
  o: { readOnly?: boolean; ring?: bigint } = {},
): Promise<BlkRig> {
  const readOnly = o.readOnly ?? false;
  const r = await BlkRig.create(
    (image, ro) => a.create({ image, readOnly: ro }),
    a.whenIdle?.bind(a),
    SECTORS,
    readOnly,
    kind,
  );
  return r.init({ sectors: SECTORS, readOnly, ...(o.ring === undefined ? {} : { ring: o.ring }) });
}

function expectStatus(what: string, c: Completion, status: number): void {
  const name = (s: number) =>
    s === BlkStatus.OK
      ? "OK"
      : s === BlkStatus.IOERR
        ? "IOERR"
        : s === BlkStatus.UNSUPP
          ? "UNSUPP"
          : s === 0xff
            ? "status byte not written"
            : `status ${s}`;
  if (c.status !== status)
    throw new ContractViolation(`${what}: status`, name(status), name(c.status));
}

function image(r: BlkRig, sector: number, len: number): Uint8Array {
  return r.image.subarray(sector * 512, sector * 512 + len);
}

/** Split `total` bytes into lengths at odd boundaries, within `maxSegs` and `maxLen`. */
function oddSplit(total: number, sizes: readonly number[], maxSegs: number, maxLen: number) {
  const out: number[] = [];
  let left = total;
  for (const s of sizes) {
    if (left === 0) break;
    const n = Math.min(s, left, maxLen);
    out.push(n);
    left -= n;
  }
  while (left > 0) {
    const n = Math.min(left, maxLen);
    out.push(n);
    left -= n;
  }
  while (out.length > maxSegs && out.length > 1) {
    const last = out.pop()!;
    const prev = out.pop()!;
    if (prev + last > maxLen) return undefined;
    out.push(prev + last);
  }
  return out;
}

function slices(data: Uint8Array, lens: readonly number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  for (const n of lens) {
    out.push(data.subarray(off, off + n));
    off += n;
  }
  return out;
}

/** Limits the driver must respect (§5.2.5), as negotiated. */
function limits(r: BlkRig): { segs: number; len: number } {
  const c = r.config!;
  const segs = hasFeature(r.features, BlkFeature.SEG_MAX) ? c.segMax : r.queueSize - 3;
  const len = hasFeature(r.features, BlkFeature.SIZE_MAX) ? c.sizeMax : 0xffff_ffff;
  return { segs: Math.max(1, Math.min(segs, r.queueSize - 3)), len };
}

async function roundTrip(r: BlkRig, sector: number, seed: number, what: string): Promise<void> {
  const data = pattern(2048, seed);
  const { segs, len } = limits(r);
  const wl = oddSplit(2048, [700, 324, 1024], segs, len) ?? [2048];
  expectStatus(
    `${what}: OUT`,
    await r.request({ type: OUT, sector, out: slices(data, wl) }, `${what}: OUT`),
    BlkStatus.OK,
  );
  const rl = oddSplit(2048, [1, 1535, 512], segs, len) ?? [2048];
  const c = await r.request({ type: IN, sector, inLens: rl }, `${what}: IN`);
  expectStatus(`${what}: IN`, c, BlkStatus.OK);
  expectEqual(`${what}: data read back`, c.data, data);
}

/** Kick wrapper: an exception from the device is a violation of its own (never crash the VMM). */
function noThrow<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new ContractViolation(
      `${what}: the register access`,
      "no exception (a guest fault is handled inside the device)",
      e instanceof Error ? `${e.name}: ${e.message}` : String(e),
    );
  }
}

/** After a malformed request: either DEVICE_NEEDS_RESET, or the device still serves. */
async function stillServesOrNeedsReset(r: BlkRig, what: string): Promise<void> {
  for (let i = 0; i < 4; i++) await r.turn();
  if (r.needsReset) {
    expectThat(
      `${what}: configuration change notification with DEVICE_NEEDS_RESET (§2.1.2)`,
      r.configInterrupt,
      "InterruptStatus bit 1 set",
      "not set",
    );
    return;
  }
  const c = await r.request({ type: IN, sector: 5, inLens: [512] }, `${what}: next IN`);
  expectStatus(`${what}: a valid IN after it`, c, BlkStatus.OK);
  expectEqual(`${what}: data of a valid IN after it`, c.data, image(r, 5, 512));
}

const checks: ContractCheck<BlkDeviceAdapter>[] = [
  {
    name: "reports the disk size in capacity",
    spec: "§5.2.4",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      expectEqual("capacity (512-byte sectors)", r.config!.capacity, BigInt(SECTORS));
      const ro = await rig(adapter, transport, { readOnly: true });
      expectEqual("capacity of a read-only disk", ro.config!.capacity, BigInt(SECTORS));
    },
  },
  {
    name: "offers a configuration consistent with its feature bits",
    spec: "§5.2.3, §5.2.4, §5.2.5",
    async run({ adapter, transport }) {
      for (const readOnly of [false, true]) {
        const r = await rig(adapter, transport, { readOnly });
        const f = r.offered;
        const c = r.config!;
        const tag = readOnly ? "read-only disk: " : "";
        if (hasFeature(f, BlkFeature.SIZE_MAX)) {
          expectThat(`${tag}size_max with VIRTIO_BLK_F_SIZE_MAX`, c.sizeMax > 0, "> 0", c.sizeMax);
        }
        if (hasFeature(f, BlkFeature.SEG_MAX)) {
          expectThat(`${tag}seg_max with VIRTIO_BLK_F_SEG_MAX`, c.segMax > 0, "> 0", c.segMax);
        }
        if (hasFeature(f, BlkFeature.BLK_SIZE)) {
          const b = c.blkSize;
          expectThat(
            `${tag}blk_size with VIRTIO_BLK_F_BLK_SIZE`,
            b >= 512 && (b & (b - 1)) === 0,
            "a power of 2 of at least 512",
            b,
          );
        }
        if (hasFeature(f, BlkFeature.DISCARD)) {
          expectThat(`${tag}max_discard_sectors`, c.maxDiscardSectors > 0, "> 0", 0);
          expectThat(`${tag}max_discard_seg`, c.maxDiscardSeg > 0, "> 0", 0);
        }
        if (hasFeature(f, BlkFeature.WRITE_ZEROES)) {
          expectThat(`${tag}max_write_zeroes_sectors`, c.maxWriteZeroesSectors > 0, "> 0", 0);
          expectThat(`${tag}max_write_zeroes_seg`, c.maxWriteZeroesSeg > 0, "> 0", 0);
        }
      }
    },
  },
  {
    name: "offers VIRTIO_BLK_F_RO for a read-only disk and not for a writable one",
    spec: "§5.2.3, §5.2.5",
    async run({ adapter, transport }) {
      const ro = await rig(adapter, transport, { readOnly: true });
      expectThat(
        "VIRTIO_BLK_F_RO on a read-only disk",
        hasFeature(ro.offered, BlkFeature.RO),
        "offered",
        "not offered",
      );
      const rw = await rig(adapter, transport);
      expectThat(
        "VIRTIO_BLK_F_RO on a writable disk",
        !hasFeature(rw.offered, BlkFeature.RO),
        "not offered",
        "offered",
      );
    },
  },
  {
    name: "reads the disk contents with IN",
    spec: "§5.2.6",
    async run({ adapter, transport }) {
      for (const readOnly of [false, true]) {
        const r = await rig(adapter, transport, { readOnly });
        for (const [sector, n] of [
          [0, 512],
          [17, 4096],
          [SECTORS - 2, 1024],
        ] as const) {
          const c = await r.request({ type: IN, sector, inLens: [n] }, `IN at ${sector}`);
          expectStatus(`IN of ${n} bytes at sector ${sector}`, c, BlkStatus.OK);
          expectEqual(`data of IN at sector ${sector}`, c.data, image(r, sector, n));
        }
      }
    },
  },
  {
    name: "writes with OUT and reads the same data back",
    spec: "§5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await roundTrip(r, 40, 1, "round trip");
      await roundTrip(r, SECTORS - 4, 2, "round trip at the end of the disk");
      if (adapter.readDisk !== undefined) {
        const back = await adapter.readDisk(r.model, 40, 2048);
        expectEqual("back-end contents after OUT", back, pattern(2048, 1));
      }
    },
  },
  {
    name: "reports the used length as the bytes written including the status byte",
    spec: "§2.7.8, §5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const rd = await r.request({ type: IN, sector: 2, inLens: [1024, 1024] }, "IN");
      expectStatus("IN", rd, BlkStatus.OK);
      expectEqual("used length of a 2048-byte IN", rd.len, 2049);
      const wr = await r.request({ type: OUT, sector: 2, out: [pattern(1024, 3)] }, "OUT");
      expectStatus("OUT", wr, BlkStatus.OK);
      expectEqual("used length of an OUT", wr.len, 1);
      const id = await r.request({ type: GET_ID, inLens: [BLK_ID_BYTES] }, "GET_ID");
      if (id.status === BlkStatus.OK)
        expectEqual("used length of GET_ID", id.len, BLK_ID_BYTES + 1);
      if (hasFeature(r.features, BlkFeature.FLUSH)) {
        const fl = await r.request({ type: FLUSH }, "FLUSH");
        expectEqual("used length of FLUSH", fl.len, 1);
      }
    },
  },
  {
    name: "completes FLUSH with OK when VIRTIO_BLK_F_FLUSH is negotiated",
    spec: "§5.2.6, §5.2.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      if (!hasFeature(r.features, BlkFeature.FLUSH)) return;
      await roundTrip(r, 9, 4, "before FLUSH");
      expectStatus("FLUSH", await r.request({ type: FLUSH }, "FLUSH"), BlkStatus.OK);
    },
  },
  {
    name: "answers GET_ID with a NUL-padded device ID string of 20 bytes",
    spec: "§5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const a = await r.request({ type: GET_ID, inLens: [BLK_ID_BYTES], fill: 0xff }, "GET_ID");
      if (a.status === BlkStatus.UNSUPP) return; // GET_ID has no feature bit: UNSUPP is allowed.
      expectStatus("GET_ID", a, BlkStatus.OK);
      const b = await r.request({ type: GET_ID, inLens: [BLK_ID_BYTES], fill: 0xfe }, "GET_ID");
      // Two different canaries: a byte the device did not write differs between the runs.
      expectEqual("the 20 ID bytes (all written)", a.data, b.data);
      const nul = a.data.indexOf(0);
      if (nul >= 0) {
        expectThat(
          "padding after the ID string",
          a.data.subarray(nul).every((x) => x === 0),
          "NUL bytes",
          a.data,
        );
      }
    },
  },
  {
    name: "fails requests beyond capacity with IOERR",
    spec: "§5.2.6, §5.2.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      for (const [sector, n] of [
        [SECTORS, 512],
        [SECTORS - 1, 1024],
        [2 ** 40, 512],
      ] as const) {
        const c = await r.request({ type: IN, sector, inLens: [n] }, "IN past the end");
        expectStatus(
          `IN of ${n} bytes at sector ${sector} (capacity ${SECTORS})`,
          c,
          BlkStatus.IOERR,
        );
      }
      const w = await r.request({ type: OUT, sector: SECTORS, out: [pattern(512, 5)] }, "OUT");
      expectStatus(`OUT at sector ${SECTORS} (capacity ${SECTORS})`, w, BlkStatus.IOERR);
    },
  },
  {
    name: "fails OUT on a read-only device with IOERR and writes no data",
    spec: "§5.2.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, { readOnly: true });
      const w = await r.request({ type: OUT, sector: 3, out: [pattern(1024, 6)] }, "OUT");
      expectStatus("OUT on a read-only device", w, BlkStatus.IOERR);
      const back =
        adapter.readDisk !== undefined
          ? await adapter.readDisk(r.model, 3, 1024)
          : (await r.request({ type: IN, sector: 3, inLens: [1024] }, "IN")).data;
      expectEqual("disk contents after the refused OUT", back, image(r, 3, 1024));
    },
  },
  {
    name: "answers an unknown request type with UNSUPP",
    spec: "§5.2.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      for (const type of [0x7ead, 3, 0xffff_ffff]) {
        const c = await r.request({ type, inLens: [512] }, `type ${type}`);
        expectStatus(`request type ${type}`, c, BlkStatus.UNSUPP);
      }
    },
  },
  {
    name: "survives a header shorter than 16 bytes",
    spec: "§5.2.6.1, §2.1.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const p = noThrow("short header", () => r.submit({ type: IN, headerLen: 8, inLens: [512] }));
      await stillServesOrNeedsReset(r, "after an 8-byte header");
      if (!r.needsReset && r.isDone(p)) {
        const st = r.memory.readU8(p.statusAddr);
        expectThat("status of the short-header request", st !== BlkStatus.OK, "not OK", "OK");
      }
    },
  },
  {
    name: "survives a request without a status byte",
    spec: "§5.2.6.1, §2.1.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      noThrow("no status byte", () =>
        r.submit({ type: OUT, sector: 8, out: [pattern(512, 7)], status: false }),
      );
      noThrow("no writable byte at all", () => r.submit({ type: IN, sector: 8, status: false }));
      await stillServesOrNeedsReset(r, "after requests without a status byte");
    },
  },
  {
    name: "serves data split into many descriptors at any byte boundary",
    spec: "§2.6.4, §5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const { segs, len } = limits(r);
      const data = pattern(4096, 8);
      const wl = oddSplit(4096, [100, 412, 1024, 7, 505, 1536, 512], segs, len);
      const rl = oddSplit(4096, [1, 511, 2000, 3, 1581], segs, len);
      if (wl === undefined || rl === undefined) return; // seg_max × size_max below 4 KiB
      const w = await r.request(
        { type: OUT, sector: 60, splitHeader: true, out: slices(data, wl) },
        "OUT",
      );
      expectStatus(`OUT in ${wl.length} data descriptors with a split header`, w, BlkStatus.OK);
      const c = await r.request({ type: IN, sector: 60, splitHeader: true, inLens: rl }, "IN");
      expectStatus(`IN in ${rl.length} data descriptors`, c, BlkStatus.OK);
      expectEqual("data read back through odd descriptor boundaries", c.data, data);
    },
  },
  {
    name: "serves requests through indirect descriptor tables when VIRTIO_F_INDIRECT_DESC is offered",
    spec: "§2.7.5.3",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, { ring: INDIRECT_BIT });
      if ((r.offered & INDIRECT_BIT) === 0n) return;
      expectEqual(
        "VIRTIO_F_INDIRECT_DESC accepted at FEATURES_OK",
        r.features & INDIRECT_BIT,
        INDIRECT_BIT,
      );
      await roundTrip(r, 70, 9, "indirect");
      await roundTrip(r, 80, 10, "indirect, second request");
    },
  },
  {
    name: "serves requests on a packed virtqueue when VIRTIO_F_RING_PACKED is offered",
    spec: "§2.8",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, { ring: PACKED_BIT });
      if ((r.offered & PACKED_BIT) === 0n) return;
      expectEqual(
        "VIRTIO_F_RING_PACKED accepted at FEATURES_OK",
        r.features & PACKED_BIT,
        PACKED_BIT,
      );
      // More requests than the ring has slots, so the ring wraps (§2.8.1).
      for (let i = 0; i < r.queueSize + 8; i += 8) {
        const ps = Array.from({ length: 8 }, (_, k) =>
          r.submit({ type: IN, sector: (i + k) % SECTORS, inLens: [512] }),
        );
        const cs = await r.wait(ps, "packed IN");
        cs.forEach((c, k) => {
          expectStatus("packed IN", c, BlkStatus.OK);
          expectEqual(
            `packed IN data of sector ${(i + k) % SECTORS}`,
            c.data,
            image(r, (i + k) % SECTORS, 512),
          );
        });
      }
      await roundTrip(r, 90, 11, "packed");
    },
  },
  {
    name: "lands no completion after a reset with requests in flight",
    spec: "§2.4.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const ps = Array.from({ length: 8 }, (_, i) =>
        r.submit({ type: IN, sector: i * 8, inLens: [4096] }, false),
      );
      noThrow("kick", () => r.transport.notify(0));
      noThrow("reset", () => r.transport.reset());
      const used = r.usedIdx();
      const status = ps.map((p) => r.memory.readU8(p.statusAddr));
      const raised = r.irq.raised;
      // Let every back-end operation settle; nothing is reaped (the queue is gone).
      for (let i = 0; i < 20; i++) {
        await r.idle();
        await macrotask();
      }
      expectEqual("used.idx after the reset", r.usedIdx(), used);
      expectEqual(
        "status bytes after the reset",
        ps.map((p) => r.memory.readU8(p.statusAddr)).join(","),
        status.join(","),
      );
      expectEqual("interrupts raised after the reset", r.irq.raised, raised);
      r.init({ sectors: SECTORS });
      await roundTrip(r, 100, 12, "after re-initialisation");
    },
  },
  {
    name: "enters DEVICE_NEEDS_RESET with a configuration change notification on a descriptor loop",
    spec: "§2.1.2, §2.7.5.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      noThrow("descriptor loop", () => r.publishLoop());
      for (let i = 0; i < 4 && !r.needsReset; i++) {
        await r.idle();
        await macrotask();
      }
      expectThat("DEVICE_NEEDS_RESET in Status", r.needsReset, "set", "not set");
      expectThat(
        "configuration change bit in InterruptStatus",
        r.configInterrupt,
        "set",
        "not set",
      );
      expectThat("the interrupt line", r.irq.raised > 0, "raised", "not raised");
    },
  },
];

/**
 * The "any virtio-blk device" suite (VIRTIO 1.3 §5.2): configuration and feature consistency,
 * IN / OUT / FLUSH / GET_ID semantics and statuses, used lengths, malformed requests (short
 * header, no status byte, unknown type, descriptor loop), odd descriptor framing, indirect
 * tables and packed rings when offered, and reset with requests in flight. Run it with
 * {@link runContract} or, under vitest, `describeContract` from `@virtio-ts/contract/vitest`.
 *
 * Checks of an optional feature pass when the device does not offer it.
 */
export const blkDeviceSuite: ContractSuite<BlkDeviceAdapter> = {
  name: "any virtio-blk device",
  checks,
};
