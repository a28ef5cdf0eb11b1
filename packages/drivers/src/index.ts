/**
 * virtio drivers (guest side) over `@virtio-ts/transport`. The `./blk` subpath holds the
 * block driver and its slab allocator.
 *
 * @packageDocumentation
 */
export {
  BALLOON_PFNS_PER_REQUEST,
  BalloonDeviceFault,
  type BalloonDeviceFaultCode,
  BalloonDriver,
  type BalloonDriverOptions,
  type BalloonDriverStats,
  type BalloonPageAllocator,
  type BalloonStatsSample,
} from "./balloon-driver.js";
export {
  BLK_DRIVER_FEATURES,
  BlkDeviceFault,
  type BlkDeviceFaultCode,
  BlkDriver,
  type BlkDriverOptions,
  BlkStatusError,
} from "./blk-driver.js";
export {
  CONSOLE_DRIVER_FEATURES,
  ConsoleDeviceFault,
  type ConsoleDeviceFaultCode,
  ConsoleDriver,
  type ConsoleDriverOptions,
  type ConsoleDriverStats,
  type ConsolePortEvent,
  type ConsolePortInfo,
} from "./console-driver.js";
export { NetDriver } from "./net-driver.js";
export {
  NET_DRIVER_FEATURES,
  type NetCsumRequest,
  NetCtrlError,
  NetDeviceFault,
  type NetDeviceFaultCode,
  type NetDriverOptions,
  type NetDriverStats,
  type NetRxMode,
  type NetSendOptions,
} from "./net-driver-types.js";
export {
  RngDeviceFault,
  type RngDeviceFaultCode,
  RngDriver,
  type RngDriverOptions,
} from "./rng-driver.js";
export { SlabAllocator } from "./slab.js";
