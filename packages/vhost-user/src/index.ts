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
export * from "./backend.js";
export { VHOST_USER_BACKEND_PROTOCOL_FEATURES } from "./session.js";
export * from "./connection.js";
export * from "./driver-transport.js";
export * from "./errors.js";
export * from "./eventfd.js";
export * from "./frontend.js";
export * from "./messages.js";
export {
  BUILD_NATIVE_COMMAND,
  loadNative,
  NativeAddonMissingError,
  type NativeWatch,
  nativeAvailable,
  type VhostUserNative,
} from "./native.js";
export * from "./shared-memory.js";
