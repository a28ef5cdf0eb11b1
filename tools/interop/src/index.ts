/**
 * virtio-ts against real peers: boot Linux guests under QEMU (TCG) from a BusyBox initramfs
 * built in Node ({@link runGuest}, {@link buildInitramfs}), read captures with tshark
 * ({@link tsharkFields}), run an in-process virtio-net NIC ({@link createTsNic}) and a tiny IPv4 host that answers
 * ARP and ping ({@link Responder}).
 *
 * @packageDocumentation
 */

export {
  type Accelerator,
  type AcceleratorChoice,
  type ChooseAcceleratorOptions,
  chooseAccelerator,
  type KvmProbeResult,
} from "./accel.js";
export * from "./capture.js";
export * from "./guest.js";
export * from "./initramfs.js";
export * from "./responder.js";
export * from "./ts-nic.js";
