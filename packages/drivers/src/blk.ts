/**
 * virtio-blk driver entry point.
 * @module
 */
export {
  BLK_DRIVER_FEATURES,
  BlkDeviceFault,
  type BlkDeviceFaultCode,
  BlkDriver,
  type BlkDriverOptions,
  BlkStatusError,
} from "./blk-driver.js";
export { SlabAllocator } from "./slab.js";
