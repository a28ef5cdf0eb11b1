// One guest + one disk per mode, all over the same image (a MemoryDisk on one SharedArrayBuffer,
// so the vhost worker sees the very same bytes), each exposing the same `read` and the same
// counters: exits (trapped register accesses), interrupts the guest took (handler runs), and
// bytes the VMM's own code copied between guest memory and its buffers.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { type DiskSpec, describeDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import {
  type AccessKind,
  createGuestMemory,
  type GuestMemory,
  type GuestMemoryMap,
} from "@virtio-ts/memory";
import { MmioVersion } from "@virtio-ts/spec";
import {
  InThreadMmio,
  InterruptLatch,
  MmioDevice,
  MmioDriverTransport,
  type SharedDoorbell,
} from "@virtio-ts/transport";
import { blkDescription, type VhostBlkArgs, VhostDevice } from "@virtio-ts/vhost";
import { AtaPioDevice, AtaPioDriver } from "./ata.js";
import { LegacyBlkDriver } from "./legacy-blk.js";

import { AssignableDisk, PassthroughDriver, type PassthroughFunction } from "./passthrough.js";

/** Bytes per request. */
export const BLOCK = 4096;
/** Size of the shared disk image. */
export const DISK_BYTES = 16 << 20;
/** Guest RAM of every rig. */
export const GUEST_RAM = 0x400000;
/** Guest-physical base of the DMA buffer region (slab) in every rig. */
export const BUFFERS = 0x100000;
/** DMA buffer slots (enough for queue depth 32 plus headers). */
export const SLOTS = 96;

/**
 * A disk image every mode reads: block `b` holds `b` as a little-endian u32 in its first 4 bytes
 * and a pattern after, so a read is checked by its first word.
 */
export function makeImage(bytes = DISK_BYTES): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(bytes);
  const u8 = new Uint8Array(sab);
  const v = new DataView(sab);
  for (let b = 0; b < bytes / BLOCK; b++) {
    v.setUint32(b * BLOCK, b, true);
    for (let i = 4; i < BLOCK; i += 64) u8[b * BLOCK + i] = (b * 31 + i) & 0xff;
  }
  return sab;
}

/** Counters of one rig since its last reset. */
export interface Counters {
  /** Trapped register accesses (guest → VMM exits), by the register file's own counters. */
  readonly exits: number;
  /** Exits by register name. */
  readonly byRegister: Readonly<Record<string, number>>;
  /** Interrupt handler runs in the guest. */
  readonly interrupts: number;
  /**
   * Bytes the VMM thread's code copied between guest memory and its own buffers (data register
   * traffic, request headers, status bytes); zero-copy views handed to the back-end not counted.
   */
  readonly vmmBytes: number;
}

/** One guest + disk in one mode. */
export interface Rig {
  /** Mode label. */
  readonly name: string;
  /** Read `length` bytes at `sector` through this mode's whole stack. */
  read(sector: number, length: number): Promise<Uint8Array>;
  /** Counters since the last {@link Rig.resetCounters}. */
  counters(): Counters;
  /** Zero the counters. */
  resetCounters(): void;
  /** Release workers and handles. */
  close(): Promise<void>;
}

/**
 * A {@link GuestMemory} that forwards to another and counts the bytes copied through its
 * accessors (`read`, `write`, `fill`, scalar reads and writes). Views (`slice`, `sg`,
 * `dataView`, `u16View`, `u32View`) are zero-copy and counted apart in `mappedBytes`.
 */
export class CountingMemory implements GuestMemory {
  /** The memory behind. */
  readonly inner: GuestMemory;
  /** Bytes copied through accessors. */
  copied = 0;
  /** Bytes of views handed out. */
  mappedBytes = 0;

