/**
 * The raw driver side the "any virtio-blk device" suite drives a device model with: our device
 * side of virtio-mmio or virtio-pci over fresh guest memory, our driver transport for
 * initialisation, and a driver queue the rig fills itself, so it can send malformed requests
 * too (internal).
 * @module
 */
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  BlkConfig,
  BlkFeature,
  BlkOutHdr,
  DeviceId,
  Feature,
  featureMask,
  SplitAvail,
  SplitDesc,
  SplitDescFlags,
  SplitUsed,
} from "@virtio-ts/spec";
import type { DeviceModel, VirtioDeviceCore } from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import { type ContractTransport, ContractViolation } from "./contract.js";
import { linkModel, type RigDriverTransport, type RigLink } from "./rig-link.js";
import { MAX_TURNS, macrotask } from "./wait.js";

/** Device-specific bits the rig may accept: none of them changes the request format. */
const BLK_BITS = [
  BlkFeature.SIZE_MAX,
  BlkFeature.SEG_MAX,
  BlkFeature.GEOMETRY,
  BlkFeature.RO,
  BlkFeature.BLK_SIZE,
  BlkFeature.FLUSH,
  BlkFeature.TOPOLOGY,
  BlkFeature.DISCARD,
  BlkFeature.WRITE_ZEROES,
].reduce((m, b) => m | featureMask(b), 0n);

/** Memory map of a rig: rings low, indirect tables next, request buffers from HEAP up. */
const MEM_SIZE = 0x400000;
const RING = 0x10000;
const INDIRECT = 0x20000;
const INDIRECT_ENTRIES = 32;
const HEAP = 0x100000;

/** Options of {@link BlkRig.open}. */
export interface BlkRigOptions {
  /** Disk size in sectors. */
  readonly sectors: number;
  /** Whether the disk is read-only. */
  readonly readOnly?: boolean;
  /** Ring bits to accept when offered (INDIRECT_DESC, RING_PACKED…); default none. */
  readonly ring?: bigint;
  /** Queue size wanted (capped by QueueNumMax). Default 64. */
  readonly queueSize?: number;
  /** Device-specific bits to accept when offered (default: the virtio-blk bits the rig knows). */
  readonly accept?: bigint;
}

/** The shape of one request the rig builds. */
export interface RawRequest {
  /** `type` of the header. */
  readonly type: number;
  /** `sector` of the header. */
  readonly sector?: number;
  /** Readable header length (default 16); split in two descriptors if `splitHeader`. */
  readonly headerLen?: number;
  /** Put the header in two descriptors of 8 bytes. */
  readonly splitHeader?: boolean;
  /** Readable data, one descriptor per array. */
  readonly out?: readonly Uint8Array[];
  /** Writable data descriptor lengths. */
  readonly inLens?: readonly number[];
  /** Whether a one-byte writable status descriptor ends the chain (default true). */
  readonly status?: boolean;
  /** Byte the writable buffers are filled with before submission (default 0xa5). */
  readonly fill?: number;
}

/** A submitted request. */
export interface Pending {
  /** Rig-wide id. */
  readonly id: number;
  /** Guest address of the status byte (or -1). */
  readonly statusAddr: number;
  /** Writable data descriptors. */
  readonly inSegs: readonly Segment[];
}

/** A completed request. */
export interface Completion {
  /** Status byte after completion (0xff if the device did not write it: the rig's canary). */
  readonly status: number;
  /** Used length the device reported. */
  readonly len: number;
  /** The writable data, concatenated. */
  readonly data: Uint8Array;
}

/** Everything the rig found in the configuration space. */
export interface BlkConfigSnapshot {
  /** `capacity` in sectors. */
  readonly capacity: bigint;
  /** `size_max`. */
  readonly sizeMax: number;
  /** `seg_max`. */
  readonly segMax: number;
  /** `blk_size`. */
  readonly blkSize: number;
  /** `max_discard_sectors`. */
  readonly maxDiscardSectors: number;
  /** `max_discard_seg`. */
  readonly maxDiscardSeg: number;
  /** `max_write_zeroes_sectors`. */
  readonly maxWriteZeroesSectors: number;
  /** `max_write_zeroes_seg`. */
  readonly maxWriteZeroesSeg: number;
}

