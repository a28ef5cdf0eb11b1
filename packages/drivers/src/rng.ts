/**
 * virtio-rng driver: {@link RngDriver}.
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */
export {
  RngDeviceFault,
  type RngDeviceFaultCode,
  RngDriver,
  type RngDriverOptions,
} from "./rng-driver.js";
export { SlabAllocator } from "./slab.js";
