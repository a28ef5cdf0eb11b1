/**
 * virtio-balloon: the {@link BalloonDevice} model (inflate, deflate, memory statistics and free
 * page reporting) and the {@link BalloonHost} callbacks a VMM hears the balloon through.
 * @see VIRTIO 1.3 §5.5 "Traditional Memory Balloon Device"
 * @module
 */
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
