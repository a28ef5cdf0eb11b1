/**
 * Guest memory for virtio devices and drivers.
 * @packageDocumentation
 */
export * from "./errors.js";
export type * from "./types.js";
