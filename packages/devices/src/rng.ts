/**
 * virtio-rng: the {@link RngDevice} entropy device model and the {@link EntropySource} it draws
 * random bytes from.
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */
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
