/**
 * Constants and wire layouts of the OASIS VIRTIO 1.x specification.
 *
 * Every value here is checked against the Linux UAPI headers (`/usr/include/linux/virtio_*.h`)
 * by a test that compiles a C program with gcc. Constants are plain objects `as const`, so each
 * is usable both as a value (`DeviceStatus.DRIVER_OK`) and as a type (`DeviceStatus`).
 *
 * @packageDocumentation
 */
export {
  BALLOON_PAGE_SIZE,
  BALLOON_PFN_SHIFT,
  BALLOON_STAT_TAGS,
  BalloonCmdId,
  BalloonConfig,
  BalloonFeature,
  BalloonQueue,
  BalloonStat,
  BalloonStatTag,
  balloonQueueIndex,
} from "./balloon.js";
export {
  BLK_ID_BYTES,
  BLK_SECTOR_SIZE,
  BlkConfig,
  BlkDiscardWriteZeroes,
  BlkFeature,
  BlkLifetime,
  BlkOutHdr,
  BlkPreEolInfo,
  BlkRequestType,
  BlkStatus,
} from "./blk.js";
export {
  ConsoleConfig,
  ConsoleControl,
  ConsoleEvent,
  ConsoleFeature,
  ConsoleResize,
  type ConsoleSize,
} from "./console.js";
export {
  completeChecksum,
  ETH_ALEN,
  ETH_HLEN,
  EtherType,
  flowHash,
  onesComplementSum,
} from "./ethernet.js";
export {
  FEATURE_TRANSPORT_FIRST,
  FEATURE_TRANSPORT_LAST,
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
} from "./features.js";
export { DeviceId } from "./ids.js";
export { MMIO_MAGIC, MmioInterrupt, MmioReg, MmioVersion } from "./mmio.js";
export {
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlCmd,
  NetCtrlHdr,
  NetFeature,
  NetGsoType,
  NetHdr,
  NetHdrFlags,
  NetHdrHash,
  NetMqPairs,
  NetStatus,
} from "./net.js";
export {
  PCI_COMMON_CFG_V1_0_SIZE,
  PCI_DEVICE_ID_MODERN_BASE,
  PCI_DEVICE_ID_MODERN_LAST,
  PCI_VENDOR_ID_VIRTIO,
  PciBar,
  PciCap,
  PciCap64,
  PciCapId,
  PciCapType,
  PciCfgCap,
  PciClass,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciIsr,
  PciMsix,
  PciNotifyCap,
  PciStatus,
  PciTransitionalDeviceId,
  VIRTIO_MSI_MAX_VECTOR,
  VIRTIO_MSI_NO_VECTOR,
} from "./pci.js";
export {
  LEGACY_VRING_ALIGN,
  type LegacySplitLayout,
  legacySplitLayout,
  PACKED_EVENT_F_WRAP_CTR,
  PACKED_EVENT_OFFSET_MASK,
  PACKED_QUEUE_MAX_SIZE,
  PackedAlign,
  PackedDesc,
  PackedDescFlags,
  PackedEvent,
  PackedEventFlags,
  packedEventOffset,
  packedEventOffWrap,
  packedEventWrapCounter,
  SPLIT_QUEUE_MAX_SIZE,
  SplitAlign,
  SplitAvail,
  SplitDesc,
  SplitDescFlags,
  SplitUsed,
  splitAvailEventOffset,
  splitAvailSize,
  splitDescTableSize,
  splitUsedEventOffset,
  splitUsedSize,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "./ring.js";
export { RNG_NUM_QUEUES, RngQueue } from "./rng.js";
export { DeviceStatus } from "./status.js";
export {
  VsockCid,
  VsockConfig,
  VsockEvent,
  VsockEventId,
  VsockFeature,
  VsockHdr,
  VsockOp,
  VsockQueue,
  VsockSeqFlags,
  VsockShutdownFlags,
  VsockType,
} from "./vsock.js";
