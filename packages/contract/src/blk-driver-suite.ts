/**
 * "any virtio-blk driver": checks a third-party virtio-blk driver against our BlkDevice over
 * the kit's own RecordingDisk, behind a recording register bus (virtio-mmio or virtio-pci) and a model wrapper
 * that watches every request and can complete requests out of order.
 * @module
 */
import { BlkDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  BLK_SECTOR_SIZE,
  BlkConfig,
  BlkFeature,
  BlkOutHdr,
  BlkRequestType,
  hasFeature,
} from "@virtio-ts/spec";
import type { DeviceContext, DriverTransport } from "@virtio-ts/transport";
import type { DescriptorChain } from "@virtio-ts/virtqueue";
import { pattern, testImage } from "./blk-rig.js";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import type { DriverEnv } from "./driver-env.js";
import { type BusEvent, checkInit, joinFeatureWords } from "./init-order.js";
import { RecordingDisk } from "./recording-disk.js";
import { attachDriver, type DriverSide, driverSide } from "./rig-link.js";
import { TapModel } from "./tap.js";
import { MAX_TURNS, macrotask } from "./wait.js";

/** Guest memory and device access the suite gives a virtio-blk driver under test. */
export type BlkDriverEnv = DriverEnv;

/**
 * How the "any virtio-blk driver" suite reaches a third-party driver.
 *
 * Implementer contract: `attach` is called once per check with a fresh, reset device and
 * replaces any earlier attachment; it initialises the device (§3.1.1) through `transport`
 * (our virtio-mmio or virtio-pci driver transport, as the run's `env.transport` says; or
 * `env.bus` / `env.pci`) and returns when the driver is ready. `read`, `write` and `flush` start a
 * request and settle when the device has completed it, rejecting on a device error. The suite
 * runs the device and calls `interrupt` whenever the device's interrupt line is asserted, as a
 * guest interrupt handler would run; the driver must not wait for anything else.
 */
export interface BlkDriverAdapter {
  /** Initialise the device behind `transport` and get ready for requests. */
  attach(transport: DriverTransport, memory: GuestMemory, env: BlkDriverEnv): Promise<void> | void;
  /** Read `length` bytes (a multiple of 512) from `sector`. */
  read(sector: number, length: number): Promise<Uint8Array>;
  /** Write `data` (a multiple of 512 bytes) at `sector`. */
  write(sector: number, data: Uint8Array): Promise<void>;
  /** Flush the device's write cache (VIRTIO_BLK_T_FLUSH). */
  flush(): Promise<void>;
  /** The interrupt handler: take the interrupt and reap completions. */
  interrupt(): void;
}

/** Disk size used by the suite, in sectors. */
const SECTORS = 512;
const MEM_SIZE = 0x800000;
const REGION = { base: 0x100000, size: 0x700000 } as const;

/** A rule a driver broke, found by the recording bus or the request tap. */
interface Violation {
  readonly kind: "init" | "features" | "layout" | "limits" | "capacity";
  readonly spec: string;
  readonly detail: string;
}

/** The device side fault the NEEDS_RESET check injects. */
class InjectedFault extends VirtioError {
  readonly code = "contract-injected-fault";
}

interface RigOptions {
  readonly sizeMax?: number;
  readonly segMax?: number;
  readonly badSector?: number;
}

/** Our device, instrumented, with the driver under test attached. */
class DriverRig {
  readonly memory = createGuestMemory({ size: MEM_SIZE });
  readonly disk: RecordingDisk;
  readonly blk: BlkDevice;
  readonly tap: TapModel;
  readonly side: DriverSide;
  readonly events: BusEvent[] = [];
  readonly violations: Violation[] = [];
  readonly adapter: BlkDriverAdapter;
  /** Requests seen by type. */
  readonly seen = new Map<number, number>();
  readonly #driverFeatures = [0, 0, 0, 0];

