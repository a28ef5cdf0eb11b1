/**
 * virtio over PCI: the PCI IDs, the virtio structure capabilities and the common configuration
 * layout (VIRTIO 1.3 §4.1), with the parts of the PCI configuration header, of the BARs and of
 * the MSI-X capability that a virtio-pci device and driver use (PCI Local Bus 3.0, as Linux
 * `<linux/pci_regs.h>` names them).
 * @see VIRTIO 1.3 §4.1 "Virtio Over PCI Bus"
 * @module
 */

/** PCI Vendor ID of every virtio device (§4.1.2.1: devices MUST have it). */
export const PCI_VENDOR_ID_VIRTIO = 0x1af4;

/**
 * The PCI Device ID of a non-transitional device is this base plus the virtio device ID
 * (§4.1.2): 0x1041 for a network device, 0x1042 for a block device, up to 0x107f.
 */
export const PCI_DEVICE_ID_MODERN_BASE = 0x1040;

/** Last PCI Device ID of the modern range (0x1040 + 63). §4.1.2 */
export const PCI_DEVICE_ID_MODERN_LAST = 0x107f;

/**
 * Transitional PCI Device IDs (0x1000–0x103f), which a transitional device with a legacy
 * interface uses instead of 0x1040 + ID. §4.1.2.1 table
 */
export const PciTransitionalDeviceId = {
  /** Network device. */
  NET: 0x1000,
  /** Block device. */
  BLOCK: 0x1001,
  /** Memory ballooning (traditional). */
  BALLOON: 0x1002,
  /** Console. */
  CONSOLE: 0x1003,
  /** SCSI host. */
  SCSI: 0x1004,
  /** Entropy source. */
  RNG: 0x1005,
  /** 9P transport. */
  NINE_P: 0x1009,
} as const;
/** One transitional PCI Device ID. */
export type PciTransitionalDeviceId =
  (typeof PciTransitionalDeviceId)[keyof typeof PciTransitionalDeviceId];

/** `cfg_type` of a virtio structure capability. §4.1.4 */
export const PciCapType = {
  /** Common configuration (`virtio_pci_common_cfg`). §4.1.4.3 */
  COMMON_CFG: 1,
  /** Notifications (`virtio_pci_notify_cap`). §4.1.4.4 */
  NOTIFY_CFG: 2,
  /** ISR status. §4.1.4.5 */
  ISR_CFG: 3,
  /** Device-specific configuration. §4.1.4.6 */
  DEVICE_CFG: 4,
  /** PCI configuration access (`virtio_pci_cfg_cap`). §4.1.4.9 */
  PCI_CFG: 5,
  /** Shared memory region (`virtio_pci_cap64`). §4.1.4.7 */
  SHARED_MEMORY_CFG: 8,
  /** Vendor-specific data. §4.1.4.8 */
  VENDOR_CFG: 9,
} as const;
/** One capability type. */
export type PciCapType = (typeof PciCapType)[keyof typeof PciCapType];

/** `struct virtio_pci_cap`: the vendor-specific capability header of each structure. §4.1.4 */
export const PciCap = {
  /** u8: PCI capability ID, {@link PciCapId.VNDR} (0x09). */
  CAP_VNDR: 0,
  /** u8: config-space offset of the next capability (0: end of list). */
  CAP_NEXT: 1,
  /** u8: length of this capability including extra data. */
  CAP_LEN: 2,
  /** u8: which structure ({@link PciCapType}). */
  CFG_TYPE: 3,
  /** u8: BAR the structure is in (0–5; other values reserved). */
  BAR: 4,
  /** u8: distinguishes several capabilities of one type (shared memory regions). */
  ID: 5,
  /** u8[2]: padding. */
  PADDING: 6,
  /** le32: offset of the structure within the BAR. */
  OFFSET: 8,
  /** le32: length of the structure in bytes. */
  LENGTH: 12,
  /** Size of the header (the smallest `cap_len`). */
  SIZE: 16,
} as const;

