/**
 * virtio-net constants and layouts.
 * @see VIRTIO 1.3 §5.1 "Network Device"
 * @module
 */

/** virtio-net feature bits. §5.1.3 */
export const NetFeature = {
  /** Device handles packets with partial checksum (checksum offload to the device). */
  CSUM: 0,
  /** Driver handles packets with partial checksum. */
  GUEST_CSUM: 1,
  /** Control channel offloads reconfiguration support. */
  CTRL_GUEST_OFFLOADS: 2,
  /** Device maximum MTU reporting is supported (`mtu` in config). */
  MTU: 3,
  /** Device has given MAC address (`mac` in config). */
  MAC: 5,
  /** Legacy only: device handles packets with any GSO type. §5.1.3.2 */
  GSO: 6,
  /** Driver can receive TSOv4. */
  GUEST_TSO4: 7,
  /** Driver can receive TSOv6. */
  GUEST_TSO6: 8,
  /** Driver can receive TSO with ECN. */
  GUEST_ECN: 9,
  /** Driver can receive UFO. */
  GUEST_UFO: 10,
  /** Device can receive TSOv4. */
  HOST_TSO4: 11,
  /** Device can receive TSOv6. */
  HOST_TSO6: 12,
  /** Device can receive TSO with ECN. */
  HOST_ECN: 13,
  /** Device can receive UFO. */
  HOST_UFO: 14,
  /** Driver can merge receive buffers (`num_buffers`). */
  MRG_RXBUF: 15,
  /** Configuration status field is available. */
  STATUS: 16,
  /** Control channel is available. */
  CTRL_VQ: 17,
  /** Control channel RX mode support. */
  CTRL_RX: 18,
  /** Control channel VLAN filtering. */
  CTRL_VLAN: 19,
  /** Extra RX mode control support. */
  CTRL_RX_EXTRA: 20,
  /** Driver can send gratuitous packets. */
  GUEST_ANNOUNCE: 21,
  /** Device supports multiqueue with automatic receive steering. */
  MQ: 22,
  /** Set MAC address through the control channel. */
  CTRL_MAC_ADDR: 23,
  /** Device can provide device-level statistics (newer than the Linux 6.1 headers). */
  DEVICE_STATS: 50,
  /** Device supports virtqueue notification coalescing (newer than the Linux 6.1 headers). */
  VQ_NOTF_COAL: 52,
  /** Device supports notifications coalescing. */
  NOTF_COAL: 53,
  /** Driver can receive USOv4 packets (newer than the Linux 6.1 headers). */
  GUEST_USO4: 54,
  /** Driver can receive USOv6 packets (newer than the Linux 6.1 headers). */
  GUEST_USO6: 55,
  /** Device can receive USO packets (newer than the Linux 6.1 headers). */
  HOST_USO: 56,
  /** Device can report per-packet hash value and type. */
  HASH_REPORT: 57,
  /** Driver provides the exact `hdr_len` (newer than the Linux 6.1 headers). */
  GUEST_HDRLEN: 59,
  /** Device supports RSS receive steering. */
  RSS: 60,
  /** Device can process duplicated ACKs and report coalesced segments. */
  RSC_EXT: 61,
  /** Device may act as a standby for a primary device with the same MAC. */
  STANDBY: 62,
  /** Device reports speed and duplex. */
  SPEED_DUPLEX: 63,
} as const;
/** One virtio-net feature bit number. */
export type NetFeature = (typeof NetFeature)[keyof typeof NetFeature];

/** `struct virtio_net_hdr_v1`: the header in front of every frame (VERSION_1). §5.1.6 */
export const NetHdr = {
  /** Size in bytes with VERSION_1 or MRG_RXBUF. */
  SIZE: 12,
  /** Size of the legacy header without `num_buffers`. */
  LEGACY_SIZE: 10,
  /** `u8 flags`: {@link NetHdrFlags}. */
  FLAGS: 0,
  /** `u8 gso_type`: {@link NetGsoType}. */
  GSO_TYPE: 1,
  /** `le16 hdr_len`. */
  HDR_LEN: 2,
  /** `le16 gso_size`. */
  GSO_SIZE: 4,
  /** `le16 csum_start`. */
  CSUM_START: 6,
  /** `le16 csum_offset`. */
  CSUM_OFFSET: 8,
  /** `le16 num_buffers`. */
  NUM_BUFFERS: 10,
} as const;

/**
 * `struct virtio_net_hdr_v1_hash`: the header with hash report fields, used when
 * VIRTIO_NET_F_HASH_REPORT is negotiated. The first 12 bytes are {@link NetHdr}.
 *
 * @see VIRTIO 1.3 §5.1.6 "Device Operation"
 */
export const NetHdrHash = {
  /** Size in bytes. */
  SIZE: 20,
  /** `le32 hash_value`. */
  HASH_VALUE: 12,
  /** `le16 hash_report`: which hash type was calculated. */
  HASH_REPORT: 16,
  /** `le16 padding_reserved`. */
  PADDING: 18,
} as const;

/** `virtio_net_hdr.flags`. §5.1.6 */
export const NetHdrFlags = {
  /** Checksum from `csum_start` must be computed and placed at `csum_offset`. */
  NEEDS_CSUM: 1,
  /** Checksum is already valid (receive side). */
  DATA_VALID: 2,
  /** RSC information is in the csum fields. */
  RSC_INFO: 4,
} as const;
/** One net header flag. */
export type NetHdrFlags = (typeof NetHdrFlags)[keyof typeof NetHdrFlags];

