/**
 * Interposition middleware: wrappers that implement a back-end interface (`BlockBackend`,
 * `NetBackend`) over another back-end, adding what the physical resource does not have —
 * encryption, write logging and snapshots, rate limits, replication, slicing, packet capture —
 * without the guest's driver or the device model knowing.
 *
 * @packageDocumentation
 */
export {
  type AsyncBlockWrapper,
  type BlockWrapper,
  compose,
  composeAsync,
  layer,
} from "./compose.js";
export {
  DEFAULT_SCRYPT,
  ENCRYPT_HEADER_MAGIC,
  ENCRYPT_HEADER_SECTORS,
  ENCRYPT_HEADER_VERSION,
  EncryptedDisk,
  EncryptedDiskError,
  type EncryptedDiskErrorCode,
  type EncryptOptions,
  encrypt,
  type FormatEncryptedOptions,
  formatEncrypted,
  type OpenEncryptedOptions,
  openEncrypted,
  type ScryptParams,
} from "./encrypt.js";
export {
  type MirrorAck,
  MirrorBackend,
  type MirrorMemberState,
  type MirrorOptions,
  type MirrorResyncResult,
  type MirrorStats,
  mirror,
} from "./mirror.js";
export {
  EncryptedLinkEnd,
  type EncryptedLinkOptions,
  type EncryptedLinkStats,
  encryptedLink,
  LINK_BATCH_ENTRY_LEN,
  LINK_ETHERTYPE,
  LINK_HEADER_LEN,
  LINK_MAX_FRAMES,
  LINK_OVERHEAD,
  LINK_TAG_LEN,
  LINK_VERSION,
  LINK_VERSION_BATCH,
  type LinkRole,
  patchBackends,
} from "./net-tunnel.js";
export {
  type Capture,
  type CaptureDirection,
  type CapturedPacket,
  type CaptureInterface,
  LINKTYPE_ETHERNET,
  PCAPNG_BYTE_ORDER_MAGIC,
  PCAPNG_EPB,
  PCAPNG_IDB,
  PCAPNG_SHB,
  PCAPNG_SPB,
  PcapFormatError,
  type PcapFormatErrorCode,
  PcapngWriter,
  type PcapngWriterOptions,
  type PcapngWriterStats,
  readPcap,
  readPcapng,
} from "./pcap.js";
export {
  RateLimitedBackend,
  RateLimitGroup,
  type RateLimitGroupOptions,
  type RateLimitOptions,
  type RateLimitStats,
  rateLimit,
} from "./rate-limit.js";
export {
  type NetRateLimitOptions,
  type NetRateLimitStats,
  RateLimitedNetBackend,
  rateLimitNet,
} from "./rate-limit-net.js";
export { SliceBackend, type SliceOptions, slice } from "./slice.js";
export {
  LOG_FILE_MAGIC,
  LOG_FILE_VERSION,
  LOG_HEADER_BYTES,
  LOG_RECORD_HEADER_BYTES,
  LogRecordType,
  type SnapshotInfo,
  SnapshotLog,
  SnapshotLogError,
  type SnapshotLogErrorCode,
  type SnapshotLogOptions,
  snapshotLog,
} from "./snapshot-log.js";
export { type FrameRecorder, type SniffOptions, sniff } from "./sniff.js";
export { type RateClock, systemClock, TokenBucket } from "./token-bucket.js";
export {
  XTS_KEY_BYTES,
  XTS_SECTOR_BYTES,
  XtsAes256,
  type XtsEngine,
  type XtsOptions,
} from "./xts.js";