/** `struct virtio_pci_cap64`: offsets and lengths above 4 GiB. §4.1.4 */
export const PciCap64 = {
  /** le32: high 32 bits of the offset. */
  OFFSET_HI: 16,
  /** le32: high 32 bits of the length. */
  LENGTH_HI: 20,
  /** Size of the capability. */
  SIZE: 24,
} as const;

/** `struct virtio_pci_notify_cap`. §4.1.4.4 */
export const PciNotifyCap = {
  /** le32: multiplier for `queue_notify_off`. */
  NOTIFY_OFF_MULTIPLIER: 16,
  /** Size of the capability. */
  SIZE: 20,
} as const;

/** `struct virtio_pci_cfg_cap`: the PCI configuration access window. §4.1.4.9 */
export const PciCfgCap = {
  /** u8[4]: data window of `cap.length` bytes at `cap.offset` in BAR `cap.bar`. */
  PCI_CFG_DATA: 16,
  /** Size of the capability. */
  SIZE: 20,
} as const;

/**
 * `struct virtio_pci_common_cfg` (VIRTIO 1.3 names; Linux calls the driver fields `guest_*`,
 * `msix_config`, `queue_avail_*` and `queue_used_*`). 64-bit fields are two 32-bit halves,
 * low first (§4.1.3).
 * @see VIRTIO 1.3 §4.1.4.3
 */
export const PciCommonCfg = {
  /** le32 RW: selects the 32 bits `device_feature` shows. */
  DEVICE_FEATURE_SELECT: 0,
  /** le32 R: offered feature bits. */
  DEVICE_FEATURE: 4,
  /** le32 RW: selects the 32 bits `driver_feature` shows. */
  DRIVER_FEATURE_SELECT: 8,
  /** le32 RW: accepted feature bits. */
  DRIVER_FEATURE: 12,
  /** le16 RW: MSI-X vector for configuration change notifications. */
  CONFIG_MSIX_VECTOR: 16,
  /** le16 R: number of virtqueues (not counting admin queues). */
  NUM_QUEUES: 18,
  /** u8 RW: device status (§2.1); writing 0 resets the device. */
  DEVICE_STATUS: 20,
  /** u8 R: configuration atomicity value. */
  CONFIG_GENERATION: 21,
  /** le16 RW: selects the virtqueue the following fields refer to. */
  QUEUE_SELECT: 22,
  /** le16 RW: queue size (maximum on reset; 0: queue unavailable). */
  QUEUE_SIZE: 24,
  /** le16 RW: MSI-X vector for used buffer notifications of the queue. */
  QUEUE_MSIX_VECTOR: 26,
  /** le16 RW: 1 enables the queue. */
  QUEUE_ENABLE: 28,
  /** le16 R: the queue's notification offset, in `notify_off_multiplier` units. */
  QUEUE_NOTIFY_OFF: 30,
  /** le64 RW: descriptor area, low half. */
  QUEUE_DESC_LO: 32,
  /** le64 RW: descriptor area, high half. */
  QUEUE_DESC_HI: 36,
  /** le64 RW: driver area, low half. */
  QUEUE_DRIVER_LO: 40,
  /** le64 RW: driver area, high half. */
  QUEUE_DRIVER_HI: 44,
  /** le64 RW: device area, low half. */
  QUEUE_DEVICE_LO: 48,
  /** le64 RW: device area, high half. */
  QUEUE_DEVICE_HI: 52,
  /** le16 R: notification value (VIRTIO_F_NOTIF_CONFIG_DATA; formerly `queue_notify_data`). */
  QUEUE_NOTIF_CONFIG_DATA: 56,
  /** le16 RW: 1 resets the queue (VIRTIO_F_RING_RESET). */
  QUEUE_RESET: 58,
  /** le16 R: index of the first administration virtqueue (VIRTIO_F_ADMIN_VQ). */
  ADMIN_QUEUE_INDEX: 60,
  /** le16 R: number of administration virtqueues (VIRTIO_F_ADMIN_VQ). */
  ADMIN_QUEUE_NUM: 62,
  /** Size of the VIRTIO 1.3 structure. */
  SIZE: 64,
} as const;

