/**
 * virtio device models (the host side that consumes virtqueues) and the back-end interfaces
 * they delegate real I/O to. A back-end never sees a ring. The `./blk` subpath holds only the
 * block device.
 *
 * @packageDocumentation
 */
export { BackendError, type BackendErrorCode, BlockGuard } from "./backend-error.js";
export {
  BALLOON_STATS_MAX_BYTES,
  BalloonDevice,
  type BalloonDeviceOptions,
  type BalloonDeviceStats,
  type BalloonGuestStats,
  type BalloonHost,
  type BalloonRamRange,
  BalloonRequestError,
  type BalloonRequestErrorCode,
  BalloonStateError,
  type BalloonTimer,
} from "./balloon-device.js";
export { type BlockBackend, sectorRangeFits } from "./blk-backend.js";
export {
  BlkDevice,
  type BlkDeviceOptions,
  type BlkDeviceStats,
  BlkGuestRequestError,
  type BlkGuestRequestErrorCode,
} from "./blk-device.js";
export type { ConsoleBackend, ConsoleInputSink } from "./console-backend.js";
export {
  ConsoleDevice,
  type ConsoleDeviceOptions,
  type ConsoleDeviceStats,
  ConsoleFault,
  type ConsoleFaultCode,
  type ConsolePortOptions,
  type ConsolePortState,
} from "./console-device.js";
export {
  type ConsoleReadableStream,
  type ConsoleWritableStream,
  StreamConsoleBackend,
  type StreamConsoleBackendOptions,
} from "./console-stream.js";
export type { NetBackend, NetFrameSink } from "./net-backend.js";
export { NetDevice, type NetDeviceOptions } from "./net-device.js";
export type { NetRxFilter } from "./net-filter.js";
export { type NetDeviceStats, NetGuestFault, type NetGuestFaultCode } from "./net-state.js";
export { CryptoEntropySource, type CryptoLike, type EntropySource } from "./rng-backend.js";
export {
  RNG_MAX_REQUEST_BYTES,
  RngDevice,
  type RngDeviceOptions,
  type RngDeviceStats,
  RngRequestError,
  type RngRequestErrorCode,
  type RngTimer,
} from "./rng-device.js";
