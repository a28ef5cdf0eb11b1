/**
 * Guest memory for virtio devices and drivers: regions over (Shared)ArrayBuffers with
 * bounds-checked little-endian access, scatter-gather, and an IOMMU / DMA-window layer.
 *
 * @packageDocumentation
 */
export { GuestMemoryError, type GuestMemoryErrorCode, VirtioError } from "./errors.js";
export {
  type CreateGuestMemoryOptions,
  createGuestMemory,
  GuestMemoryMap,
  type GuestRegion,
  type GuestRegionOptions,
  guestAddress,
  u64ToAddress,
} from "./guest-memory.js";
export { ADDRESS_LIMIT, MAX_ACCESS_LENGTH } from "./limits.js";
export {
  type DmaWindow,
  DmaWindows,
  dmaWindows,
  TranslatedMemory,
  type TranslateFn,
  type Translation,
  type WindowAccess,
} from "./translate.js";
export type { AccessKind, GuestAddress, GuestMemory, StableRange } from "./types.js";
export {
  WasmGuestMemory,
  type WasmGuestMemoryOptions,
  type WasmMemoryLike,
} from "./wasm-memory.js";
