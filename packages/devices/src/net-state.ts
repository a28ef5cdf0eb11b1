/**
 * What the virtio-net device negotiated and holds, shared by its receive, transmit and control
 * paths ({@link NetState}, internal), its counters and its guest-fault error.
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";
import { ETH_ALEN, Feature, hasFeature, NetFeature, NetHdr } from "@virtio-ts/spec";
import type { DeviceContext } from "@virtio-ts/transport";
import { ChainError, type DescriptorChain, type DeviceQueue } from "@virtio-ts/virtqueue";
import { RxFilter } from "./net-filter.js";

/** Why a guest's transmit frame, receive buffer or control command was refused. */
export type NetGuestFaultCode =
  /** A transmit chain shorter than the negotiated `virtio_net_hdr`. */
  | "net-tx-short-header"
  /** A transmit frame shorter than an Ethernet header (14 bytes), e.g. a header-only chain. */
  | "net-tx-runt"
  /** A transmit frame longer than `mtu + 14`. */
  | "net-tx-oversize"
  /** `gso_type` is not VIRTIO_NET_HDR_GSO_NONE (no HOST_TSO / HOST_UFO is offered). */
  | "net-tx-gso"
  /** NEEDS_CSUM without VIRTIO_NET_F_CSUM, or `csum_start + csum_offset + 2` past the frame. */
  | "net-tx-bad-csum"
  /** A receive buffer too small for the header (or, without MRG_RXBUF, for the frame). */
  | "net-rx-small-buffer"
  /** A control command with no device-writable byte for the ack. */
  | "net-ctrl-no-ack";

/**
 * A guest fault the virtio-net device survived: one frame, receive buffer or control command
 * was malformed. Reported through `ctx.noteFault` (never thrown out of the device) and counted
 * in {@link NetDeviceStats}; the chain is completed and the device keeps serving.
 */
export class NetGuestFault extends VirtioError {
  /** @inheritdoc */
  readonly code: NetGuestFaultCode;
  /** The chain's id (split: head index; packed: buffer ID). */
  readonly head: number;
  /** The offending value (a length, `gso_type`, `csum_start + csum_offset`). */
  readonly value: number;

  /**
   * @param code - what is wrong
   * @param head - chain id
   * @param value - offending value
   */
  constructor(code: NetGuestFaultCode, head: number, value: number) {
    super(`virtio-net ${code} (chain ${head}, value ${value})`);
    this.code = code;
    this.head = head;
    this.value = value;
  }
}

/** Counters of a `NetDevice` (mutated in place). */
export interface NetDeviceStats {
  /** Frames handed to the back-end (accepted or not). */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
  /** Frames the back-end refused (`transmit` returned false or threw). */
  txBackendDrops: number;
  /** Transmit chains shorter than the header. */
  txShortHeader: number;
  /** Transmit frames shorter than 14 bytes (a header-only chain among them). */
  txRunt: number;
  /** Transmit frames longer than `mtu + 14`. */
  txOversize: number;
  /** Transmit frames with `gso_type` set. */
  txGso: number;
  /** Transmit frames with a bad NEEDS_CSUM request. */
  txBadCsum: number;
  /** Frames copied into guest receive buffers. */
  rxFrames: number;
  /** Bytes of those frames (without the header). */
  rxBytes: number;
  /** `deliver` calls refused for want of a receive buffer (or before DRIVER_OK). */
  rxNoBuffer: number;
  /** Frames dropped by the receive filter (RX mode and MAC table, §5.1.6.5.1–2). */
  rxFiltered: number;
  /** Frames dropped because they are shorter than 14 or longer than `mtu + 14` bytes. */
  rxBadFrame: number;
  /** Frames dropped while the link is down. */
  rxLinkDown: number;
  /** Receive buffers returned unused because they were too small. */
  rxSmallBuffers: number;
  /** Control commands answered VIRTIO_NET_OK. */
  ctrlOk: number;
  /** Control commands answered VIRTIO_NET_ERR (or unanswerable). */
  ctrlErr: number;
  /** Malformed chains (`ChainError` from the ring) returned with length 0. */
  badChains: number;
}