  /** @param inner - the memory to count */
  constructor(inner: GuestMemory) {
    this.inner = inner;
  }
  /** {@inheritDoc GuestMemory.shared} */
  get shared(): boolean {
    return this.inner.shared;
  }
  /** {@inheritDoc GuestMemory.check} */
  check(addr: number, len: number, access?: AccessKind): boolean {
    return this.inner.check(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.readU8} */
  readU8(addr: number): number {
    this.copied += 1;
    return this.inner.readU8(addr);
  }
  /** {@inheritDoc GuestMemory.readU16} */
  readU16(addr: number): number {
    this.copied += 2;
    return this.inner.readU16(addr);
  }
  /** {@inheritDoc GuestMemory.readU32} */
  readU32(addr: number): number {
    this.copied += 4;
    return this.inner.readU32(addr);
  }
  /** {@inheritDoc GuestMemory.readU64} */
  readU64(addr: number): bigint {
    this.copied += 8;
    return this.inner.readU64(addr);
  }
  /** {@inheritDoc GuestMemory.writeU8} */
  writeU8(addr: number, value: number): void {
    this.copied += 1;
    this.inner.writeU8(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU16} */
  writeU16(addr: number, value: number): void {
    this.copied += 2;
    this.inner.writeU16(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU32} */
  writeU32(addr: number, value: number): void {
    this.copied += 4;
    this.inner.writeU32(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU64} */
  writeU64(addr: number, value: bigint): void {
    this.copied += 8;
    this.inner.writeU64(addr, value);
  }
  /** {@inheritDoc GuestMemory.read} */
  read(addr: number, dst: Uint8Array): void {
    this.copied += dst.length;
    this.inner.read(addr, dst);
  }
  /** {@inheritDoc GuestMemory.write} */
  write(addr: number, src: Uint8Array): void {
    this.copied += src.length;
    this.inner.write(addr, src);
  }
  /** {@inheritDoc GuestMemory.fill} */
  fill(addr: number, len: number, byte: number): void {
    this.copied += len;
    this.inner.fill(addr, len, byte);
  }
  /** {@inheritDoc GuestMemory.slice} */
  slice(addr: number, len: number, access?: AccessKind): Uint8Array {
    this.mappedBytes += len;
    return this.inner.slice(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.dataView} */
  dataView(addr: number, len: number, access?: AccessKind): DataView {
    this.mappedBytes += len;
    return this.inner.dataView(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.u16View} */
  u16View(addr: number, count: number, access?: AccessKind): Uint16Array {
    this.mappedBytes += 2 * count;
    return this.inner.u16View(addr, count, access);
  }
  /** {@inheritDoc GuestMemory.u32View} */
  u32View(addr: number, count: number, access?: AccessKind): Uint32Array {
    this.mappedBytes += 4 * count;
    return this.inner.u32View(addr, count, access);
  }
  /** {@inheritDoc GuestMemory.sg} */
  sg(addr: number, len: number, out?: Uint8Array[], access?: AccessKind): Uint8Array[] {
    this.mappedBytes += len;
    return this.inner.sg(addr, len, out, access);
  }
}

/** Mode 1: the ATA-PIO-like controller, every register access trapped. */
export function ataRig(image: SharedArrayBuffer): Rig {
  const disk = new MemoryDisk(new Uint8Array(image));
  const irq = new InterruptLatch();
  const dev = new AtaPioDevice(disk, { interrupt: irq.raise });
  const driver = new AtaPioDriver({
    read: (o, s) => dev.read(o, s),
    write: (o, s, v) => dev.write(o, s, v),
  });
  irq.handler = () => driver.onInterrupt();
  let irq0 = 0;
  return {
    name: "1 full emulation (ATA PIO)",
    read: (sector, length) => driver.read(sector, length / 512),
    counters: () => ({
      exits: dev.exits,
      byRegister: dev.exitCounts(),
      interrupts: irq.taken - irq0,
      vmmBytes: dev.bytesCopied,
    }),
    resetCounters: () => {
      dev.resetCounters();
      irq0 = irq.taken;
    },
    close: async () => {},
  };
}

/** What {@link virtioRig} built, for tests that look inside. */
export interface VirtioRig extends Rig {
  /** The register file. */
  readonly mmio: MmioDevice;
  /** The device model. */
  readonly model: BlkDevice;
  /** The counting view of guest memory the device uses. */
  readonly deviceMemory: CountingMemory;
}

/**
 * Mode 2: virtio-blk over virtio-mmio, in the VMM thread. Version 2 (modern): `BlkDriver`;
 * version 1 (legacy, QueuePFN): {@link LegacyBlkDriver}.
 */
export function virtioRig(image: SharedArrayBuffer, version: MmioVersion): VirtioRig {
  const disk = new MemoryDisk(new Uint8Array(image));
  const memory = createGuestMemory({ size: GUEST_RAM });
  const deviceMemory = new CountingMemory(memory);
  const model = new BlkDevice(disk, { queueSize: 256 });
  const vm = new InThreadMmio(model, { memory: deviceMemory, version });
  const { device: mmio, transport, line: irq } = vm;
  const slab = new SlabAllocator(BUFFERS, BLOCK, SLOTS);
  let read: (sector: number, length: number) => Promise<Uint8Array>;
  if (version === MmioVersion.LEGACY) {
    const d = new LegacyBlkDriver(transport, memory, slab, { ringBase: 0x10000, queueSize: 128 });
    irq.handler = () => d.onInterrupt();
    read = (s, l) => d.read(s, l);
  } else {
    const d = new BlkDriver(transport, memory, slab, { ringBase: 0x10000, queueSize: 128 });
    irq.handler = () => d.onInterrupt();
    read = (s, l) => d.read(s, l);
  }
  let irq0 = 0;
  return {
    name: version === MmioVersion.LEGACY ? "2 virtio-mmio v1 (legacy)" : "2 virtio-mmio v2",
    mmio,
    model,
    deviceMemory,
    read,
    counters: () => ({
      exits: mmio.exits,
      byRegister: mmio.exitCounts(),
      interrupts: irq.taken - irq0,
      vmmBytes: deviceMemory.copied,
    }),
    resetCounters: () => {
      mmio.resetCounters();
      deviceMemory.copied = 0;
      deviceMemory.mappedBytes = 0;
      irq0 = irq.taken;
    },
    close: async () => {},
  };
}

/** Where the vhost worker's built JavaScript lives (defaults: next to `@virtio-ts/vhost`). */
export interface VhostWorkerFiles {
  /** `vhost-worker.js`. */
  readonly script: URL;
  /** `blk.js` (exports `createBlkModel`). */
  readonly blkModule: URL;
  /** `@virtio-ts/backend-disk/node`'s built entry (exports `openDisk`), which the worker imports. */
  readonly backendDisk: URL;
}

/**
 * A virtio-blk {@link VhostDevice} over `image`: its worker opens the image itself through
 * backend-disk's built module and serves the queue there.
 * @param image - the shared disk image
 * @param files - where the worker's JavaScript is (needed when running from TypeScript sources)
 * @param call - the call doorbell (default: a new one the device owns)
 */
export function vhostBlkDevice(
  image: SharedArrayBuffer,
  files?: VhostWorkerFiles,
  call?: SharedDoorbell,
): VhostDevice {
  const disk: DiskSpec = { kind: "memory", buffer: image };
  const args: VhostBlkArgs = {
    // The worker opens the disk itself, through backend-disk's built module.
    backend: {
      module: String(files?.backendDisk ?? import.meta.resolve("@virtio-ts/backend-disk/node")),
      export: "openDisk",
      args: disk,
    },
    disk: describeDisk(disk),
    device: { queueSize: 256 },
  };
  return new VhostDevice({
    description: blkDescription(args),
    ...(call === undefined ? {} : { call }),
    worker: {
      module: files?.blkModule ?? new URL("./blk.js", import.meta.resolve("@virtio-ts/vhost")),
      export: "createBlkModel",
      args,
    },
    ...(files === undefined ? {} : { script: files.script }),
  });
}

/**
 * Mode 3: the same virtio-blk device with its data plane in a vhost worker (kick and call
 * through Atomics doorbells). The guest's interrupt handler waits on the call doorbell.
 * @param image - the shared disk image
 * @param files - where the worker's JavaScript is (needed when running from TypeScript sources)
 */
export async function vhostRig(image: SharedArrayBuffer, files?: VhostWorkerFiles): Promise<Rig> {
  const dev = vhostBlkDevice(image, files);
  const memory: GuestMemoryMap = createGuestMemory({ size: GUEST_RAM });
  const mmio = new MmioDevice(dev, { memory, interrupt: () => dev.call.ring() });
  const driver = new BlkDriver(
    new MmioDriverTransport({
      read: (o, s) => mmio.read(o, s),
      write: (o, s, v) => mmio.write(o, s, v),
    }),
    memory,
    new SlabAllocator(BUFFERS, BLOCK, SLOTS),
    { ringBase: 0x10000, queueSize: 128 },
  );
  let running = true;
  let taken = 0;
  const pump = (async () => {
    while (running) {
      if (await dev.call.wait()) {
        dev.call.take();
        if (!running) break;
        taken++;
        driver.onInterrupt();
      }
    }
  })();
  await dev.settled();
  let irq0 = 0;
  return {
    name: "3 vhost worker",
    read: (s, l) => driver.read(s, l),
    counters: () => ({
      exits: mmio.exits,
      byRegister: mmio.exitCounts(),
      interrupts: taken - irq0,
      // The VMM thread never touches the data path (its VhostDevice has no queue code); the
      // worker's BlkDevice copies what mode 2's does.
      vmmBytes: 0,
    }),
    resetCounters: () => {
      mmio.resetCounters();
      irq0 = taken;
    },
    close: async () => {
      running = false;
      dev.call.ring();
      await pump;
      await dev.close();
    },
  };
}

/** What {@link passthroughRig} built, for tests. */
export interface PassthroughRig extends Rig {
  /** The assignable disk (already owned by the guest). */
  readonly disk: AssignableDisk;
  /** The guest's handle. */
  readonly fn: PassthroughFunction;
  /** The guest's driver. */
  readonly driver: PassthroughDriver;
  /** Guest memory. */
  readonly memory: GuestMemoryMap;
}

/** The guest's DMA window: its buffer slab only, IOVA 0 → guest-physical {@link BUFFERS}. */
export const PASSTHROUGH_WINDOW = {
  iova: 0,
  gpa: BUFFERS,
  size: BLOCK * SLOTS,
  access: "rw",
} as const;

/**
 * Mode 4: the guest driver owns an {@link AssignableDisk} directly, confined to a DMA window over
 * its buffer slab. No register file, no VMM code on the data path.
 */
export function passthroughRig(image: SharedArrayBuffer): PassthroughRig {
  const disk = new AssignableDisk(new MemoryDisk(new Uint8Array(image)));
  const memory = createGuestMemory({ size: GUEST_RAM });
  const irq = new InterruptLatch();
  const fn = disk.attach("guest0", memory, [PASSTHROUGH_WINDOW], irq.raise);
  const driver = new PassthroughDriver(
    fn,
    memory,
    new SlabAllocator(BUFFERS, BLOCK, SLOTS),
    BUFFERS,
  );
  irq.handler = () => driver.onInterrupt();
  let irq0 = 0;
  return {
    name: "4 pass-through",
    disk,
    fn,
    driver,
    memory,
    read: (s, l) => driver.read(s, l),
    counters: () => ({ exits: 0, byRegister: {}, interrupts: irq.taken - irq0, vmmBytes: 0 }),
    resetCounters: () => {
      irq0 = irq.taken;
    },
    close: async () => disk.detach(),
  };
}
