/**
 * A device model and a driver in one thread over virtio-mmio, wired the way tests, the demo,
 * the benchmarks and the contract kit all need it: the model behind an `MmioDevice`, an
 * `MmioDriverTransport` calling its registers directly, and a latched interrupt line
 * ({@link InterruptLatch}) that runs the guest's handler once per batch of raises.
 * @module
 */
import type { DeviceModel } from "./device-model.js";
import { host } from "./host.js";
import { MmioDevice, type MmioDeviceOptions } from "./mmio-device.js";
import { MmioDriverTransport } from "./mmio-driver.js";

/**
 * When the guest's interrupt handler runs after the device raised its line: `"macrotask"` (a
 * later turn of the event loop, as a vCPU takes an interrupt after the exit returns),
 * `"microtask"`, `"sync"` (inside the device's call), or `"none"` (never by itself: the guest
 * polls, {@link InterruptLatch.take}).
 */
export type InterruptDelivery = "macrotask" | "microtask" | "sync" | "none";

/** Options of an {@link InThreadMmio}: the device's, and how interrupts are delivered. */
export interface InThreadMmioOptions extends Omit<MmioDeviceOptions, "interrupt"> {
  /** When the handler runs (default `"macrotask"`). */
  readonly delivery?: InterruptDelivery;
}

const setImmediateLike: (fn: () => void) => void =
  typeof (globalThis as { setImmediate?: unknown }).setImmediate === "function"
    ? (fn) => (globalThis as unknown as { setImmediate(f: () => void): void }).setImmediate(fn)
    : (fn) => host.setTimeout(fn, 0);

/**
 * A latched interrupt line: {@link InterruptLatch.raise} (the device's `interrupt` callback)
 * schedules one run of {@link InterruptLatch.handler} (the guest's interrupt handler) as
 * `delivery` says; raises while that run is pending are counted but schedule nothing more, so
 * the handler runs once per batch — a level-triggered line its handler acknowledges.
 *
 * @example
 * ```ts
 * const line = new InterruptLatch();
 * const device = new MmioDevice(model, { memory, interrupt: line.raise });
 * line.handler = () => driver.onInterrupt();
 * ```
 */
export class InterruptLatch {
  /** When the handler runs. */
  readonly delivery: InterruptDelivery;
  /** The guest's interrupt handler, e.g. `() => driver.onInterrupt()`. */
  handler: (() => void) | undefined = undefined;
  /** Raises of the line. */
  raised = 0;
  /** Runs of the handler. */
  taken = 0;
  /** A raise is latched and the handler has not run for it yet. */
  pending = false;
  readonly #run = (): void => {
    this.pending = false;
    this.taken++;
    this.handler?.();
  };

  /**
   * @param delivery - when the handler runs (default `"macrotask"`)
   * @throws RangeError naming `delivery`
   */
  constructor(delivery: InterruptDelivery = "macrotask") {
    if (!["macrotask", "microtask", "sync", "none"].includes(delivery)) {
      throw new RangeError(`delivery must be macrotask, microtask, sync or none, got ${delivery}`);
    }
    this.delivery = delivery;
  }

  /** Assert the line (bound: pass it as a device's `interrupt` option). */
  readonly raise = (): void => {
    this.raised++;
    if (this.pending) return;
    this.pending = true;
    switch (this.delivery) {
      case "sync":
        this.#run();
        return;
      case "microtask":
        host.queueMicrotask(this.#run);
        return;
      case "macrotask":
        setImmediateLike(this.#run);
        return;
      default:
    }
  };

  /**
   * Run the handler now if a raise is latched (a guest that polls, `delivery: "none"`).
   * @returns whether it ran
   */
  take(): boolean {
    if (!this.pending) return false;
    this.#run();
    return true;
  }
}

/**
 * See the module comment.
 *
 * @example
 * ```ts
 * const vm = new InThreadMmio(new BlkDevice(disk), { memory });
 * const driver = new BlkDriver(vm.transport, memory, slab, { ringBase: 0x10000 });
 * vm.line.handler = () => driver.onInterrupt();
 * await driver.read(0, 512);
 * ```
 */
export class InThreadMmio {
  /** The device side: the model behind the virtio-mmio registers. */
  readonly device: MmioDevice;
  /** The driver side, calling the device's registers directly (each call is one exit). */
  readonly transport: MmioDriverTransport;
  /** The device's interrupt line; set `line.handler` to the guest's interrupt handler. */
  readonly line: InterruptLatch;

  /**
   * @param model - the device model
   * @param options - guest memory, MMIO version, log, interrupt delivery
   * @throws RangeError naming `delivery`; as `MmioDevice` for the rest
   */
  constructor(model: DeviceModel, options: InThreadMmioOptions) {
    const { delivery = "macrotask", ...rest } = options;
    this.line = new InterruptLatch(delivery);
    this.device = new MmioDevice(model, { ...rest, interrupt: this.line.raise });
    const dev = this.device;
    this.transport = new MmioDriverTransport({
      read: (offset, size) => dev.read(offset, size),
      write: (offset, size, value) => dev.write(offset, size, value),
    });
  }
}
