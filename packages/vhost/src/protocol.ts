/**
 * The control protocol between the VMM thread (front-end) and a data-plane worker (back-end),
 * modelled on Linux's vhost ioctls (`<linux/vhost.h>`) and QEMU's vhost-user protocol
 * (docs/interop/vhost-user.rst): the same request names and ring state machine, carried as
 * typed structured-clone messages over a MessagePort instead of ioctls or a Unix socket.
 *
 * File descriptors become SharedArrayBuffer handles: memory regions (SET_MEM_TABLE) are the
 * guest's SharedArrayBuffers, and the kick / call eventfds (SET_VRING_KICK / SET_VRING_CALL) are
 * {@link SharedDoorbellHandle}s.
 *
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";
import type { SharedDoorbellHandle } from "@virtio-ts/transport";
import type { QueueState } from "@virtio-ts/virtqueue";

/** One guest memory region as SET_MEM_TABLE carries it (`struct vhost_memory_region`). */
export interface VhostMemoryRegion {
  /** Guest-physical address of the first byte (`guest_phys_addr`). */
  readonly guestBase: number;
  /** Size in bytes (`memory_size`). */
  readonly size: number;
  /** The shared backing store (the analogue of `userspace_addr` / the region's fd). */
  readonly buffer: SharedArrayBuffer;
  /** Offset of the region inside `buffer` (`mmap_offset`). */
  readonly byteOffset: number;
}

/**
 * The shared control block of one device, handed over with SET_OWNER. Int32 words, written
 * only with `Atomics`. See {@link ControlWord} for the layout.
 */
export interface VhostControlBlock {
  /** The words ({@link ControlWord.COUNT} of them, Int32). */
  readonly buffer: SharedArrayBuffer;
}

/**
 * Index of each Int32 word of the control block, and who writes it.
 *
 * - `ISR`: the interrupt status bits the worker sets (Atomics.or) before ringing a call
 *   doorbell; the VMM's device core reads and acknowledges it (see `DeviceNotifiers`).
 * - `EPOCH`: bumped by the VMM thread at each device reset. The worker captures it at
 *   activation and never touches guest memory again once it changed (it is the
 *   `DeviceContext.epoch` seen by the worker's model too).
 * - `BUSY`: 1 while the worker runs model code that may write guest memory (a kick or a
 *   back-end completion). After bumping `EPOCH`, the VMM waits (bounded) until it reads 0:
 *   with seq-cst atomics either the worker sees the new epoch before it writes, or the VMM
 *   sees BUSY and waits for the write to finish, so nothing lands after the reset returns.
 * - `KICKS_SEEN`, `INTERRUPTS`, `FAULTS`, `POLLS`: worker statistics (monotonic counters).
 */
export const ControlWord = {
  /** Interrupt status bits set by the worker (MMIO InterruptStatus). */
  ISR: 0,
  /** Device reset epoch, bumped by the VMM thread. */
  EPOCH: 1,
  /** 1 while the worker may be writing guest memory. */
  BUSY: 2,
  /** Kick doorbell wake-ups the worker handled. */
  KICKS_SEEN: 3,
  /** Used buffer notifications the worker sent. */
  INTERRUPTS: 4,
  /** Guest faults the worker's model reported. */
  FAULTS: 5,
  /** Busy-poll rounds that found work without a kick. */
  POLLS: 6,
  /** Number of words. */
  COUNT: 8,
} as const;

/** The request types, named after `<linux/vhost.h>` / vhost-user messages. */
export type VhostRequestType = VhostRequest["type"];

/**
 * A front-end → back-end request. Every request carries an `id` and gets exactly one
 * {@link VhostReply} with the same id (vhost-user's REPLY_ACK, always on).
 *
 * Ring state machine (vhost-user.rst "Ring states"): a ring is *stopped* until SET_VRING_ENABLE
 * enables it; its NUM, ADDR, BASE, KICK and CALL may change only while it is stopped;
 * GET_VRING_BASE stops it again (after its in-flight requests completed) and returns where it
 * stopped. The model starts serving enabled rings at SET_STATUS with DRIVER_OK (vhost-vdpa's
 * VHOST_VDPA_SET_STATUS, vhost-user's SET_STATUS).
 */
