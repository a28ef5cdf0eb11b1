/**
 * The vhost fast path: a device's data plane (ring processing and back-end I/O) in its own
 * worker thread, sharing guest memory (SharedArrayBuffer) with the VMM thread. Kicks are
 * ioeventfd-like doorbell words signalled with `Atomics.notify`, interrupts irqfd-like words
 * signalled back; the VMM thread keeps the control plane, talking to the worker with a
 * vhost-style protocol (`<linux/vhost.h>`, QEMU's vhost-user).
 *
 * @packageDocumentation
 */
export * from "./backend.js";
export * from "./blk.js";
export * from "./net.js";
export * from "./net-channel.js";
export * from "./protocol.js";
export * from "./vhost-device.js";
