/**
 * virtio-balloon driver: {@link BalloonDriver} follows the device's target with pages from a
 * {@link BalloonPageAllocator}, answers statistics requests and reports free pages.
 * @see VIRTIO 1.3 §5.5 "Traditional Memory Balloon Device"
 * @module
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