/**
 * The device's shared state (internal): the configuration fields the driver can change (MAC,
 * status, active pairs), the receive filter, and the features negotiated at activation,
 * cached as plain fields (bigint tests are too slow for the per-frame path).
 */
export class NetState {
  /** The host's context while the device is active. */
  ctx: DeviceContext | undefined = undefined;
  /** Config `mac`. */
  readonly mac = new Uint8Array(ETH_ALEN);
  /** Config `status`. */
  status: number;
  /** Queue pairs in use (VQ_PAIRS_SET). */
  pairs = 1;
  /** `max_virtqueue_pairs`. */
  readonly maxQueuePairs: number;
  /** `mtu + 14`. */
  readonly maxFrame: number;
  /** Counters. */
  readonly stats: NetDeviceStats;
  /** The receive filter (§5.1.6.5.1, §5.1.6.5.2). */
  readonly filter: RxFilter;
  /** `virtio_net_hdr` length: 12, or 10 for a legacy driver without MRG_RXBUF. */
  hdrLen: number = NetHdr.SIZE;
  mrg = false;
  csum = false;
  ctrlRx = false;
  ctrlRxExtra = false;
  ctrlMacAddr = false;
  announce = false;
  mq = false;
  statusFeature = false;
  /** Index of the control queue. */
  ctrlIndex = 2;

  /**
   * @param maxQueuePairs - `max_virtqueue_pairs`
   * @param maxFrame - `mtu + 14`
   * @param tableEntries - entries of each MAC filter table
   * @param status - initial config `status`
   * @param stats - the device's counters
   */
  constructor(
    maxQueuePairs: number,
    maxFrame: number,
    tableEntries: number,
    status: number,
    stats: NetDeviceStats,
  ) {
    this.maxQueuePairs = maxQueuePairs;
    this.maxFrame = maxFrame;
    this.filter = new RxFilter(tableEntries);
    this.status = status;
    this.stats = stats;
  }

  /** Cache the negotiated features (at activation). */
  negotiate(f: bigint): void {
    this.mrg = hasFeature(f, NetFeature.MRG_RXBUF);
    // §5.1.6.1: the header is 12 bytes with VERSION_1 or MRG_RXBUF, else the legacy 10.
    this.hdrLen = this.mrg || hasFeature(f, Feature.VERSION_1) ? NetHdr.SIZE : NetHdr.LEGACY_SIZE;
    this.csum = hasFeature(f, NetFeature.CSUM);
    this.ctrlRx = hasFeature(f, NetFeature.CTRL_RX);
    this.ctrlRxExtra = hasFeature(f, NetFeature.CTRL_RX_EXTRA);
    this.ctrlMacAddr = hasFeature(f, NetFeature.CTRL_MAC_ADDR);
    this.announce = hasFeature(f, NetFeature.GUEST_ANNOUNCE);
    this.mq = hasFeature(f, NetFeature.MQ);
    this.statusFeature = hasFeature(f, NetFeature.STATUS);
    // §5.1.2: the control queue follows the last pair the device has (N = 1 without MQ).
    this.ctrlIndex = this.mq ? 2 * this.maxQueuePairs : 2;
  }

  /**
   * Pop the next chain into `c`. A malformed chain (`ChainError`) is returned with length 0,
   * counted, and skipped; a `RingError` propagates (the caller's guard sets NEEDS_RESET).
   */
  pop(ctx: DeviceContext, q: DeviceQueue, c: DescriptorChain): boolean {
    for (;;) {
      try {
        return q.pop(c);
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        this.stats.badChains++;
        ctx.noteFault(e);
        q.push(e.head, 0);
      }
    }
  }
}
