/**
 * The vocabulary of the virtio-net driver: its options, counters, features and typed errors.
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";
import { Feature, featureMask, NetCtrlCmd, NetFeature } from "@virtio-ts/spec";

/** Why the net driver distrusts what the device did. */
export type NetDeviceFaultCode =
  /** The device is not a network device (DeviceID is not 1). */
  | "net-not-net"
  /** A configuration field is unusable (`mtu` below 68, `max_virtqueue_pairs` out of range). */
  | "net-bad-config"
  /** A used length shorter than the header, or longer than the buffer. */
  | "net-bad-used-len"
  /** `num_buffers` is 0, above 1 without MRG_RXBUF, or more than the queue can hold. */
  | "net-bad-num-buffers"
  /** A received frame shorter than 14 or longer than `mtu + 14` bytes. */
  | "net-bad-frame"
  /** A received header with `gso_type` set (no GUEST_TSO/UFO was negotiated) or unusable NEEDS_CSUM. */
  | "net-bad-header"
  /** A control command's ack byte is neither VIRTIO_NET_OK nor VIRTIO_NET_ERR. */
  | "net-bad-ack"
  /** The device corrupted a ring (a `RingError` while reaping): the driver stops. */
  | "net-ring-broken"
  /** The device set DEVICE_NEEDS_RESET (§2.1.2): the driver stops. */
  | "net-needs-reset";

/**
 * The device broke the virtio-net protocol (drivers distrust devices). Raised at construction
 * for a bad device or configuration; recorded in {@link NetDriver.lastFault} (and counted) for
 * a malformed received buffer, which is dropped; and, for "net-ring-broken" /
 * "net-needs-reset", the rejection of every pending and later operation.
 */
export class NetDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: NetDeviceFaultCode;
  /** The offending value (a length, `num_buffers`, ack byte, config field or DeviceID). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   */
  constructor(code: NetDeviceFaultCode, message: string, value: number) {
    super(`${code}: ${message}`);
    this.code = code;
    this.value = value;
  }
}

/**
 * A control command failed (VIRTIO 1.3 §5.1.6.5): the device answered VIRTIO_NET_ERR
 * ("net-ctrl-err"), or the feature it needs was not negotiated so it was never sent
 * ("net-ctrl-unsupported").
 */
export class NetCtrlError extends VirtioError {
  /** Which of the two. */
  readonly code: "net-ctrl-err" | "net-ctrl-unsupported";
  /** The command class (`NetCtrlClass`). */
  readonly cls: number;
  /** The command ({@link NetCtrlCmd}). */
  readonly cmd: number;

  /**
   * @param code - device error or not negotiated
   * @param cls - command class
   * @param cmd - command
   */
  constructor(code: "net-ctrl-err" | "net-ctrl-unsupported", cls: number, cmd: number) {
    super(`virtio-net control command ${cls}.${cmd} failed: ${code}`);
    this.code = code;
    this.cls = cls;
    this.cmd = cmd;
  }
}

/** Options of a {@link NetDriver}. */
export interface NetDriverOptions {
  /**
   * Guest address of the driver-owned ring area, {@link NetDriver.ringBytes} bytes, 16-aligned:
   * one area per queue (every receive and transmit queue of the pairs set up, then the control
   * queue).
   */
  readonly ringBase: number;
  /** Size of every queue, a power of 2 (default min(256, QueueNumMax)); capped per queue by QueueNumMax. */
  readonly queueSize?: number;
  /** Queue pairs to set up at most (default 1; VIRTIO_NET_F_MQ is accepted only above 1). */
  readonly maxQueuePairs?: number;
  /**
   * Receive buffers posted per receive queue: at least what one largest frame needs, at most the
   * queue size (default: half the queue size, or twice what a largest frame needs if more).
   */
  readonly rxBuffers?: number;
  /** Received frames buffered for {@link NetDriver.frames} before reaping stops (default 256). */
  readonly rxQueueLimit?: number;
  /** Accept VIRTIO_NET_F_MRG_RXBUF when offered (default true). */
  readonly mrgRxbuf?: boolean;
  /** Accept VIRTIO_NET_F_CSUM (checksum offload on transmit) when offered (default true). */
  readonly csum?: boolean;
  /** Accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
  /** Accept VIRTIO_F_EVENT_IDX when offered (default true). */
  readonly eventIdx?: boolean;
  /** MAC to use when the device offers no VIRTIO_NET_F_MAC (default: random, locally administered). */
  readonly mac?: Uint8Array;
  /**
   * Called when the device asks for an announcement (VIRTIO_NET_S_ANNOUNCE, §5.1.6.5.4), before
   * the driver acknowledges it: send gratuitous ARP / neighbour advertisements here.
   */
  readonly onAnnounce?: () => void;
}

/** Per-frame transmit options of {@link NetDriver.trySend} / {@link NetDriver.send}. */
export interface NetSendOptions {
  /**
   * Ask for checksum completion (VIRTIO_NET_HDR_F_NEEDS_CSUM, §5.1.6.2): the checksum field at
   * `csumStart + csumOffset` holds the pseudo-header sum, and the one's complement sum from
   * `csumStart` to the end of the frame goes there. Done by the device with VIRTIO_NET_F_CSUM,
   * otherwise by the driver before sending.
   */
  readonly csum?: NetCsumRequest;
}

/** Where a partial checksum starts and where it goes (`csum_start` / `csum_offset`, §5.1.6.2). */
export interface NetCsumRequest {
  /** Offset in the frame where summing starts (`csum_start`). */
  readonly start: number;
  /** Offset of the 16-bit checksum field from `start` (`csum_offset`). */
  readonly offset: number;
}

/** Counters of a {@link NetDriver} (mutated in place). */
export interface NetDriverStats {
  /** Frames put on a transmit queue. */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
  /** Frames received and queued for {@link NetDriver.frames}. */
  rxFrames: number;
  /** Bytes of those frames. */
  rxBytes: number;
  /** Malformed received buffers dropped (each a {@link NetDeviceFault}, the last one kept). */
  rxFaults: number;
  /** Announcements acknowledged. */
  announcements: number;
}

/** The feature bits {@link NetDriver} accepts when offered (§5.1.3), before options. */
export const NET_DRIVER_FEATURES: bigint = [
  NetFeature.MAC,
  NetFeature.STATUS,
  NetFeature.MTU,
  NetFeature.MRG_RXBUF,
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.CTRL_VQ,
  NetFeature.CTRL_RX,
  NetFeature.CTRL_RX_EXTRA,
  NetFeature.CTRL_MAC_ADDR,
  NetFeature.GUEST_ANNOUNCE,
  NetFeature.MQ,
  Feature.RING_EVENT_IDX,
  Feature.RING_PACKED,
].reduce((m, bit) => m | featureMask(bit), 0n);

/** The extra RX modes of VIRTIO_NET_F_CTRL_RX_EXTRA (§5.1.6.5.1). */
export type NetRxMode = "alluni" | "nomulti" | "nouni" | "nobcast";

/** The control command of each {@link NetRxMode} (internal). */
export const RX_MODE_CMD: Record<NetRxMode, number> = {
  alluni: NetCtrlCmd.RX_ALLUNI,
  nomulti: NetCtrlCmd.RX_NOMULTI,
  nouni: NetCtrlCmd.RX_NOUNI,
  nobcast: NetCtrlCmd.RX_NOBCAST,
};
