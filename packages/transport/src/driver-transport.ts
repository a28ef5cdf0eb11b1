import type { GuestMemory } from "@virtio-ts/memory";
import type { DriverQueue, IndirectArea, QueueLayout } from "@virtio-ts/virtqueue";

/** What a driver-side transport found out about the device behind it. */
export interface DriverDeviceInfo {
  /** The virtio device ID (`DeviceId`, §5): 2 for a block device, and so on. */
  readonly deviceId: number;
  /** The vendor ID, where the transport has one (0 otherwise). */
  readonly vendorId: number;
}

/** Options of {@link DriverTransport.setupQueue}. */
export interface DriverQueueSetupOptions {
  /** Memory for indirect tables (used when VIRTIO_F_INDIRECT_DESC was negotiated). */
  readonly indirect?: IndirectArea;
}

/** Reads configuration fields with the access width the standard requires per field. */
export interface ConfigReader {
  /** An 8-bit field. */
  u8(offset: number): number;
  /** A 16-bit field (2-aligned). */
  u16(offset: number): number;
  /** A 32-bit field (4-aligned). */
  u32(offset: number): number;
  /** A 64-bit field (4-aligned), as two 32-bit reads, low half first. */
  u64(offset: number): bigint;
}

/**
 * The driver side of a virtio transport, as a driver (`BlkDriver`) uses it: initialise the
 * device (§3.1.1), read its configuration consistently (§2.5.1), set up virtqueues, notify,
 * and take interrupts. {@link MmioDriverTransport} implements it over virtio-mmio registers;
 * other packages implement it over other channels (vhost-user).
 *
 * Implementer contract: every method is synchronous. `negotiate` runs steps 1–6 of §3.1.1 and
 * returns the accepted features (a subset of `accept` and of the offer; VIRTIO_F_VERSION_1
 * for a modern device); it throws a `VirtioError` subclass (with FAILED set) when the device
 * refuses. `setupQueue` returns a driver queue over `memory` that the device will use, and
 * throws if the device cannot take it. `takeInterrupt` returns and clears the pending causes,
 * bit 0 (`MmioInterrupt.USED_BUFFER`, §2.3) for used buffers and bit 1 (CONFIG) for a
 * configuration change; a device that needs a reset reports a configuration change and then
 * `needsReset` is true (§2.1.2). Nothing the device reports is trusted: waiting loops are
 * bounded and misbehaviour is reported as an error, never as a hang.
 */
export interface DriverTransport {
  /** The negotiated features (0 before {@link DriverTransport.negotiate}). */
  readonly features: bigint;
  /** The device status field (§2.1). */
  readonly status: number;
  /** Whether the device has set DEVICE_NEEDS_RESET (§2.1.2). */
  readonly needsReset: boolean;
  /**
   * Find out which device this is (first, before anything else).
   * @returns the device ID and vendor
   */
  probe(): DriverDeviceInfo;
  /**
   * Steps 1–6 of the initialisation sequence (§3.1.1).
   * @param accept - the features the caller wants, or a function choosing them from the offer
   * @returns the negotiated features
   */
  negotiate(accept: bigint | ((offered: bigint) => bigint)): bigint;
  /**
   * Read configuration fields consistently (§2.5.1); `fn` may run several times.
   * @param fn - reads the fields through the given reader
   * @returns what the last (consistent) run of `fn` returned
   */
  readConfig<R>(fn: (cfg: ConfigReader) => R): R;
  /**
   * The largest size queue `index` may have; 0 if the queue does not exist.
   * @param index - queue index
   */
  queueMaxSize(index: number): number;
  /**
   * Set up queue `index` at `layout` in `memory` and hand it to the device.
   * @param index - queue index
   * @param memory - guest memory the ring is in (memory the device can reach)
   * @param layout - the three area addresses and the size
   * @param options - indirect table area
   * @returns the driver queue
   */
  setupQueue<T>(
    index: number,
    memory: GuestMemory,
    layout: QueueLayout,
    options?: DriverQueueSetupOptions,
  ): DriverQueue<T>;
  /** Step 8 (§3.1.1): set DRIVER_OK; the device is live. */
  driverOk(): void;
  /**
   * Send an available buffer notification for queue `index` (§2.9).
   * @param index - queue index
   */
  notify(index: number): void;
  /**
   * Take the pending interrupt causes, clearing them.
   * @returns bit 0: used buffers (reap every queue), bit 1: configuration change
   */
  takeInterrupt(): number;
  /** Set FAILED: the driver gives up on the device (§3.1.1). */
  fail(): void;
}

/**
 * A {@link DriverTransport} that can also write device-specific configuration fields, as
 * drivers of devices with driver-writable configuration need (virtio-console `emerg_wr`).
 * {@link MmioDriverTransport} and {@link PciDriverTransport} implement it.
 */
export interface ConfigWritableTransport extends DriverTransport {
  /**
   * Write a configuration field of `size` bytes at `offset` (§2.5; after FEATURES_OK unless
   * the device allows an early write, §3.1.1 step 4).
   */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
}