  constructor(adapter: BlkDriverAdapter, kind: ContractTransport, o: RigOptions) {
    this.adapter = adapter;
    this.disk = new RecordingDisk(
      testImage(SECTORS),
      o.badSector === undefined ? {} : { badSector: o.badSector },
    );
    const backend = this.disk;
    this.blk = new BlkDevice(backend, {
      queueSize: 128,
      serial: "contract",
      sizeMax: o.sizeMax ?? 1 << 20,
    });
    this.tap = new TapModel(this.blk, {
      onPop: (_i, chain, ctx) => this.#inspect(chain, ctx),
      readConfig: (offset, size, v) =>
        offset === BlkConfig.SEG_MAX && size === 4 && o.segMax !== undefined ? o.segMax : v,
    });
    this.side = driverSide(this.tap, this.memory, kind, this.events, this.#driverFeatures);
  }

  get acceptedFeatures(): bigint {
    return joinFeatureWords(this.#driverFeatures);
  }

  #v(kind: Violation["kind"], spec: string, detail: string): void {
    this.violations.push({ kind, spec, detail });
  }

  /** Check one request chain the driver made available. */
  #inspect(chain: DescriptorChain, ctx: DeviceContext): void {
    const f = ctx.features;
    if (chain.readableBytes < BlkOutHdr.SIZE) {
      this.#v("layout", "§5.2.6", `header of ${chain.readableBytes} readable bytes (16 required)`);
      return;
    }
    if (chain.writableBytes < 1) {
      this.#v("layout", "§5.2.6", "no device-writable status byte at the end");
      return;
    }
    const h = new Uint8Array(BlkOutHdr.SIZE);
    chain.copyFromReadable(ctx.memory, 0, h);
    const dv = new DataView(h.buffer);
    const type = dv.getUint32(BlkOutHdr.TYPE, true);
    const sector = dv.getBigUint64(BlkOutHdr.SECTOR, true);
    this.seen.set(type, (this.seen.get(type) ?? 0) + 1);
    const readData = chain.readableBytes - BlkOutHdr.SIZE;
    const writeData = chain.writableBytes - 1;
    let data = 0;
    switch (type) {
      case BlkRequestType.IN:
        data = writeData;
        if (readData !== 0) this.#v("layout", "§5.2.6", `IN with ${readData} readable data bytes`);
        break;
      case BlkRequestType.OUT:
        data = readData;
        if (writeData !== 0)
          this.#v("layout", "§5.2.6", `OUT with ${writeData} writable data bytes`);
        break;
      case BlkRequestType.FLUSH:
        if (readData !== 0 || writeData !== 0) {
          this.#v("layout", "§5.2.6", `FLUSH with ${readData + writeData} data bytes`);
        }
        if (sector !== 0n) this.#v("layout", "§5.2.6.1", `FLUSH with sector ${sector} (must be 0)`);
        break;
      case BlkRequestType.GET_ID:
        break;
      default:
        this.#v("layout", "§5.2.6.1", `request type ${type}`);
    }
    if (type === BlkRequestType.IN || type === BlkRequestType.OUT) {
      if (data === 0 || data % BLK_SECTOR_SIZE !== 0) {
        this.#v(
          "layout",
          "§5.2.6.1",
          `${type === 0 ? "IN" : "OUT"} of ${data} bytes (a positive multiple of 512)`,
        );
      }
      const end = sector + BigInt(Math.ceil(data / BLK_SECTOR_SIZE));
      if (end > BigInt(SECTORS)) {
        this.#v(
          "capacity",
          "§5.2.6.1",
          `request of sectors [${sector}, ${end}) on a ${SECTORS}-sector disk`,
        );
      }
      // Data descriptors: everything but the descriptors holding the header and the status.
      let hdrDescs = 0;
      for (let covered = 0; covered < BlkOutHdr.SIZE; hdrDescs++) covered += chain.lens[hdrDescs]!;
      const statusAlone = chain.lens[chain.count - 1] === 1 ? 1 : 0;
      const segs = chain.count - hdrDescs - statusAlone;
      if (hasFeature(f, BlkFeature.SEG_MAX)) {
        const max = this.side.core.readConfig(BlkConfig.SEG_MAX, 4);
        if (segs > max) this.#v("limits", "§5.2.5", `${segs} data segments with seg_max ${max}`);
      }
      if (hasFeature(f, BlkFeature.SIZE_MAX)) {
        const max = this.side.core.readConfig(BlkConfig.SIZE_MAX, 4);
        for (let i = 0; i < chain.count; i++) {
          if (chain.lens[i]! > max) {
            this.#v("limits", "§5.2.5", `a ${chain.lens[i]}-byte segment with size_max ${max}`);
          }
        }
      }
    }
  }

  /** Run the device and the driver's interrupt handler until `p` settles (bounded). */
  async settle<T>(p: Promise<T>, what: string): Promise<T> {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < MAX_TURNS && !done; i++) {
      await this.blk.whenIdle();
      this.tap.release();
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
    if (!done)
      throw new ContractViolation(`${what}: the driver's promise`, "settled", "still pending");
    return tracked;
  }

  /** Fail with the first recorded violation of `kind`. */
  expectNone(kind: Violation["kind"]): void {
    const v = this.violations.find((x) => x.kind === kind);
    if (v !== undefined)
      throw new ContractViolation(`request rule (${v.spec})`, "no violation", v.detail, v.spec);
  }
}

async function rig(
  adapter: BlkDriverAdapter,
  kind: ContractTransport,
  o: RigOptions = {},
): Promise<DriverRig> {
  const r = new DriverRig(adapter, kind, o);
  await attachDriver(r.side, kind, REGION, (t, env) => adapter.attach(t, r.memory, env));
  return r;
}

async function rejects(p: Promise<unknown>, r: DriverRig, what: string): Promise<unknown> {
  try {
    await r.settle(p, what);
  } catch (e) {
    if (e instanceof ContractViolation && e.seen === "still pending") throw e;
    return e;
  }
  throw new ContractViolation(what, "a rejected promise", "resolved");
}

