/**
 * virtio-blk: the {@link BlkDevice} model and the {@link BlockBackend} it delegates I/O to.
 * @see VIRTIO 1.3 §5.2 "Block Device"
 * @module
 */
export { BackendError, type BackendErrorCode, BlockGuard } from "./backend-error.js";
export { type BlockBackend, sectorRangeFits } from "./blk-backend.js";
export {
  BlkDevice,
  type BlkDeviceOptions,
  type BlkDeviceStats,
  BlkGuestRequestError,
  type BlkGuestRequestErrorCode,
} from "./blk-device.js";
