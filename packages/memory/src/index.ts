/**
 * Guest memory for virtio devices and drivers: regions over (Shared)ArrayBuffers with
 * bounds-checked little-endian access, scatter-gather, and an IOMMU / DMA-window layer.
 *
 * @packageDocumentation
 */
export * from "./errors.js";
export * from "./guest-memory.js";
export { ADDRESS_LIMIT, MAX_ACCESS_LENGTH } from "./limits.js";
export * from "./translate.js";
export type * from "./types.js";
export * from "./wasm-memory.js";
