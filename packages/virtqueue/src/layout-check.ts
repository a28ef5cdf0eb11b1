import type { AccessKind, GuestMemory } from "@virtio-ts/memory";
import { QueueConfigError } from "./errors.js";

/**
 * Check one ring area (descriptor area, driver area or device area) before it is mapped:
 * a safe integer address, the spec's alignment for that part, and `len` bytes inside guest
 * memory with the access the mapping side needs (IOMMU / read-only regions).
 *
 * @throws QueueConfigError naming `field`.
 * @internal Shared by the split and packed layouts; not exported from the package.
 */
export function checkRingArea(
  mem: GuestMemory,
  field: string,
  addr: number,
  len: number,
  align: number,
  access: AccessKind,
): void {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new QueueConfigError(`${field} address must be a non-negative safe integer`, field, addr);
  }
  if (addr % align !== 0) {
    throw new QueueConfigError(`${field} area must be ${align}-byte aligned`, field, addr);
  }
  if (!mem.check(addr, len, access)) {
    throw new QueueConfigError(
      `${field} area [0x${addr.toString(16)}, +${len}) is outside guest memory or lacks ${access} access`,
      field,
      addr,
    );
  }
}

/**
 * The error for a ring whose areas passed {@link checkRingArea} but could not be mapped as one
 * view each (an area crossing a region or DMA-window boundary).
 * @internal
 */
export function unmappableRing(e: unknown, desc: number): QueueConfigError {
  return new QueueConfigError(`ring area not mappable: ${(e as Error).message}`, "layout", desc);
}