const checks: ContractCheck<BlkDriverAdapter>[] = [
  {
    name: "initialises the device in the order of §3.1.1",
    spec: "§3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      checkInit(r.events);
    },
  },
  {
    name: "accepts only features the device offered",
    spec: "§2.2.1, §3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const offered = r.side.core.offeredFeatures;
      const extra = r.acceptedFeatures & ~offered;
      expectEqual("accepted features the device did not offer", extra, 0n);
    },
  },
  {
    name: "reads the disk and writes data that reads back",
    spec: "§5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const got = await r.settle(adapter.read(10, 4096), "read");
      expectEqual("data read at sector 10", got, testImage(SECTORS).subarray(10 * 512, 18 * 512));
      const data = pattern(8192, 21);
      await r.settle(adapter.write(100, data), "write");
      expectEqual("disk contents after the write", r.disk.bytes.slice(100 * 512, 116 * 512), data);
      expectEqual("data read back", await r.settle(adapter.read(100, 8192), "read back"), data);
      await r.settle(adapter.flush(), "flush");
      expectThat(
        "a FLUSH request on the ring",
        (r.seen.get(BlkRequestType.FLUSH) ?? 0) > 0,
        "seen",
        "not seen",
      );
    },
  },
  {
    name: "lays out requests as a 16-byte header, the data and a final status byte",
    spec: "§5.2.6, §5.2.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.settle(
        Promise.all([
          adapter.read(0, 512),
          adapter.read(7, 12288),
          adapter.write(40, pattern(2048, 2)),
          adapter.flush(),
        ]),
        "requests",
      );
      expectThat("requests on the ring", r.seen.size > 0, "some", "none");
      r.expectNone("layout");
    },
  },
  {
    name: "respects seg_max and size_max",
    spec: "§5.2.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, { sizeMax: 1024, segMax: 3 });
      const data = pattern(65536, 5);
      await r.settle(adapter.write(64, data), "a 64 KiB write");
      const back = await r.settle(adapter.read(64, 65536), "a 64 KiB read");
      expectEqual("64 KiB read back through small segments", back, data);
      r.expectNone("limits");
    },
  },
  {
    name: "never submits a request beyond capacity",
    spec: "§5.2.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      let p: Promise<unknown>;
      try {
        p = adapter.read(SECTORS - 1, 1024);
      } catch (e) {
        p = Promise.reject(e);
      }
      await rejects(
        p,
        r,
        `a read of sectors [${SECTORS - 1}, ${SECTORS + 1}) on a ${SECTORS}-sector disk`,
      );
      try {
        p = adapter.write(SECTORS, pattern(512, 1));
      } catch (e) {
        p = Promise.reject(e);
      }
      await rejects(p, r, `a write at sector ${SECTORS} on a ${SECTORS}-sector disk`);
      r.expectNone("capacity");
    },
  },
  {
    name: "tolerates completions in any order",
    spec: "§5.2.6, §2.7.8",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.tap.hold = true;
      const img = testImage(SECTORS);
      const reads = Array.from({ length: 12 }, (_, i) => adapter.read(i * 16, 512 * (1 + (i % 4))));
      const got = await r.settle(Promise.all(reads), "12 reads completed newest first");
      got.forEach((g, i) => {
        expectEqual(
          `read ${i} (completed out of order)`,
          g,
          img.subarray(i * 16 * 512, (i * 16 + 1 + (i % 4)) * 512),
        );
      });
    },
  },
  {
    name: "surfaces IOERR as an error and keeps working",
    spec: "§5.2.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, { badSector: 33 });
      await rejects(adapter.read(32, 1024), r, "a read the device fails with IOERR");
      await rejects(adapter.write(33, pattern(512, 3)), r, "a write the device fails with IOERR");
      const ok = await r.settle(adapter.read(40, 512), "a later read");
      expectEqual("a later read", ok, testImage(SECTORS).subarray(40 * 512, 41 * 512));
    },
  },
  {
    name: "notices DEVICE_NEEDS_RESET instead of waiting forever",
    spec: "§2.1.2, §2.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.tap.hold = true;
      const inFlight = adapter.read(0, 512);
      await r.blk.whenIdle();
      r.side.core.fail(new InjectedFault("the contract suite injected a device failure"));
      await rejects(inFlight, r, "a request in flight when the device set DEVICE_NEEDS_RESET");
      let later: Promise<unknown>;
      try {
        later = adapter.read(8, 512);
      } catch (e) {
        later = Promise.reject(e);
      }
      await rejects(later, r, "a request after DEVICE_NEEDS_RESET");
    },
  },
];

/**
 * The "any virtio-blk driver" suite (VIRTIO 1.3 §3.1.1, §5.2): the initialisation order and
 * feature acceptance, request layout, seg_max / size_max and capacity limits, data integrity,
 * out-of-order completions, IOERR and DEVICE_NEEDS_RESET handling. The device is our `BlkDevice`
 * over the kit's own recording disk, behind a recording bus and a request tap, over virtio-mmio or virtio-pci
 * (INTx) as the run's transport says.
 *
 * If a driver skips FEATURES_OK, the recording bus sets it on the driver's behalf after
 * reporting it, so the other checks still measure the rest of the driver.
 */
export const blkDriverSuite: ContractSuite<BlkDriverAdapter> = {
  name: "any virtio-blk driver",
  checks,
};