/**
 * Size of `struct virtio_pci_common_cfg` up to `queue_device` (Linux 6.1's UAPI struct): the
 * smallest common configuration a VIRTIO 1.0 driver maps.
 */
export const PCI_COMMON_CFG_V1_0_SIZE = 56;

/** Bits of the ISR status byte. §4.1.4.5 */
export const PciIsr = {
  /** Queue interrupt (used buffer notification). */
  QUEUE: 1,
  /** Device configuration change interrupt. */
  CONFIG: 2,
} as const;
/** One ISR status bit. */
export type PciIsr = (typeof PciIsr)[keyof typeof PciIsr];

/** `config_msix_vector` / `queue_msix_vector` value meaning "no vector" (unmapped). §4.1.5.1.2 */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** Highest MSI-X table entry number a virtio driver may map (Table Size ≤ 0x800). §4.1.5.1.2 */
export const VIRTIO_MSI_MAX_VECTOR = 0x7ff;

// ---- PCI Local Bus 3.0 (as <linux/pci_regs.h> names it) ----

/** Offsets of the type 0 PCI configuration header. */
export const PciConfig = {
  /** u16 R: vendor ID. */
  VENDOR_ID: 0x00,
  /** u16 R: device ID. */
  DEVICE_ID: 0x02,
  /** u16 RW: command register ({@link PciCommand}). */
  COMMAND: 0x04,
  /** u16 R(W1C): status register ({@link PciStatus}). */
  STATUS: 0x06,
  /** u8 R: revision ID. */
  REVISION_ID: 0x08,
  /** u8 R: programming interface (class code bits 7–0). */
  CLASS_PROG: 0x09,
  /** u8 R: subclass (class code bits 15–8). */
  CLASS_DEVICE: 0x0a,
  /** u8 R: base class (class code bits 23–16). */
  CLASS_BASE: 0x0b,
  /** u8 RW: cache line size. */
  CACHE_LINE_SIZE: 0x0c,
  /** u8: latency timer. */
  LATENCY_TIMER: 0x0d,
  /** u8 R: header type (0: general device; bit 7: multi-function). */
  HEADER_TYPE: 0x0e,
  /** u8: built-in self test. */
  BIST: 0x0f,
  /** le32 RW: BAR 0; BAR n is at `BASE_ADDRESS_0 + 4·n`. */
  BASE_ADDRESS_0: 0x10,
  /** le32: CardBus CIS pointer. */
  CARDBUS_CIS: 0x28,
  /** u16 R: subsystem vendor ID. */
  SUBSYSTEM_VENDOR_ID: 0x2c,
  /** u16 R: subsystem ID. */
  SUBSYSTEM_ID: 0x2e,
  /** le32: expansion ROM base address. */
  ROM_ADDRESS: 0x30,
  /** u8 R: offset of the first capability (when STATUS has CAP_LIST). */
  CAPABILITY_LIST: 0x34,
  /** u8 RW: interrupt line (written by firmware, unused by the device). */
  INTERRUPT_LINE: 0x3c,
  /** u8 R: interrupt pin (1 = INTA#, … 4 = INTD#; 0: none). */
  INTERRUPT_PIN: 0x3d,
  /** u8 R: minimum grant. */
  MIN_GNT: 0x3e,
  /** u8 R: maximum latency. */
  MAX_LAT: 0x3f,
  /** Size of the type 0 header; capabilities live after it. */
  HEADER_SIZE: 0x40,
  /** Size of the conventional PCI configuration space. */
  SIZE: 0x100,
} as const;

/** Command register bits. */
export const PciCommand = {
  /** Respond to I/O space accesses. */
  IO: 0x1,
  /** Respond to memory space accesses. */
  MEMORY: 0x2,
  /** Bus master: the function may issue memory requests (DMA, MSI). */
  MASTER: 0x4,
  /** INTx emulation disable. */
  INTX_DISABLE: 0x400,
} as const;

