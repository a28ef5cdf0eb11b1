/**
 * Transports for virtio devices: the transport-independent device core (status state machine,
 * feature negotiation, configuration space with generation counter, queue setup and reset,
 * interrupt status), the virtio-mmio and virtio-pci register files (device side, the VMM's
 * trap handler) and driver accessors, and doorbells for kicks and interrupts, in-thread or across threads.
 *
 * @packageDocumentation
 */
export * from "./device-core.js";
export * from "./doorbell.js";
export * from "./driver-transport.js";
export * from "./errors.js";
export * from "./mmio-device.js";
export * from "./mmio-driver.js";
export * from "./notification-data.js";
export * from "./pci-device.js";
export * from "./pci-driver.js";
export * from "./rate-limit.js";
