/**
 * virtio-vsock: the {@link VsockDevice} socket device model and its host side, streams shaped
 * like `node:net` ({@link VsockStream}, {@link VsockServer}).
 * @see VIRTIO 1.3 §5.10 "Socket Device"
 * @module
 */
export {
  VsockDevice,
  type VsockDeviceOptions,
  type VsockDeviceStats,
  VsockFault,
  type VsockFaultCode,
  VsockListenerError,
} from "./vsock-device.js";
export {
  type VsockConnectOptions,
  VsockEmitter,
  VsockError,
  type VsockErrorCode,
  type VsockEventListener,
  VsockServer,
  type VsockServerEvents,
  VsockStream,
  type VsockStreamEvents,
  type VsockStreamOwner,
} from "./vsock-stream.js";