/** Status register bits. */
export const PciStatus = {
  /** Interrupt status: the function's INTx is pending (regardless of INTX_DISABLE). */
  INTERRUPT: 0x8,
  /** The capability list at CAPABILITY_LIST exists. */
  CAP_LIST: 0x10,
} as const;

/** Low bits of a BAR. */
export const PciBar = {
  /** Bit 0: 1 = I/O space, 0 = memory space. */
  SPACE_IO: 0x01,
  /** Memory BAR type bits (2–1). */
  MEM_TYPE_MASK: 0x06,
  /** Memory type: 32-bit address. */
  MEM_TYPE_32: 0x00,
  /** Memory type: 64-bit address (the BAR and the next one). */
  MEM_TYPE_64: 0x04,
  /** Memory BAR: prefetchable. */
  MEM_PREFETCH: 0x08,
  /** Address bits of an I/O BAR (bits 31–2). */
  IO_MASK: 0xfffffffc,
  /** Address bits of a memory BAR (bits 31–4). */
  MEM_MASK: 0xfffffff0,
} as const;

/** PCI capability IDs (`cap_vndr` / the first byte of each capability). */
export const PciCapId = {
  /** Vendor-specific: every virtio structure capability. */
  VNDR: 0x09,
  /** MSI-X. */
  MSIX: 0x11,
} as const;

/** The MSI-X capability and table (PCI Local Bus 3.0 §6.8.2). */
export const PciMsix = {
  /** le16 RW: message control (table size, function mask, enable). */
  FLAGS: 2,
  /** Message control: table size minus 1 (bits 10–0). */
  FLAGS_QSIZE: 0x07ff,
  /** Message control: function mask. */
  FLAGS_MASKALL: 0x4000,
  /** Message control: MSI-X enable. */
  FLAGS_ENABLE: 0x8000,
  /** le32 R: table offset (bits 31–3) and BAR indicator (bits 2–0). */
  TABLE: 4,
  /** le32 R: pending bit array offset and BAR indicator. */
  PBA: 8,
  /** BAR indicator bits of TABLE / PBA. */
  BIR_MASK: 0x7,
  /** Size of the capability. */
  CAP_SIZE: 12,
  /** Size of one table entry. */
  ENTRY_SIZE: 16,
  /** Entry: message address, low 32 bits. */
  ENTRY_LOWER_ADDR: 0,
  /** Entry: message address, high 32 bits. */
  ENTRY_UPPER_ADDR: 4,
  /** Entry: message data. */
  ENTRY_DATA: 8,
  /** Entry: vector control. */
  ENTRY_VECTOR_CTRL: 12,
  /** Vector control: the vector is masked. */
  ENTRY_CTRL_MASKBIT: 1,
} as const;

/**
 * Base class codes (class code bits 23–16) with the subclass, as QEMU presents its virtio
 * devices: the 24-bit class code is `(classCode << 8) | progIf`.
 */
export const PciClass = {
  /** Mass storage, SCSI (virtio-blk, virtio-scsi). */
  STORAGE_SCSI: 0x0100,
  /** Network, Ethernet (virtio-net). */
  NETWORK_ETHERNET: 0x0200,
  /** Display, other (virtio-gpu). */
  DISPLAY_OTHER: 0x0380,
  /** Memory controller, RAM (virtio-balloon, virtio-mem). */
  MEMORY_RAM: 0x0500,
  /** Communication, other (virtio-console, virtio-vsock). */
  COMMUNICATION_OTHER: 0x0780,
  /** Input, other (virtio-input). */
  INPUT_OTHER: 0x0980,
  /** Device does not fit any defined class (virtio-rng and the rest). */
  OTHERS: 0xff00,
} as const;
/** One class/subclass pair. */
export type PciClass = (typeof PciClass)[keyof typeof PciClass];
