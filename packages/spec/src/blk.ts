/**
 * virtio-blk constants and layouts.
 * @see VIRTIO 1.3 §5.2 "Block Device"
 * @module
 */

/** Size of a sector: capacity and request sectors are always in 512-byte units. §5.2.6 */
export const BLK_SECTOR_SIZE = 512;
/** Length of the GET_ID response (a device ID string, not necessarily NUL-terminated). §5.2.6 */
export const BLK_ID_BYTES = 20;

/** virtio-blk feature bits. §5.2.3 */
export const BlkFeature = {
  /** Legacy only: device supports request barriers. §5.2.3.1 */
  BARRIER: 0,
  /** Maximum size of any single segment is in `size_max`. */
  SIZE_MAX: 1,
  /** Maximum number of segments in a request is in `seg_max`. */
  SEG_MAX: 2,
  /** Disk-style geometry is in `geometry`. */
  GEOMETRY: 4,
  /** Device is read-only. */
  RO: 5,
  /** Block size of disk is in `blk_size`. */
  BLK_SIZE: 6,
  /** Legacy only: device supports SCSI packet commands. §5.2.3.1 */
  SCSI: 7,
  /** Cache flush command support. */
  FLUSH: 9,
  /** Device exports information on optimal I/O alignment. */
  TOPOLOGY: 10,
  /** Device can toggle its cache between writeback and writethrough modes. */
  CONFIG_WCE: 11,
  /** Device supports multiqueue. */
  MQ: 12,
  /** Device can support the discard command. */
  DISCARD: 13,
  /** Device can support the write zeroes command. */
  WRITE_ZEROES: 14,
  /** Device supports providing storage lifetime information. */
  LIFETIME: 15,
  /** Device supports secure erase command. */
  SECURE_ERASE: 16,
  /**
   * Device is a zoned block device. Its configuration fields and requests are not modelled
   * here; a device that does not implement them simply does not offer this bit.
   */
  ZONED: 17,
} as const;
/** One virtio-blk feature bit number. */
export type BlkFeature = (typeof BlkFeature)[keyof typeof BlkFeature];

/** Request types (`virtio_blk_req.type`). §5.2.6 */
export const BlkRequestType = {
  /** Read. */
  IN: 0,
  /** Write. */
  OUT: 1,
  /** Flush the write cache. */
  FLUSH: 4,
  /** Get the device ID string. */
  GET_ID: 8,
  /** Get storage lifetime information. */
  GET_LIFETIME: 10,
  /** Discard ranges. */
  DISCARD: 11,
  /** Write zeroes to ranges. */
  WRITE_ZEROES: 13,
  /** Securely erase ranges. */
  SECURE_ERASE: 14,
} as const;
/** One virtio-blk request type. */
export type BlkRequestType = (typeof BlkRequestType)[keyof typeof BlkRequestType];

/** Request status byte written by the device (`virtio_blk_req.status`). §5.2.6 */
export const BlkStatus = {
  /** Success. */
  OK: 0,
  /** Device or driver error. */
  IOERR: 1,
  /** Request unsupported by device. */
  UNSUPP: 2,
} as const;
/** One virtio-blk status value. */
export type BlkStatus = (typeof BlkStatus)[keyof typeof BlkStatus];

/** Request header `struct virtio_blk_outhdr` (first 16 readable bytes of a request). §5.2.6 */
export const BlkOutHdr = {
  /** Size in bytes. */
  SIZE: 16,
  /** `le32 type`: {@link BlkRequestType}. */
  TYPE: 0,
  /** `le32 reserved` (legacy: ioprio). */
  IOPRIO: 4,
  /** `le64 sector`: offset in 512-byte sectors. */
  SECTOR: 8,
} as const;

/** A discard / write-zeroes / secure-erase range `struct virtio_blk_discard_write_zeroes`. §5.2.6 */
export const BlkDiscardWriteZeroes = {
  /** Size in bytes. */
  SIZE: 16,
  /** `le64 sector`. */
  SECTOR: 0,
  /** `le32 num_sectors`. */
  NUM_SECTORS: 8,
  /** `le32 flags`. */
  FLAGS: 12,
  /** Flag bit: the device may deallocate (unmap) the range when writing zeroes. */
  FLAG_UNMAP: 1,
} as const;

