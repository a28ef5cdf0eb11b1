// What the demo's two threads agree on: where the queue lives, the doorbell words, and the
// messages the device thread sends back so the main thread can print them in order.
import { Feature, featureMask, splitAvailEventOffset, splitUsedEventOffset } from "@virtio-ts/spec";
import { type QueueLayout, ringFeatures } from "@virtio-ts/virtqueue";

/** Guest memory size: 64 KiB. */
export const MEM_SIZE = 0x10000;
/** A tiny queue so every index is easy to follow. */
export const QUEUE: QueueLayout = { size: 8, desc: 0x1000, driver: 0x1100, device: 0x1200 };
/** Both sides negotiated VIRTIO_F_EVENT_IDX: kicks and interrupts are suppressed by index. */
export const FEATURES = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
/** Guest address of `used_event` (driver-written, in the available ring). */
export const USED_EVENT = QUEUE.driver + splitUsedEventOffset(QUEUE.size);
/** Guest address of `avail_event` (device-written, in the used ring). */
export const AVAIL_EVENT = QUEUE.device + splitAvailEventOffset(QUEUE.size);

/** Int32 indices of the doorbell words (a separate small SharedArrayBuffer). */
export const Bell = {
  /** Driver → device notification counter (the ioeventfd analogue). */
  KICK: 0,
  /** Device → driver interrupt counter (the irqfd analogue). */
  IRQ: 1,
  /** Set to 1 to tell the device thread to exit. */
  STOP: 2,
  /** Number of words. */
  COUNT: 3,
} as const;

/** Lines the device printed while handling one wakeup (or going to sleep). */
export interface LinesReport {
  readonly type: "lines";
  readonly lines: readonly string[];
}

/** The device has re-enabled notifications, found nothing, and is about to sleep. */
export interface IdleReport {
  readonly type: "idle";
  readonly line: string;
}

/** The device's queue threw a typed error on guest input. */
export interface FaultReport {
  readonly type: "fault";
  readonly name: string;
  readonly scope: string;
  readonly code: string;
  readonly fields: Record<string, unknown>;
  readonly message: string;
}

/** Any message from the device thread. */
export type DeviceReport = LinesReport | IdleReport | FaultReport;

/** `0x…` */
export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
