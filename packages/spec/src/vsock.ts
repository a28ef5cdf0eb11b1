/**
 * virtio-vsock (socket device) constants and layouts.
 * @see VIRTIO 1.3 §5.10 "Socket Device"
 * @module
 */

/** Virtqueue indices of the socket device. §5.10.2 */
export const VsockQueue = {
  /** Packets from the device to the driver. */
  RX: 0,
  /** Packets from the driver to the device. */
  TX: 1,
  /** Events from the device ({@link VsockEvent}). */
  EVENT: 2,
} as const;
/** One socket-device queue index. */
export type VsockQueue = (typeof VsockQueue)[keyof typeof VsockQueue];

/** virtio-vsock feature bits. §5.10.3 */
export const VsockFeature = {
  /** Stream socket type is supported (newer than the Linux 6.1 headers). */
  STREAM: 0,
  /** Seqpacket socket type is supported. */
  SEQPACKET: 1,
  /** Stream socket type is not implied (newer than the Linux 6.1 headers). */
  NO_IMPLIED_STREAM: 2,
} as const;
/** One virtio-vsock feature bit number. */
export type VsockFeature = (typeof VsockFeature)[keyof typeof VsockFeature];

/** Device configuration `struct virtio_vsock_config`. §5.10.4 */
export const VsockConfig = {
  /** `le64 guest_cid`: the guest's context ID; the upper 32 bits are reserved and zero. */
  GUEST_CID: 0,
  /** Size in bytes. */
  SIZE: 8,
} as const;

/**
 * Context IDs the standard reserves: none of them can be a guest's `guest_cid`. Names and
 * meanings are those of Linux `<linux/vm_sockets.h>` (`VMADDR_CID_*`). 0xffffffffffffffff is
 * reserved too; with the upper 32 bits of a CID reserved and zero it never appears.
 *
 * @see VIRTIO 1.3 §5.10.4 "Device configuration layout"
 */
export const VsockCid = {
  /** Reserved; Linux: the hypervisor. */
  HYPERVISOR: 0,
  /** Reserved; Linux: local loopback. */
  LOCAL: 1,
  /** Well-known CID of the host. */
  HOST: 2,
  /** Reserved; Linux: "any" when binding. */
  ANY: 0xffffffff,
} as const;

/** Packet header `struct virtio_vsock_hdr`, in front of every packet on rx and tx. §5.10.6 */
export const VsockHdr = {
  /** Size in bytes. */
  SIZE: 44,
  /** `le64 src_cid`. */
  SRC_CID: 0,
  /** `le64 dst_cid`. */
  DST_CID: 8,
  /** `le32 src_port`. */
  SRC_PORT: 16,
  /** `le32 dst_port`. */
  DST_PORT: 20,
  /** `le32 len`: payload length in bytes. */
  LEN: 24,
  /** `le16 type`: {@link VsockType}. */
  TYPE: 28,
  /** `le16 op`: {@link VsockOp}. */
  OP: 30,
  /** `le32 flags`: {@link VsockShutdownFlags} or {@link VsockSeqFlags}, depending on `op`. */
  FLAGS: 32,
  /** `le32 buf_alloc`: the sender's total receive buffer space for this socket. */
  BUF_ALLOC: 36,
  /** `le32 fwd_cnt`: the sender's free-running count of bytes received. */
  FWD_CNT: 40,
} as const;

/** `virtio_vsock_hdr.type`. §5.10.6.2 "Addressing" */
export const VsockType = {
  /** Stream socket. */
  STREAM: 1,
  /** Seqpacket socket. */
  SEQPACKET: 2,
} as const;
/** One socket type. */
export type VsockType = (typeof VsockType)[keyof typeof VsockType];

/** `virtio_vsock_hdr.op`. §5.10.6 */
export const VsockOp = {
  /** Invalid. */
  INVALID: 0,
  /** Connect request. */
  REQUEST: 1,
  /** Connect response. */
  RESPONSE: 2,
  /** Reset the connection. */
  RST: 3,
  /** Shut down one or both directions ({@link VsockShutdownFlags}). */
  SHUTDOWN: 4,
  /** Payload. */
  RW: 5,
  /** Tell the peer our credit information. */
  CREDIT_UPDATE: 6,
  /** Ask the peer for its credit information. */
  CREDIT_REQUEST: 7,
} as const;
/** One vsock operation. */
export type VsockOp = (typeof VsockOp)[keyof typeof VsockOp];

/**
 * `flags` masks of a SHUTDOWN packet. The standard names bit numbers
 * (`VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE` 0, `_SEND` 1); these are the masks, as Linux defines them.
 *
 * @see VIRTIO 1.3 §5.10.6.5 "Stream Sockets"
 */
export const VsockShutdownFlags = {
  /** The peer will receive no more data. */
  RECEIVE: 1,
  /** The peer will send no more data. */
  SEND: 2,
} as const;

/** `flags` masks of an RW packet on a seqpacket socket. §5.10.6.6 "Seqpacket Sockets" */
export const VsockSeqFlags = {
  /** Last packet of a message. */
  EOM: 1,
  /** Last packet of a record. */
  EOR: 2,
} as const;

/** Event `struct virtio_vsock_event` on the event queue. §5.10.6.7 */
export const VsockEvent = {
  /** `le32 id`: {@link VsockEventId}. */
  ID: 0,
  /** Size in bytes. */
  SIZE: 4,
} as const;

/** `virtio_vsock_event.id`. §5.10.6.7 */
export const VsockEventId = {
  /** The device's transport was reset (e.g. after migration): connections are gone, re-read the CID. */
  TRANSPORT_RESET: 0,
} as const;
/** One vsock event ID. */
export type VsockEventId = (typeof VsockEventId)[keyof typeof VsockEventId];