/** Device configuration layout `struct virtio_blk_config`. §5.2.4 */
export const BlkConfig = {
  /** `le64 capacity` in 512-byte sectors. */
  CAPACITY: 0,
  /** `le32 size_max`. */
  SIZE_MAX: 8,
  /** `le32 seg_max`. */
  SEG_MAX: 12,
  /** `le16 geometry.cylinders`. */
  GEOMETRY_CYLINDERS: 16,
  /** `u8 geometry.heads`. */
  GEOMETRY_HEADS: 18,
  /** `u8 geometry.sectors`. */
  GEOMETRY_SECTORS: 19,
  /** `le32 blk_size`. */
  BLK_SIZE: 20,
  /** `u8 topology.physical_block_exp`. */
  PHYSICAL_BLOCK_EXP: 24,
  /** `u8 topology.alignment_offset`. */
  ALIGNMENT_OFFSET: 25,
  /** `le16 topology.min_io_size`. */
  MIN_IO_SIZE: 26,
  /** `le32 topology.opt_io_size`. */
  OPT_IO_SIZE: 28,
  /** `u8 writeback`. */
  WRITEBACK: 32,
  /** `u8 unused0`: reserved padding (Linux `unused`). */
  UNUSED0: 33,
  /** `le16 num_queues`. */
  NUM_QUEUES: 34,
  /** `le32 max_discard_sectors`. */
  MAX_DISCARD_SECTORS: 36,
  /** `le32 max_discard_seg`. */
  MAX_DISCARD_SEG: 40,
  /** `le32 discard_sector_alignment`. */
  DISCARD_SECTOR_ALIGNMENT: 44,
  /** `le32 max_write_zeroes_sectors`. */
  MAX_WRITE_ZEROES_SECTORS: 48,
  /** `le32 max_write_zeroes_seg`. */
  MAX_WRITE_ZEROES_SEG: 52,
  /** `u8 write_zeroes_may_unmap`. */
  WRITE_ZEROES_MAY_UNMAP: 56,
  /** `u8 unused1[3]`: reserved padding. */
  UNUSED1: 57,
  /** `le32 max_secure_erase_sectors`. */
  MAX_SECURE_ERASE_SECTORS: 60,
  /** `le32 max_secure_erase_seg`. */
  MAX_SECURE_ERASE_SEG: 64,
  /** `le32 secure_erase_sector_alignment`. */
  SECURE_ERASE_SECTOR_ALIGNMENT: 68,
  /**
   * Size of the structure up to and including the secure-erase fields, as in the Linux 6.1
   * header. The standard continues with the zoned characteristics (VIRTIO_BLK_F_ZONED, bytes
   * 72–95), which virtio-ts does not model.
   */
  SIZE: 72,
} as const;

/**
 * Response of a GET_LIFETIME request `struct virtio_blk_lifetime` (VIRTIO_BLK_F_LIFETIME).
 * Newer than the Linux 6.1 headers, so only the standard defines it.
 *
 * @see VIRTIO 1.3 §5.2.6 "Device Operation"
 */
export const BlkLifetime = {
  /** Size in bytes. */
  SIZE: 6,
  /** `le16 pre_eol_info`: {@link BlkPreEolInfo}. */
  PRE_EOL_INFO: 0,
  /** `le16 device_lifetime_est_typ_a`: wear of SLC cells, in steps of 10% (0 = undefined). */
  DEVICE_LIFETIME_EST_TYP_A: 2,
  /** `le16 device_lifetime_est_typ_b`: wear of MLC cells, in steps of 10% (0 = undefined). */
  DEVICE_LIFETIME_EST_TYP_B: 4,
} as const;

/** Values of `virtio_blk_lifetime.pre_eol_info` (reserved blocks consumed). §5.2.6 */
export const BlkPreEolInfo = {
  /** Value not available. */
  UNDEFINED: 0,
  /** Less than 80% of reserved blocks are consumed. */
  NORMAL: 1,
  /** 80% of reserved blocks are consumed. */
  WARNING: 2,
  /** 90% of reserved blocks are consumed. */
  URGENT: 3,
} as const;
/** One `pre_eol_info` value. */
export type BlkPreEolInfo = (typeof BlkPreEolInfo)[keyof typeof BlkPreEolInfo];
