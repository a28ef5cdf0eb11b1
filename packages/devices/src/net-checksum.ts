/**
 * The Internet checksum (RFC 1071) as virtio-net checksum offload needs it.
 * @module
 */

/**
 * The 16-bit one's complement sum (folded, not complemented) of `data[start, end)`, taken as
 * big-endian 16-bit words; an odd last byte is padded with a zero byte. Allocation-free.
 *
 * @param data - the bytes
 * @param start - first byte (default 0)
 * @param end - one past the last byte (default `data.length`)
 * @param initial - a folded sum to continue from (default 0), e.g. a pseudo-header sum
 * @returns the folded sum, 0 to 0xffff
 * @throws RangeError naming `start` or `end` unless `0 ≤ start ≤ end ≤ data.length`
 * @see RFC 1071
 */
export function onesComplementSum(
  data: Uint8Array,
  start = 0,
  end: number = data.length,
  initial = 0,
): number {
  if (!Number.isInteger(start) || start < 0 || start > data.length) {
    throw new RangeError(`start must be an integer in [0, ${data.length}], got ${start}`);
  }
  if (!Number.isInteger(end) || end < start || end > data.length) {
    throw new RangeError(`end must be an integer in [${start}, ${data.length}], got ${end}`);
  }
  let sum = initial;
  let i = start;
  // A frame is below 2^16 words of 2^16 each, far from 2^53: fold once at the end.
  for (; i + 1 < end; i += 2) sum += (data[i]! << 8) | data[i + 1]!;
  if (i < end) sum += data[i]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * Complete a partial checksum the way VIRTIO_NET_HDR_F_NEEDS_CSUM asks (VIRTIO 1.3 §5.1.6.2):
 * sum `frame[csumStart, end)` — whose checksum field already holds the pseudo-header sum the
 * sender put there — and store the complement, big-endian, at `csumStart + csumOffset`.
 * The caller has checked the bounds; a result of 0 is stored as 0 (the device does not know
 * the protocol, so it cannot apply UDP's "0 means none" rule).
 *
 * @param frame - the whole frame (modified in place)
 * @param csumStart - `csum_start` from the header
 * @param csumOffset - `csum_offset` from the header
 * @returns false (frame untouched) if `csumStart + csumOffset + 2 > frame.length`
 */
export function completeChecksum(
  frame: Uint8Array,
  csumStart: number,
  csumOffset: number,
): boolean {
  const at = csumStart + csumOffset;
  if (
    !Number.isInteger(csumStart) ||
    !Number.isInteger(csumOffset) ||
    csumStart < 0 ||
    csumOffset < 0 ||
    at + 2 > frame.length
  ) {
    return false;
  }
  const c = ~onesComplementSum(frame, csumStart) & 0xffff;
  frame[at] = c >>> 8;
  frame[at + 1] = c & 0xff;
  return true;
}
