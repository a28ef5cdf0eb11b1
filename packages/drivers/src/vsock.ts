/**
 * virtio-vsock driver (guest side): {@link VsockDriver}, stream connections to the host.
 * @see VIRTIO 1.3 §5.10 "Socket Device"
 * @module
 */
export {
  VSOCK_DRIVER_FEATURES,
  VsockConnection,
  VsockConnectionError,
  type VsockConnectionErrorCode,
  VsockDeviceFault,
  type VsockDeviceFaultCode,
  VsockDriver,
  type VsockDriverOptions,
  type VsockDriverStats,
  type VsockListener,
} from "./vsock-driver.js";