/** Disk image used by the suite: sector `s` byte `i` is `(s * 7 + i * 13 + 1) & 0xff`. */
export function testImage(sectors: number): Uint8Array {
  const b = new Uint8Array(sectors * 512);
  for (let s = 0; s < sectors; s++) {
    for (let i = 0; i < 512; i++) b[s * 512 + i] = (s * 7 + i * 13 + 1) & 0xff;
  }
  return b;
}

/** Deterministic pseudo-random bytes. */
export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Interrupt-line state the rig records from the device. */
export interface IrqLog {
  /** Times the device raised its interrupt line. */
  raised: number;
}

/** A device model under test, wired to a raw driver side. */
export class BlkRig {
  readonly memory: GuestMemory;
  readonly model: DeviceModel;
  /** The transport between the rig and the model. */
  readonly link: RigLink;
  /** The device core behind the transport. */
  readonly core: VirtioDeviceCore;
  readonly transport: RigDriverTransport;
  readonly irq: IrqLog;
  readonly image: Uint8Array;
  readonly idle: () => Promise<void>;
  offered = 0n;
  features = 0n;
  config: BlkConfigSnapshot | undefined;
  queue: DriverQueue<number> | undefined;
  queueSize = 0;
  #heap = HEAP;
  #nextId = 1;
  readonly #done = new Map<number, number>();

  private constructor(
    model: DeviceModel,
    image: Uint8Array,
    idle: () => Promise<void>,
    memory: GuestMemory,
    kind: ContractTransport,
  ) {
    this.memory = memory;
    this.model = model;
    this.image = image;
    this.idle = idle;
    const irq: IrqLog = { raised: 0 };
    this.irq = irq;
    this.link = linkModel(model, memory, kind, () => {
      irq.raised++;
    });
    this.core = this.link.core;
    this.transport = this.link.transport;
  }

  /**
   * Create the model with the adapter's factory and wire it; does not initialise it.
   * @throws ContractViolation if the model is not a block device
   */
  static async create(
    factory: (image: Uint8Array, readOnly: boolean) => DeviceModel | Promise<DeviceModel>,
    idle: ((model: DeviceModel) => Promise<void>) | undefined,
    sectors: number,
    readOnly: boolean,
    kind: ContractTransport,
  ): Promise<BlkRig> {
    const image = testImage(sectors);
    const model = await factory(image.slice(), readOnly);
    if (model.deviceId !== DeviceId.BLOCK) {
      throw new ContractViolation("the model's deviceId (§5.2.1)", DeviceId.BLOCK, model.deviceId);
    }
    return BlkRig.wrap(model, idle, kind, image);
  }

  /** Wire an existing model of any device type (no disk image). */
  static wrap(
    model: DeviceModel,
    idle: ((model: DeviceModel) => Promise<void>) | undefined,
    kind: ContractTransport,
    image: Uint8Array = new Uint8Array(0),
  ): BlkRig {
    // Without the adapter's hook, the model's own (optional in the device contract).
    const wait =
      idle === undefined ? () => model.whenIdle?.() ?? Promise.resolve() : () => idle(model);
    return new BlkRig(model, image, wait, createGuestMemory({ size: MEM_SIZE }), kind);
  }

  /** Negotiate (§3.1.1), read the configuration, set up queue 0 and set DRIVER_OK. */
  init(options: BlkRigOptions): this {
    const t = this.transport;
    this.#done.clear();
    this.features = t.negotiate((offered) => {
      this.offered = offered;
      return offered & ((options.accept ?? BLK_BITS) | (options.ring ?? 0n));
    });
    if (this.model.deviceId === DeviceId.BLOCK) this.#readBlkConfig();
    this.#finishInit(options, t.queueMaxSize(0));
    return this;
  }

