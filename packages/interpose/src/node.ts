/**
 * The Node-only interposers of `@virtio-ts/interpose` (import them from
 * `@virtio-ts/interpose/node`), built on `node:crypto`, `node:fs` and `node:zlib`: disk
 * encryption ({@link encrypt}, {@link XtsAes256}), the snapshot / write log
 * ({@link snapshotLog}), packet capture to pcapng files ({@link PcapngWriter}) and the pcap /
 * pcapng readers, and encrypted tunnels between network back-ends ({@link encryptedLink}).
 * Composition, rate limits, replication, slicing and the sniff tap, which run anywhere, are in
 * the package's root entry.
 *
 * @module
 */
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
export {
  XTS_KEY_BYTES,
  XTS_SECTOR_BYTES,
  XtsAes256,
  type XtsEngine,
  type XtsJob,
  type XtsOptions,
} from "./xts.js";