export type VhostRequest =
  | {
      /** VHOST_SET_OWNER: bind the back-end to this front-end; hands over the control block. */
      readonly type: "SET_OWNER";
      /** Request id. */
      readonly id: number;
      /** Shared words (interrupt status, epoch, statistics). */
      readonly control: VhostControlBlock;
    }
  | {
      /** VHOST_RESET_OWNER: forget features, memory table and rings; reset the model. */
      readonly type: "RESET_OWNER";
      /** Request id. */
      readonly id: number;
    }
  | {
      /** VHOST_GET_FEATURES: the device features the back-end's model supports. */
      readonly type: "GET_FEATURES";
      /** Request id. */
      readonly id: number;
    }
  | {
      /** VHOST_SET_FEATURES: the negotiated features (only before DRIVER_OK). */
      readonly type: "SET_FEATURES";
      /** Request id. */
      readonly id: number;
      /** Negotiated feature bits. */
      readonly features: bigint;
    }
  | {
      /** VHOST_SET_MEM_TABLE: the guest memory regions. */
      readonly type: "SET_MEM_TABLE";
      /** Request id. */
      readonly id: number;
      /** Regions, non-overlapping. */
      readonly regions: readonly VhostMemoryRegion[];
    }
  | {
      /** VHOST_SET_VRING_NUM: queue size of a stopped ring. */
      readonly type: "SET_VRING_NUM";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** Queue size. */
      readonly num: number;
    }
  | {
      /** VHOST_SET_VRING_ADDR: the three areas of a stopped ring (guest addresses). */
      readonly type: "SET_VRING_ADDR";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** Descriptor Area. */
      readonly desc: number;
      /** Driver Area. */
      readonly driver: number;
      /** Device Area. */
      readonly device: number;
    }
  | {
      /** VHOST_SET_VRING_BASE: where a stopped ring resumes (split: next avail index). */
      readonly type: "SET_VRING_BASE";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** Ring position(s) from GET_VRING_BASE, or zeros for a fresh ring. */
      readonly state: QueueState;
    }
  | {
      /**
       * VHOST_GET_VRING_BASE: stop the ring, wait (bounded) for its in-flight requests to
       * complete, and return its {@link QueueState}.
       */
      readonly type: "GET_VRING_BASE";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
    }
  | {
      /** VHOST_SET_VRING_KICK: the doorbell the driver rings (ioeventfd analogue). */
      readonly type: "SET_VRING_KICK";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** The kick word. */
      readonly doorbell: SharedDoorbellHandle;
    }
  | {
      /** VHOST_SET_VRING_CALL: the doorbell rung on a used buffer notification (irqfd analogue). */
      readonly type: "SET_VRING_CALL";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** The call word. */
      readonly doorbell: SharedDoorbellHandle;
    }
  | {
      /** VHOST_USER_SET_VRING_ENABLE: enable (start) or disable (stop, dropping in-flight) a ring. */
      readonly type: "SET_VRING_ENABLE";
      /** Request id. */
      readonly id: number;
      /** Queue index. */
      readonly index: number;
      /** Enable or disable. */
      readonly enable: boolean;
      /**
       * Disable only (a virtio-ts extension): the value of the control block's EPOCH word the
       * front-end set before sending this; the back-end serves under it from now on.
       */
      readonly epoch?: number;
    }
  | {
      /** VHOST_USER_SET_STATUS / VHOST_VDPA_SET_STATUS: DRIVER_OK activates the model. */
      readonly type: "SET_STATUS";
      /** Request id. */
      readonly id: number;
      /** The device status byte (only DRIVER_OK is acted upon). */
      readonly status: number;
      /**
       * A virtio-ts extension: the control block's EPOCH value at activation. The back-end
       * touches guest memory only while EPOCH still holds it (see {@link ControlWord}).
       */
      readonly epoch: number;
    };

/** Why the back-end refused a request (the errno of an ioctl). */
export type VhostErrorCode =
  /** The request arrived in a state where it is not allowed (e.g. before SET_OWNER). */
  | "vhost-bad-state"
  /** An argument is invalid (index, size, address, features, region). */
  | "vhost-bad-argument"
  /** GET_VRING_BASE: in-flight requests did not complete in time. */
  | "vhost-drain-timeout"
  /** The model factory failed in the worker. */
  | "vhost-factory"
  /** No reply in time. */
  | "vhost-timeout"
  /** The worker exited, threw or was terminated. */
  | "vhost-worker-died"
  /** The worker's model put the device into DEVICE_NEEDS_RESET. */
  | "vhost-device-failed";

/** A back-end → front-end reply to the request with the same `id`. */
export type VhostReply =
  | {
      /** Reply marker. */
      readonly type: "reply";
      /** The request's id. */
      readonly id: number;
      /** Success. */
      readonly ok: true;
      /** GET_FEATURES: bigint; GET_VRING_BASE: QueueState; otherwise undefined. */
      readonly value?: bigint | QueueState | undefined;
    }
  | {
      /** Reply marker. */
      readonly type: "reply";
      /** The request's id. */
      readonly id: number;
      /** Failure. */
      readonly ok: false;
      /** Why. */
      readonly code: VhostErrorCode;
      /** Detail. */
      readonly message: string;
    };

/**
 * An unsolicited back-end → front-end event: the model failed (the front-end sets
 * DEVICE_NEEDS_RESET, VIRTIO 1.3 §2.1.2) or changed its configuration (§2.5).
 */
export type VhostEvent =
  | {
      /** The worker's model called `ctx.fail`. */
      readonly type: "fail";
      /** The VirtioError's code. */
      readonly code: string;
      /** The VirtioError's message. */
      readonly message: string;
    }
  | {
      /** The worker's model called `ctx.notifyConfigChange`. */
      readonly type: "config-change";
    };

/** Everything the back-end posts. */
export type VhostMessage = VhostReply | VhostEvent;

/**
 * A vhost control failure: a refused or unanswered request, a dead worker, or a model failure
 * reported by the worker. The front-end turns it into DEVICE_NEEDS_RESET (it is a
 * `VirtioError`, so `DeviceContext.fail` accepts it).
 */
export class VhostError extends VirtioError {
  /** What went wrong. */
  readonly code: VhostErrorCode;
  /** The request type concerned, if any. */
  readonly request: VhostRequestType | undefined;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param request - the request concerned
   */
  constructor(code: VhostErrorCode, message: string, request?: VhostRequestType) {
    super(request === undefined ? message : `${request}: ${message}`);
    this.code = code;
    this.request = request;
  }
}
