// The two demonstrations beside the numbers: pass-through's refusals, and migration of a
// paravirtualized device with requests in flight.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import {
  InterruptLatch,
  MmioDevice,
  MmioDriverTransport,
  restoreMmioDevice,
  saveMmioDevice,
} from "@virtio-ts/transport";
import { BLOCK, BUFFERS, GUEST_RAM, PASSTHROUGH_WINDOW, passthroughRig, SLOTS } from "./rigs.js";

/** What {@link passthroughRefusals} saw. */
export interface Refusals {
  /** The error of a second owner's attach. */
  readonly secondOwner: unknown;
  /** The error of a DMA just past the window. */
  readonly outsideWindow: unknown;
  /** Whether guest memory right past the window kept its bytes. */
  readonly memoryUntouched: boolean;
  /** A read inside the window after the refusals, checked by its first word. */
  readonly stillServes: boolean;
}

/**
 * Pass-through's rules, shown: a second owner (the VMM wanting to interpose) is refused with
 * PassthroughError "already-owned"; the guest asking the function to DMA one sector right past
 * its window is refused with "dma-outside-window" (cause: GuestMemoryError
 * "translation-fault") and nothing is written there; the function keeps serving.
 */
export async function passthroughRefusals(image: SharedArrayBuffer): Promise<Refusals> {
  const rig = passthroughRig(image);
  try {
    let secondOwner: unknown;
    try {
      rig.disk.attach("vmm-interposer", rig.memory, [PASSTHROUGH_WINDOW], () => {});
    } catch (e) {
      secondOwner = e;
    }
    const past = BUFFERS + PASSTHROUGH_WINDOW.size;
    rig.memory.fill(past, 512, 0xa5);
    const outsideWindow = await rig.driver.rawRead(8, PASSTHROUGH_WINDOW.size, 512);
    const after = rig.memory.slice(past, 512);
    const memoryUntouched = after.every((b) => b === 0xa5);
    const d = await rig.read(8 * 7, BLOCK);
    const stillServes = (d[0]! | (d[1]! << 8)) === 7;
    return { secondOwner, outsideWindow, memoryUntouched, stillServes };
  } finally {
    await rig.close();
  }
}

/** A disk whose completions can be held back (requests stay in flight until released). */
export class HeldDisk implements BlockBackend {
  /** The disk behind. */
  readonly inner: BlockBackend;
  /** Whether new requests are held. */
  hold = false;
  readonly #held: (() => void)[] = [];

  /** @param inner - the disk */
  constructor(inner: BlockBackend) {
    this.inner = inner;
  }
  /** @inheritdoc */
  get capacity(): number {
    return this.inner.capacity;
  }
  /** @inheritdoc */
  get blockSize(): number {
    return this.inner.blockSize;
  }
  /** @inheritdoc */
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  /** Requests held now. */
  get held(): number {
    return this.#held.length;
  }
  /** Let every held request run, and stop holding. */
  release(): void {
    this.hold = false;
    for (const go of this.#held.splice(0)) go();
  }
  #gate<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.hold) return fn();
    return new Promise<void>((r) => this.#held.push(r)).then(fn);
  }
  /** @inheritdoc */
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    return this.#gate(() => this.inner.read(sector, iovecs));
  }
  /** @inheritdoc */
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    return this.#gate(() => this.inner.write(sector, iovecs));
  }
  /** @inheritdoc */
  flush(): Promise<void> {
    return this.#gate(() => this.inner.flush());
  }
  /** @inheritdoc */
  discard(sector: number, count: number): Promise<void> {
    return this.#gate(() => this.inner.discard(sector, count));
  }
  /** @inheritdoc */
  writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    return this.#gate(() => this.inner.writeZeroes(sector, count, unmap));
  }
}

/** What {@link migrationScenario} counted. */
export interface MigrationResult {
  /** How the requests in the back-end were handled: completed before the save, or saved. */
  readonly mode: MigrationMode;
  /** Requests the guest submitted. */
  readonly submitted: number;
  /** Requests in the back-end when the device was suspended. */
  readonly inBackendAtStop: number;
  /** Requests published in the ring but not popped when the device was suspended. */
  readonly unpoppedAtStop: number;
  /** Completions the old device pushed while draining (the guest had not reaped them). */
  readonly drainedUnreaped: number;
  /** Chains saved in flight with the state (served again by the new device). */
  readonly inFlightInState: number;
  /** Size of the encoded state. */
  readonly stateBytes: number;
  /** Requests the old device served. */
  readonly oldServed: number;
  /** Requests the new device served. */
  readonly newServed: number;
  /** Requests whose promise settled exactly once with the right data. */
  readonly completedOnce: number;
  /** Requests settled more than once, never, or with wrong data. */
  readonly anomalies: number;
}

