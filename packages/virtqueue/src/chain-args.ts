import type { Segment } from "./types.js";

const TWO_32 = 4294967296;

/**
 * Validate the host arguments of a driver's `add()`, for both ring layouts, and return the
 * chain's writable bytes. Runs before anything is written, so a rejected call changes nothing.
 * (The drivers' fast paths check direct segments as they write them and call this only when one
 * is refused: what they wrote by then is the content of free descriptors, which the device does
 * not read; the packed driver writes no flag word before every segment is accepted.)
 *
 * Rules: `token` not undefined; at least one segment; no more segments than the queue size
 * (split §2.7.5.3.1, packed §2.8.17); each segment an object whose `addr` is a non-negative safe
 * integer and whose `len` is an integer in [0, 2^32); all segments together below 2^32 bytes
 * (§2.7.5.2; the device sides enforce the same total, and the used `len` is a le32).
 *
 * @throws RangeError naming the argument; TypeError if a segment is not an object.
 * @internal Shared by SplitDriverQueue and PackedDriverQueue; not exported from the package.
 */
export function checkChainArgs(
  readable: readonly Segment[],
  writable: readonly Segment[],
  token: unknown,
  queueSize: number,
  lengthRule: string,
): number {
  if (token === undefined) throw new RangeError("token must not be undefined");
  const nr = readable.length;
  const n = nr + writable.length;
  if (n === 0) {
    throw new RangeError("readable and writable are both empty: a chain needs a segment");
  }
  if (n > queueSize) {
    throw new RangeError(
      `readable and writable hold ${n} segments, more than the queue size ${queueSize} (VIRTIO 1.3 ${lengthRule})`,
    );
  }
  // Two loops (readable, then writable) rather than one with a choice per segment.
  let readableBytes = 0;
  for (let i = 0; i < nr; i++) readableBytes += segmentLen(readable[i], nr, i);
  let writableBytes = 0;
  const nw = n - nr;
  for (let i = 0; i < nw; i++) writableBytes += segmentLen(writable[i], nr, nr + i);
  const total = readableBytes + writableBytes;
  if (total >= TWO_32) {
    throw new RangeError(
      `readable and writable add up to ${total} bytes; a chain must stay below 2^32 (VIRTIO 1.3 §2.7.5.2)`,
    );
  }
  return writableBytes;
}

/** A segment's `addr` rule: a non-negative safe integer (`typeof` first: no BigInt, no coercion). */
function addrOk(addr: unknown): boolean {
  return typeof addr === "number" && addr >= 0 && Number.isSafeInteger(addr);
}

/** A segment's `len` rule: an integer in [0, 2^32), a le32 (`x >>> 0 === x` after `typeof`). */
function lenOk(len: unknown): boolean {
  return typeof len === "number" && len >>> 0 === len;
}

/**
 * Whether `addr` and `len`, read once from a segment object, are what `checkChainArgs` accepts
 * (the same two rules). For the drivers' fast paths, which read each segment's fields once into
 * locals, check those and write those (a getter answering differently the second time cannot
 * slip a value past the check), and call `checkChainArgs` for the error when one is refused.
 * @internal
 */
export function segmentValuesOk(addr: unknown, len: unknown): boolean {
  return addrOk(addr) && lenOk(len);
}

/** The length of one segment after checking it (`i` counts across both lists, for messages). */
function segmentLen(s: Segment | undefined, nr: number, i: number): number {
  if (typeof s !== "object" || s === null) throw segmentError(nr, i, "", s);
  const addr = s.addr;
  const len = s.len;
  if (!addrOk(addr)) throw segmentError(nr, i, "addr", addr);
  if (!lenOk(len)) throw segmentError(nr, i, "len", len);
  return len;
}

/** Cold path: the RangeError/TypeError for a bad segment, naming it as the caller wrote it. */
function segmentError(nr: number, i: number, field: string, value: unknown): Error {
  const name = i < nr ? `readable[${i}]` : `writable[${i - nr}]`;
  if (field === "") return new TypeError(`${name} must be a { addr, len } object, got ${value}`);
  const rule =
    field === "addr" ? "a non-negative safe integer" : "an integer in [0, 2^32) (a le32 length)";
  return new RangeError(`${name}.${field} must be ${rule}, got ${value}`);
}
