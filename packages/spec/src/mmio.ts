/**
 * virtio-mmio register map.
 * @see VIRTIO 1.3 §4.2 "Virtio Over MMIO"
 * @module
 */

/** `MagicValue` register contents: "virt" in little-endian. §4.2.2 */
export const MMIO_MAGIC = 0x74726976;

/** `Version` register values. §4.2.2, §4.2.4 */
export const MmioVersion = {
  /** Legacy interface (pre-1.0, QueuePFN based). */
  LEGACY: 1,
  /** Modern interface. */
  MODERN: 2,
} as const;
/** One MMIO version. */
export type MmioVersion = (typeof MmioVersion)[keyof typeof MmioVersion];

/** Register offsets. §4.2.2 table "MMIO Device Register Layout" */
export const MmioReg = {
  /** R: magic value 0x74726976. */
  MAGIC_VALUE: 0x000,
  /** R: device version number. */
  VERSION: 0x004,
  /** R: virtio subsystem device ID. */
  DEVICE_ID: 0x008,
  /** R: virtio subsystem vendor ID. */
  VENDOR_ID: 0x00c,
  /** R: 32 device feature bits selected by DEVICE_FEATURES_SEL. */
  DEVICE_FEATURES: 0x010,
  /** W: device feature word selection. */
  DEVICE_FEATURES_SEL: 0x014,
  /** W: 32 driver feature bits selected by DRIVER_FEATURES_SEL. */
  DRIVER_FEATURES: 0x020,
  /** W: driver feature word selection. */
  DRIVER_FEATURES_SEL: 0x024,
  /** W (legacy): guest page size. */
  GUEST_PAGE_SIZE: 0x028,
  /** W: virtual queue index. */
  QUEUE_SEL: 0x030,
  /** R: maximum virtual queue size. */
  QUEUE_NUM_MAX: 0x034,
  /** W: virtual queue size. */
  QUEUE_NUM: 0x038,
  /** W (legacy): used ring alignment. */
  QUEUE_ALIGN: 0x03c,
  /** RW (legacy): guest physical page number of the queue. */
  QUEUE_PFN: 0x040,
  /** RW: virtual queue ready bit. */
  QUEUE_READY: 0x044,
  /** W: queue notifier. */
  QUEUE_NOTIFY: 0x050,
  /** R: interrupt status. */
  INTERRUPT_STATUS: 0x060,
  /** W: interrupt acknowledge. */
  INTERRUPT_ACK: 0x064,
  /** RW: device status. */
  STATUS: 0x070,
  /** W: descriptor area, low 32 bits. */
  QUEUE_DESC_LOW: 0x080,
  /** W: descriptor area, high 32 bits. */
  QUEUE_DESC_HIGH: 0x084,
  /** W: driver area, low 32 bits. */
  QUEUE_DRIVER_LOW: 0x090,
  /** W: driver area, high 32 bits. */
  QUEUE_DRIVER_HIGH: 0x094,
  /** W: device area, low 32 bits. */
  QUEUE_DEVICE_LOW: 0x0a0,
  /** W: device area, high 32 bits. */
  QUEUE_DEVICE_HIGH: 0x0a4,
  /** W: shared memory region id. */
  SHM_SEL: 0x0ac,
  /** R: shared memory region length, low 32 bits. */
  SHM_LEN_LOW: 0x0b0,
  /** R: shared memory region length, high 32 bits. */
  SHM_LEN_HIGH: 0x0b4,
  /** R: shared memory region base, low 32 bits. */
  SHM_BASE_LOW: 0x0b8,
  /** R: shared memory region base, high 32 bits. */
  SHM_BASE_HIGH: 0x0bc,
  /** RW: virtual queue reset bit (VIRTIO_F_RING_RESET). §4.2.2 */
  QUEUE_RESET: 0x0c0,
  /** R: configuration atomicity value. */
  CONFIG_GENERATION: 0x0fc,
  /** RW: device-specific configuration space starts here. */
  CONFIG: 0x100,
} as const;
/** One MMIO register offset. */
export type MmioReg = (typeof MmioReg)[keyof typeof MmioReg];

/** `InterruptStatus` bits. §4.2.2 */
export const MmioInterrupt = {
  /** Used buffer notification (Linux `VIRTIO_MMIO_INT_VRING`). */
  VRING: 1,
  /** The same bit under the standard's name "Used Buffer Notification". */
  USED_BUFFER: 1,
  /** Configuration change notification. */
  CONFIG: 2,
} as const;
/** One interrupt status bit. */
export type MmioInterrupt = (typeof MmioInterrupt)[keyof typeof MmioInterrupt];