/**
 * How {@link migrationScenario} treats the requests in the back-end at the suspend: "drain"
 * lets them complete before the save; "in-flight" saves them with the state, abandons the old
 * device (their late results are dropped) and lets the new device serve them again.
 */
export type MigrationMode = "drain" | "in-flight";

/**
 * Migration of a paravirtualized device with requests in flight, with the library's suspend /
 * save / restore (`@virtio-ts/transport`): submit `a` reads (popped, held in the back-end),
 * suspend the device and pause the vCPU's interrupt, submit `b` more (in the ring, never
 * popped), then either drain the back-end before the save or save the held requests in flight;
 * encode the device, build a fresh MmioDevice + BlkDevice from the bytes over the same memory
 * and disk, resume, and count.
 * @param image - the disk image
 * @param a - requests in flight in the back-end at the stop
 * @param b - requests published after the stop
 * @param mode - drain the back-end, or move the requests in flight
 */
export async function migrationScenario(
  image: SharedArrayBuffer,
  a = 24,
  b = 8,
  mode: MigrationMode = "drain",
): Promise<MigrationResult> {
  const disk = new HeldDisk(new MemoryDisk(new Uint8Array(image)));
  const memory = createGuestMemory({ size: GUEST_RAM });
  const irq = new InterruptLatch();
  let paused = false;
  const line = (): void => {
    if (!paused) irq.raise();
  };
  const oldModel = new BlkDevice(disk, { queueSize: 256 });
  const oldMmio = new MmioDevice(oldModel, { memory, interrupt: line });
  let mmio: MmioDevice = oldMmio;
  const driver = new BlkDriver(
    new MmioDriverTransport({
      read: (o, s) => mmio.read(o, s),
      write: (o, s, v) => mmio.write(o, s, v),
    }),
    memory,
    new SlabAllocator(BUFFERS, BLOCK, SLOTS),
    { ringBase: 0x10000, queueSize: 128 },
  );
  irq.handler = () => driver.onInterrupt();
  const settled = new Uint32Array(a + b);
  let wrong = 0;
  const promises: Promise<void>[] = [];
  const submit = (i: number): void => {
    const block = ((i * 2654435761) % (image.byteLength / BLOCK)) >>> 0;
    promises.push(
      driver.read(block * 8, BLOCK).then((d) => {
        settled[i]!++;
        if ((d[0]! | (d[1]! << 8) | (d[2]! << 16) | (d[3]! << 24)) >>> 0 !== block) wrong++;
      }),
    );
  };
  disk.hold = true;
  for (let i = 0; i < a; i++) submit(i);
  // BlkDriver kicks once per task, from a microtask (its block plug): let it run.
  await Promise.resolve();
  const inBackendAtStop = disk.held;
  // Suspend: the vCPU stops taking interrupts, the device stops popping.
  paused = true;
  await oldMmio.core.suspend();
  for (let i = a; i < a + b; i++) submit(i);
  await Promise.resolve();
  const unpoppedAtStop = a + b - oldModel.stats.requests;
  if (mode === "drain") {
    // Drain: what is in the back-end completes into the used ring.
    disk.release();
    await oldModel.whenIdle();
  }
  const drainedUnreaped = driver.inFlight - unpoppedAtStop - oldMmio.core.inFlight;
  const inFlightInState = oldMmio.core.inFlight;
  const bytes = saveMmioDevice(oldMmio);
  const oldServed = oldModel.stats.ok;
  // The old device lets go: its back-end's late results are dropped (same disk: wait for it).
  disk.hold = false;
  const abandoned = oldMmio.core.abandon();
  disk.release();
  await abandoned;
  // Resume elsewhere: a fresh device built from the bytes, same memory and disk.
  const newModel = new BlkDevice(disk, { queueSize: 256 });
  paused = false;
  mmio = restoreMmioDevice(bytes, newModel, { memory, interrupt: line });
  await Promise.all(promises);
  await new Promise((r) => setImmediate(r));
  let once = 0;
  for (const n of settled) if (n === 1) once++;
  return {
    mode,
    submitted: a + b,
    inBackendAtStop,
    unpoppedAtStop,
    drainedUnreaped,
    inFlightInState,
    stateBytes: bytes.length,
    oldServed,
    newServed: newModel.stats.ok,
    completedOnce: once - wrong,
    anomalies: a + b - once + wrong,
  };
}
