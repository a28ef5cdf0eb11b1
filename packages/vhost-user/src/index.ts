/**
 * vhost-user (QEMU docs/interop/vhost-user.rst) for virtio-ts: the message codec, a
 * connection with SCM_RIGHTS framing, the front-end, shared guest memory in a memfd, eventfds,
 * and {@link VhostUserDriverTransport}, which lets a virtio-ts driver (`BlkDriver`) drive a
 * real vhost-user back-end such as qemu-storage-daemon; and {@link VhostUserBlkBackend}, the
 * back-end role, which serves a `BlkDevice` to QEMU's vhost-user-blk front-end.
 *
 * The codec (`encode*` / `decode*`) is pure TypeScript. Everything that touches a socket,
 * memfd or eventfd needs the package's small native addon, loaded lazily on first use; without
 * it those calls throw {@link NativeAddonMissingError} with the command that builds it.
 *
 * @packageDocumentation
 */
export { VhostUserBackend, type VhostUserBackendOptions, VhostUserBlkBackend } from "./backend.js";
export { VhostUserConnection, type VhostUserConnectionHandlers } from "./connection.js";
export {
  VHOST_F_LOG_ALL,
  VHOST_USER_DEFAULT_PROTOCOL_FEATURES,
  VHOST_USER_DRIVER_TRANSPORT_FEATURES,
  type VhostUserDriverOptions,
  VhostUserDriverTransport,
} from "./driver-transport.js";
export {
  VhostUserBackendError,
  type VhostUserBackendReason,
  VhostUserError,
  type VhostUserErrorCode,
} from "./errors.js";
export { EventFd } from "./eventfd.js";
export {
  type MemoryRegionWithFd,
  VhostUserFrontend,
  type VhostUserFrontendOptions,
} from "./frontend.js";
export {
  type ConfigSpace,
  decodeConfig,
  decodeHeader,
  decodeMemoryTable,
  decodeSingleMemoryRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeMemoryTable,
  encodeMessage,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  type MemoryRegion,
  requestName,
  VHOST_MEMORY_MAX_REGIONS,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_MAX_FDS,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VHOST_VRING_F_LOG,
  VhostUserFlag,
  type VhostUserHeader,
  type VhostUserMessage,
  VhostUserPayloadSize,
  VhostUserProtocolFeature,
  VhostUserRequest,
  type VringAddr,
  type VringFd,
  type VringState,
} from "./messages.js";
export {
  BUILD_NATIVE_COMMAND,
  loadNative,
  NativeAddonMissingError,
  type NativeWatch,
  nativeAvailable,
  type VhostUserNative,
} from "./native.js";
export { VHOST_USER_BACKEND_PROTOCOL_FEATURES } from "./session.js";
export {
  createSharedMemory,
  type MappedFd,
  mapSharedFd,
  type SharedGuestMemory,
  type SharedMemoryOptions,
  type SharedRegion,
} from "./shared-memory.js";
