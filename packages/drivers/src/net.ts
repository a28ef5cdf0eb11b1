/**
 * virtio-net driver entry point.
 * @module
 */
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
export { SlabAllocator } from "./slab.js";
