// Address and length limits shared by every GuestMemory implementation here, and the argument
// checks built on them. Only the two constants are exported from the package entry.

/**
 * Exclusive upper bound of guest-physical address space: every region ends at or below 2^53.
 *
 * Numbers are exact integers below 2^53, so every mapped address and every in-bounds
 * `addr + len` is exact. A 64-bit guest value ≥ 2^53 (see {@link u64ToAddress}) rounds, but
 * stays ≥ 2^53, so it is simply unmapped.
 */
export const ADDRESS_LIMIT = 2 ** 53;

/**
 * Largest length of one access, in bytes: 2^32.
 *
 * A descriptor's `le32 len` is below it, and so is the total a chain walker accepts before
 * it stops (VIRTIO 1.3 §2.7.5.2: drivers MUST NOT add a chain longer than 2^32 bytes). A larger length is
 * host misuse and raises a `RangeError`; `check` answers false.
 */
export const MAX_ACCESS_LENGTH = 2 ** 32;

/** A valid length: an integer in [0, 2^32]. NaN fails every comparison. */
export function isLength(len: number): boolean {
  return len >= 0 && len <= MAX_ACCESS_LENGTH && Number.isInteger(len);
}

/** A valid address argument: an integer ≥ 0 (values ≥ 2^53 are valid but never mapped). */
export function isAddress(addr: number): boolean {
  return addr >= 0 && Number.isInteger(addr);
}

/** The RangeError for a host-supplied address that no guest value can produce. */
export function addressError(name: string, addr: unknown): RangeError {
  return new RangeError(`${name} must be an integer ≥ 0, got ${String(addr)}`);
}

/** The RangeError for a length outside [0, 2^32] (or a count whose bytes are). */
export function lengthError(name: string, value: unknown, unit = 1): RangeError {
  const bound = unit === 1 ? "2^32" : `2^32 / ${unit}`;
  return new RangeError(`${name} must be an integer in [0, ${bound}], got ${String(value)}`);
}

/** `0x…` for messages. */
export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