  #readBlkConfig(): void {
    this.config = this.transport.readConfig((c) => ({
      capacity: c.u64(BlkConfig.CAPACITY),
      sizeMax: c.u32(BlkConfig.SIZE_MAX),
      segMax: c.u32(BlkConfig.SEG_MAX),
      blkSize: c.u32(BlkConfig.BLK_SIZE),
      maxDiscardSectors: c.u32(BlkConfig.MAX_DISCARD_SECTORS),
      maxDiscardSeg: c.u32(BlkConfig.MAX_DISCARD_SEG),
      maxWriteZeroesSectors: c.u32(BlkConfig.MAX_WRITE_ZEROES_SECTORS),
      maxWriteZeroesSeg: c.u32(BlkConfig.MAX_WRITE_ZEROES_SEG),
    }));
  }

  #finishInit(options: BlkRigOptions, max: number): void {
    const t = this.transport;
    if (max === 0) {
      throw new ContractViolation("the maximum size of queue 0 (§4.2.2, §4.1.4.3)", "> 0", 0);
    }
    let size = Math.min(options.queueSize ?? 64, max);
    // Split rings need a power of 2; round down.
    size = 2 ** Math.floor(Math.log2(size));
    this.queueSize = size;
    const avail = RING + size * SplitDesc.SIZE;
    const used = (avail + SplitAvail.RING + 2 * size + 2 + 3) & ~3;
    this.queue = t.setupQueue<number>(
      0,
      this.memory,
      { size, desc: RING, driver: avail, device: used },
      { indirect: { addr: INDIRECT, maxEntries: Math.min(INDIRECT_ENTRIES, size) } },
    );
    t.driverOk();
    this.#heap = HEAP;
  }

  /** Guest address of the used ring (split) of the current queue. */
  get usedAddr(): number {
    const avail = RING + this.queueSize * SplitDesc.SIZE;
    return (avail + SplitAvail.RING + 2 * this.queueSize + 2 + 3) & ~3;
  }

  /** Guest address of the available ring (split) of the current queue. */
  get availAddr(): number {
    return RING + this.queueSize * SplitDesc.SIZE;
  }

  /** Descriptor table (split) of the current queue. */
  get descAddr(): number {
    return RING;
  }

  /** Whether the device has set DEVICE_NEEDS_RESET. */
  get needsReset(): boolean {
    return this.link.needsReset();
  }

  /** Whether a configuration change interrupt is pending. */
  get configInterrupt(): boolean {
    return this.link.configInterrupt();
  }

  /** Allocate `n` bytes of request memory (16-aligned). */
  alloc(n: number): number {
    const a = this.#heap;
    this.#heap = (this.#heap + n + 15) & ~15;
    if (this.#heap > MEM_SIZE) throw new RangeError("the rig ran out of request memory");
    return a;
  }

  /**
   * Add and publish one chain of `readable` buffers (copied into guest memory) and writable
   * buffers of `writableLens` bytes filled with `fill`, and notify. The writable buffers are
   * `inSegs`; there is no status byte.
   */
  submitRaw(
    readable: readonly Uint8Array[],
    writableLens: readonly number[],
    fill: number,
  ): Pending & { readonly outSegs: readonly Segment[] } {
    const q = this.queue;
    if (q === undefined) throw new Error("rig not initialised");
    const outSegs: Segment[] = readable.map((d) => {
      const a = this.alloc(d.length);
      this.memory.write(a, d);
      return { addr: a, len: d.length };
    });
    const inSegs: Segment[] = writableLens.map((n) => {
      const a = this.alloc(n);
      this.memory.fill(a, n, fill);
      return { addr: a, len: n };
    });
    const id = this.#nextId++;
    if (!q.add(outSegs, inSegs, id)) throw new Error("the rig's queue is full");
    q.publish();
    this.transport.notify(0);
    return { id, statusAddr: -1, inSegs, outSegs };
  }

  /** Build, add and publish one request; notifies the device unless `kick` is false. */
  submit(r: RawRequest, kick = true): Pending {
    const q = this.queue;
    if (q === undefined) throw new Error("rig not initialised");
    const mem = this.memory;
    const fill = r.fill ?? 0xa5;
    const hlen = r.headerLen ?? BlkOutHdr.SIZE;
    const hdr = this.alloc(Math.max(hlen, BlkOutHdr.SIZE));
    mem.writeU32(hdr + BlkOutHdr.TYPE, r.type >>> 0);
    mem.writeU32(hdr + BlkOutHdr.IOPRIO, 0);
    mem.writeU64(hdr + BlkOutHdr.SECTOR, BigInt(r.sector ?? 0));
    const readable: Segment[] = r.splitHeader
      ? [
          { addr: hdr, len: 8 },
          { addr: hdr + 8, len: hlen - 8 },
        ]
      : [{ addr: hdr, len: hlen }];
    for (const d of r.out ?? []) {
      const a = this.alloc(d.length);
      mem.write(a, d);
      readable.push({ addr: a, len: d.length });
    }
    const writable: Segment[] = [];
    for (const n of r.inLens ?? []) {
      const a = this.alloc(n);
      mem.fill(a, n, fill);
      writable.push({ addr: a, len: n });
    }
    const inSegs = writable.slice();
    let statusAddr = -1;
    if (r.status ?? true) {
      statusAddr = this.alloc(1);
      mem.writeU8(statusAddr, 0xff);
      writable.push({ addr: statusAddr, len: 1 });
    }
    const id = this.#nextId++;
    if (!q.add(readable, writable, id)) throw new Error("the rig's queue is full");
    // Always kick when asked: the suite checks devices, not notification suppression.
    q.publish();
    if (kick) this.transport.notify(0);
    return { id, statusAddr, inSegs };
  }

  /** Let the device run one round: its idle hook, then a macrotask; then reap. */
  async turn(): Promise<void> {
    await this.idle();
    await macrotask();
    this.reap();
  }

  /** Reap every used buffer into the completion map. */
  reap(): void {
    const q = this.queue;
    if (q === undefined) return;
    for (let id = q.reap(); id !== undefined; id = q.reap()) this.#done.set(id, q.lastLen);
  }

  /**
   * Wait (bounded) until every request in `ps` is used.
   * @throws ContractViolation naming the silent requests
   */
  async wait(ps: readonly Pending[], what: string): Promise<Completion[]> {
    this.reap();
    for (let i = 0; i < MAX_TURNS && !ps.every((p) => this.#done.has(p.id)); i++) {
      await this.turn();
    }
    const missing = ps.filter((p) => !this.#done.has(p.id)).length;
    if (missing > 0) {
      throw new ContractViolation(
        `${what}: used buffers`,
        `${ps.length}`,
        `${ps.length - missing}`,
      );
    }
    return ps.map((p) => {
      const len = this.#done.get(p.id)!;
      let total = 0;
      for (const s of p.inSegs) total += s.len;
      const data = new Uint8Array(total);
      let off = 0;
      for (const s of p.inSegs) {
        this.memory.read(s.addr, data.subarray(off, off + s.len));
        off += s.len;
      }
      return {
        status: p.statusAddr < 0 ? -1 : this.memory.readU8(p.statusAddr),
        len,
        data,
      };
    });
  }

  /** Submit one request and wait for it. */
  async request(r: RawRequest, what: string): Promise<Completion> {
    const [c] = await this.wait([this.submit(r)], what);
    return c!;
  }

  /** Whether the request is used yet (after a reap). */
  isDone(p: Pending): boolean {
    return this.#done.has(p.id);
  }

  /**
   * Make descriptors 0 and 1 of the split table a loop (0 → 1 → 0), put head 0 in the next
   * available ring entry and publish it, bypassing the driver queue (§2.7.5.2: the driver MUST
   * NOT do this). Only valid on a fresh split queue.
   */
  publishLoop(): void {
    const mem = this.memory;
    const hdr = this.alloc(16);
    mem.writeU32(hdr, 0);
    mem.writeU64(hdr + 8, 0n);
    const st = this.alloc(512);
    const d = this.descAddr;
    const F = SplitDescFlags;
    mem.writeU64(d + SplitDesc.ADDR, BigInt(hdr));
    mem.writeU32(d + SplitDesc.LEN, 16);
    mem.writeU16(d + SplitDesc.FLAGS, F.NEXT);
    mem.writeU16(d + SplitDesc.NEXT, 1);
    mem.writeU64(d + 16 + SplitDesc.ADDR, BigInt(st));
    mem.writeU32(d + 16 + SplitDesc.LEN, 512);
    mem.writeU16(d + 16 + SplitDesc.FLAGS, F.NEXT | F.WRITE);
    mem.writeU16(d + 16 + SplitDesc.NEXT, 0);
    const a = this.availAddr;
    const idx = mem.readU16(a + SplitAvail.IDX);
    mem.writeU16(a + SplitAvail.RING + 2 * (idx % this.queueSize), 0);
    mem.writeU16(a + SplitAvail.IDX, (idx + 1) & 0xffff);
    this.transport.notify(0);
  }

  /** `used.idx` of the split ring as the device last wrote it. */
  usedIdx(): number {
    return this.memory.readU16(this.usedAddr + SplitUsed.IDX);
  }
}

/** Bit mask of VIRTIO_F_INDIRECT_DESC. */
export const INDIRECT_BIT: bigint = featureMask(Feature.RING_INDIRECT_DESC);
/** Bit mask of VIRTIO_F_RING_PACKED. */
export const PACKED_BIT: bigint = featureMask(Feature.RING_PACKED);