/** `virtio_net_hdr.gso_type`. §5.1.6 */
export const NetGsoType = {
  /** Not a GSO frame. */
  NONE: 0,
  /** TCPv4 segmentation. */
  TCPV4: 1,
  /** UDP fragmentation offload. */
  UDP: 3,
  /** TCPv6 segmentation. */
  TCPV6: 4,
  /** UDP segmentation (USO). */
  UDP_L4: 5,
  /** Bit: TCP has ECN set. */
  ECN: 0x80,
} as const;
/** One GSO type. */
export type NetGsoType = (typeof NetGsoType)[keyof typeof NetGsoType];

/** Device configuration layout `struct virtio_net_config`. §5.1.4 */
export const NetConfig = {
  /** `u8 mac[6]`. */
  MAC: 0,
  /** `le16 status`: {@link NetStatus}. */
  STATUS: 6,
  /** `le16 max_virtqueue_pairs`. */
  MAX_VIRTQUEUE_PAIRS: 8,
  /** `le16 mtu`. */
  MTU: 10,
  /** `le32 speed` in Mbit/s. */
  SPEED: 12,
  /** `u8 duplex`. */
  DUPLEX: 16,
  /** `u8 rss_max_key_size`. */
  RSS_MAX_KEY_SIZE: 17,
  /** `le16 rss_max_indirection_table_length`. */
  RSS_MAX_INDIRECTION_TABLE_LENGTH: 18,
  /** `le32 supported_hash_types`. */
  SUPPORTED_HASH_TYPES: 20,
  /** Size up to `supported_hash_types` (as in Linux 6.1). */
  SIZE: 24,
} as const;

/** `virtio_net_config.status` bits. §5.1.4 */
export const NetStatus = {
  /** Link is up. */
  LINK_UP: 1,
  /** The driver should send a gratuitous announcement. */
  ANNOUNCE: 2,
} as const;
/** One net status bit. */
export type NetStatus = (typeof NetStatus)[keyof typeof NetStatus];

/** Control-queue command classes. §5.1.6.5 */
export const NetCtrlClass = {
  /** Packet receive filtering. */
  RX: 0,
  /** MAC address filtering. */
  MAC: 1,
  /** VLAN filtering. */
  VLAN: 2,
  /** Gratuitous packet sending. */
  ANNOUNCE: 3,
  /** Multiqueue. */
  MQ: 4,
  /** Offload state configuration. */
  GUEST_OFFLOADS: 5,
  /** Notification coalescing (VIRTIO_NET_F_NOTF_COAL). */
  NOTF_COAL: 6,
} as const;
/** One control class. */
export type NetCtrlClass = (typeof NetCtrlClass)[keyof typeof NetCtrlClass];

/** Control-queue commands, by class. §5.1.6.5 */
export const NetCtrlCmd = {
  /** RX class: promiscuous mode on/off. */
  RX_PROMISC: 0,
  /** RX class: all-multicast on/off. */
  RX_ALLMULTI: 1,
  /** RX class: all-unicast on/off. */
  RX_ALLUNI: 2,
  /** RX class: no multicast. */
  RX_NOMULTI: 3,
  /** RX class: no unicast. */
  RX_NOUNI: 4,
  /** RX class: no broadcast. */
  RX_NOBCAST: 5,
  /** MAC class: set the unicast and multicast filter tables. */
  MAC_TABLE_SET: 0,
  /** MAC class: set the default MAC address. */
  MAC_ADDR_SET: 1,
  /** VLAN class: add a VLAN ID. */
  VLAN_ADD: 0,
  /** VLAN class: remove a VLAN ID. */
  VLAN_DEL: 1,
  /** ANNOUNCE class: the driver acknowledges the announcement. */
  ANNOUNCE_ACK: 0,
  /** MQ class: set the number of queue pairs. */
  MQ_VQ_PAIRS_SET: 0,
  /** MQ class: configure receive-side scaling (VIRTIO_NET_F_RSS). */
  MQ_RSS_CONFIG: 1,
  /** MQ class: configure hash reporting (VIRTIO_NET_F_HASH_REPORT). */
  MQ_HASH_CONFIG: 2,
  /** GUEST_OFFLOADS class: set offloads. */
  GUEST_OFFLOADS_SET: 0,
  /** NOTF_COAL class: set transmit coalescing parameters. */
  NOTF_COAL_TX_SET: 0,
  /** NOTF_COAL class: set receive coalescing parameters. */
  NOTF_COAL_RX_SET: 1,
} as const;

/** Limits of `MQ_VQ_PAIRS_SET`. §5.1.6.5.5 */
export const NetMqPairs = {
  /** Minimum number of queue pairs. */
  MIN: 1,
  /** Maximum number of queue pairs. */
  MAX: 0x8000,
} as const;

/** Control-queue ack byte. §5.1.6.5 */
export const NetCtrlAck = {
  /** Command succeeded. */
  OK: 0,
  /** Command failed. */
  ERR: 1,
} as const;
/** One ack value. */
export type NetCtrlAck = (typeof NetCtrlAck)[keyof typeof NetCtrlAck];

/** `struct virtio_net_ctrl_hdr { u8 class; u8 command; }`. §5.1.6.5 */
export const NetCtrlHdr = {
  /** Size in bytes. */
  SIZE: 2,
  /** `u8 class`. */
  CLASS: 0,
  /** `u8 command`. */
  COMMAND: 1,
} as const;
