/**
 * Virtqueues: split (and packed) rings, driver and device sides, with validation of everything
 * the other side writes and typed errors for hostile input.
 *
 * @packageDocumentation
 */
export { DescriptorChain } from "./chain.js";
export { createDeviceQueue } from "./create-queue.js";
export {
  AvailIndexJumpError,
  BufferOutOfBoundsError,
  ChainError,
  ChainTooLongError,
  DescriptorLoopError,
  EventOffsetOutOfRangeError,
  HeadInFlightError,
  HeadOutOfRangeError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NextOutOfRangeError,
  PackedChainUnterminatedError,
  PackedDescNotAvailableError,
  PackedOvercommitError,
  QueueConfigError,
  ReadableAfterWritableError,
  RingError,
  TotalLengthOverflowError,
  UsedIdNotInFlightError,
  UsedIdOutOfRangeError,
  UsedIndexJumpError,
  UsedLenTooLargeError,
  VirtqueueError,
} from "./errors.js";
export { ForwardingDeviceQueue } from "./forwarding-queue.js";
export { GatedDeviceQueue, type GatedDeviceQueueOptions } from "./gated-queue.js";
export { PackedDeviceQueue } from "./packed-device.js";
export { type PackedDriverOptions, PackedDriverQueue } from "./packed-driver.js";
export { NO_RING_FEATURES, ringFeatures } from "./ring-features.js";
export { checkQueueSizeOption, ringAreaBytes, ringLayoutAt } from "./ring-placement.js";
export { type SplitDeviceOptions, SplitDeviceQueue } from "./split-device.js";
export {
  type IndirectArea,
  indirectAreaSize,
  type SplitDriverOptions,
  SplitDriverQueue,
} from "./split-driver.js";
export type {
  DeviceQueue,
  DriverQueue,
  InFlightChain,
  QueueLayout,
  QueueState,
  RingFeatures,
  Segment,
} from "./types.js";
