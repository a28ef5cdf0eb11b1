/**
 * Device IDs (the virtio-mmio `DeviceID` register, the PCI device ID minus 0x1040).
 *
 * Every ID of the VIRTIO device type table is listed, including types the standard reserves
 * but does not specify. Names follow Linux `<linux/virtio_ids.h>` (`VIRTIO_ID_<NAME>`) where
 * it has the ID; `NINE_P` stands for `9P`, and `RTC` is Linux's `CLOCK`. Linux's
 * `VIRTIO_ID_DMABUF` (37) is not in the standard's table and is left out.
 *
 * @see VIRTIO 1.3 §5 "Device Types"
 */
export const DeviceId = {
  /** Reserved (invalid): a virtio-mmio slot with nothing behind it reads 0. §4.2.3.1.1 */
  INVALID: 0,
  /** Network device. §5.1 */
  NET: 1,
  /** Block device. §5.2 */
  BLOCK: 2,
  /** Console. §5.3 */
  CONSOLE: 3,
  /** Entropy source. §5.4 */
  RNG: 4,
  /** Memory ballooning (traditional). §5.5 */
  BALLOON: 5,
  /** ioMemory (reserved, unspecified). */
  IOMEM: 6,
  /** rpmsg (reserved, unspecified). */
  RPMSG: 7,
  /** SCSI host. §5.6 */
  SCSI: 8,
  /** 9P transport (reserved, unspecified). */
  NINE_P: 9,
  /** mac80211 WLAN (reserved, unspecified). */
  MAC80211_WLAN: 10,
  /** rproc serial (reserved, unspecified). */
  RPROC_SERIAL: 11,
  /** virtio CAIF (reserved, unspecified). */
  CAIF: 12,
  /** Memory balloon (reserved, unspecified). */
  MEMORY_BALLOON: 13,
  /** GPU device. §5.7 */
  GPU: 16,
  /** RTC (real time clock) device, specified from VIRTIO 1.4; Linux `VIRTIO_ID_CLOCK`. */
  RTC: 17,
  /** Input device. §5.8 */
  INPUT: 18,
  /** Socket device (vsock). §5.10 */
  VSOCK: 19,
  /** Crypto device. §5.9 */
  CRYPTO: 20,
  /** Signal distribution module (reserved, unspecified). */
  SIGNAL_DIST: 21,
  /** pstore device (reserved, unspecified). */
  PSTORE: 22,
  /** IOMMU device. §5.13 */
  IOMMU: 23,
  /** Memory device. §5.15 */
  MEM: 24,
  /** Sound device. §5.14 */
  SOUND: 25,
  /** File system device. §5.11 */
  FS: 26,
  /** PMEM device. §5.19 */
  PMEM: 27,
  /** RPMB device. §5.12 */
  RPMB: 28,
  /** mac80211 hwsim wireless simulation device (reserved, unspecified). */
  MAC80211_HWSIM: 29,
  /** Video encoder device. */
  VIDEO_ENCODER: 30,
  /** Video decoder device. */
  VIDEO_DECODER: 31,
  /** SCMI device. §5.17 */
  SCMI: 32,
  /** NitroSecureModule (reserved, unspecified). */
  NITRO_SEC_MOD: 33,
  /** I2C adapter. §5.16 */
  I2C_ADAPTER: 34,
  /** Watchdog (reserved, unspecified). */
  WATCHDOG: 35,
  /** CAN device (specified from VIRTIO 1.4). */
  CAN: 36,
  /** Parameter server (reserved, unspecified). */
  PARAM_SERV: 38,
  /** Audio policy device (reserved, unspecified). */
  AUDIO_POLICY: 39,
  /** Bluetooth device (reserved, unspecified). */
  BT: 40,
  /** GPIO device. §5.18 */
  GPIO: 41,
  /** RDMA device (reserved; newer than the Linux 6.1 headers). */
  RDMA: 42,
  /** Camera device (reserved; newer than the Linux 6.1 headers). */
  CAMERA: 43,
  /** ISM device (reserved; newer than the Linux 6.1 headers). */
  ISM: 44,
  /** SPI controller (specified from VIRTIO 1.4; newer than the Linux 6.1 headers). */
  SPI: 45,
  /** TEE device (reserved; newer than the Linux 6.1 headers). */
  TEE: 46,
  /** CPU balloon device (reserved; newer than the Linux 6.1 headers). */
  CPU_BALLOON: 47,
  /** Media device (specified from VIRTIO 1.4; newer than the Linux 6.1 headers). */
  MEDIA: 48,
  /** USB controller (reserved; newer than the Linux 6.1 headers). */
  USB: 49,
} as const;

/** One device ID (a value of {@link DeviceId}). */
export type DeviceId = (typeof DeviceId)[keyof typeof DeviceId];
