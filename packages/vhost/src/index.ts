/**
 * The vhost fast path: a device's data plane (ring processing and back-end I/O) in its own
 * worker thread, sharing guest memory (SharedArrayBuffer) with the VMM thread. Kicks are
 * ioeventfd-like doorbell words signalled with `Atomics.notify`, interrupts irqfd-like words
 * signalled back; the VMM thread keeps the control plane, talking to the worker with a
 * vhost-style protocol (`<linux/vhost.h>`, QEMU's vhost-user).
 *
 * @packageDocumentation
 */
export { VhostBackend, type VhostBackendOptions } from "./backend.js";
export {
  blkDescription,
  createBlkModel,
  createVhostBlk,
  DescriptionDisk,
  type VhostBlkArgs,
  type VhostBlkBackendSpec,
  type VhostBlkDisk,
} from "./blk.js";
export {
  ChannelNetBackend,
  createNetModel,
  createVhostNet,
  NetStateWord,
  type VhostNetArgs,
  VhostNetDevice,
  VhostNetModel,
  type VhostNetOptions,
  type VhostNetPumpStats,
  type VhostNetStats,
} from "./net.js";
export {
  ChannelWord,
  FrameChannel,
  type FrameChannelHandle,
  type FrameChannelStats,
} from "./net-channel.js";
export {
  ControlWord,
  type VhostControlBlock,
  VhostError,
  type VhostErrorCode,
  type VhostEvent,
  type VhostMemoryRegion,
  type VhostMessage,
  type VhostReply,
  type VhostRequest,
  type VhostRequestType,
} from "./protocol.js";
export {
  VhostDevice,
  type VhostDeviceOptions,
  type VhostStats,
  type VhostWorkerSpec,
} from "./vhost-device.js";
