/**
 * What the virtio-net driver's transmit, receive and control paths share (internal): the
 * transport, guest memory and slots, the negotiated features, the queues, and the stop state.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import { hasFeature } from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import type { NetDeviceFault, NetDriverStats } from "./net-driver-types.js";
import type { SlabAllocator } from "./slab.js";

/** A control command on its way (the control queue's token). */
export interface CtrlReq {
  readonly cls: number;
  readonly cmd: number;
  readonly data: Uint8Array;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
  slot: number;
}

/** The driver's shared state (internal). */
export class NetDriverCore {
  readonly t: DriverTransport;
  readonly mem: GuestMemory;
  readonly slab: SlabAllocator;
  readonly stats: NetDriverStats;
  readonly features: bigint;
  /** `virtio_net_hdr` length (12, or 10 for a legacy device without MRG_RXBUF). */
  readonly hdrLen: number;
  readonly mrg: boolean;
  /** `mtu + 14`. */
  readonly maxFrame: number;
  /**
   * Bytes skipped at the start of each slot before the `virtio_net_hdr`, so the frame after
   * it starts 8-aligned in guest memory (4 for the 12-byte header). V8 copies to and from
   * shared memory byte by byte when the two sides differ in alignment modulo 8; an aligned
   * frame is copied as words. 0 when a slot has no room to spare (without MRG_RXBUF a slot
   * must hold a whole frame).
   */
  readonly lead: number;
  readonly rxQ: DriverQueue<number>[] = [];
  readonly txQ: DriverQueue<number>[] = [];
  ctrlQ: DriverQueue<CtrlReq> | undefined = undefined;
  ctrlIndex = 2;
  /** Queue pairs in use. */
  pairs = 1;
  /** Set when the driver stopped: every pending and later operation fails with it. */
  broken: NetDeviceFault | undefined = undefined;

  constructor(
    t: DriverTransport,
    mem: GuestMemory,
    slab: SlabAllocator,
    stats: NetDriverStats,
    features: bigint,
    hdrLen: number,
    mrg: boolean,
    maxFrame: number,
  ) {
    this.t = t;
    this.mem = mem;
    this.slab = slab;
    this.stats = stats;
    this.features = features;
    this.hdrLen = hdrLen;
    this.mrg = mrg;
    this.maxFrame = maxFrame;
    const lead = (8 - (hdrLen & 7)) & 7;
    this.lead = mrg || slab.slotSize >= lead + hdrLen + maxFrame ? lead : 0;
  }

  /** Whether feature bit `bit` was negotiated. */
  has(bit: number): boolean {
    return hasFeature(this.features, bit);
  }

  /** Publish every queue and notify the device where it asked to be. */
  kick(): void {
    if (this.broken !== undefined) return;
    for (let p = 0; p < this.rxQ.length; p++) {
      if (this.rxQ[p]!.publish()) this.t.notify(2 * p);
      if (this.txQ[p]!.publish()) this.t.notify(2 * p + 1);
    }
    if (this.ctrlQ?.publish()) this.t.notify(this.ctrlIndex);
  }
}
