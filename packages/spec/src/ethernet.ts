/**
 * Ethernet as virtio-net carries it: header constants (checked against `<linux/if_ether.h>`),
 * the Internet checksum that checksum offload completes (VIRTIO 1.3 §5.1.6.2), and the one flow
 * hash both sides steer multiqueue traffic with. Device and driver share these; nothing else
 * keeps a copy.
 * @module
 */

/** Octets in an Ethernet (MAC) address, `ETH_ALEN`. */
export const ETH_ALEN = 6;
/** Octets in an Ethernet header (destination, source, EtherType), `ETH_HLEN`. */
export const ETH_HLEN = 14;

/** EtherType values (`ETH_P_*` of `<linux/if_ether.h>`), big-endian at header offset 12. */
export const EtherType = {
  /** `ETH_P_IP`: IPv4. */
  IPV4: 0x0800,
  /** `ETH_P_ARP`. */
  ARP: 0x0806,
  /** `ETH_P_8021Q`: an 802.1Q VLAN tag follows. */
  VLAN: 0x8100,
  /** `ETH_P_IPV6`. */
  IPV6: 0x86dd,
} as const;
/** One of {@link EtherType}'s values. */
export type EtherType = (typeof EtherType)[keyof typeof EtherType];

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
 * sender put there — and store the complement, big-endian, at `csumStart + csumOffset`. A
 * result of 0 is stored as 0 (the protocol is unknown here, so UDP's "0 means none" rule is
 * not applied). The device completes a driver's partial checksums with it, and a driver those
 * of the frames it receives when it asked for GUEST_CSUM.
 *
 * @param frame - the whole frame (modified in place)
 * @param csumStart - `csum_start` from the header
 * @param csumOffset - `csum_offset` from the header
 * @returns false (frame untouched) unless both are non-negative integers and
 *   `csumStart + csumOffset + 2 ≤ frame.length`
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

function fnv(h: number, f: Uint8Array, from: number, to: number): number {
  let x = h;
  for (let i = from; i < to; i++) x = Math.imul(x ^ f[i]!, 0x01000193);
  return x;
}

/**
 * The multiqueue steering hash (device: receive queue; driver: transmit queue): FNV-1a over
 * the IPv4 source and destination addresses and, for an unfragmented TCP or UDP packet whose
 * IHL is valid, the ports; over the source MAC for anything else. One flow always hashes the
 * same, so it stays on one queue and in order. Reads only inside `frame` (at least
 * {@link ETH_HLEN} bytes); allocation-free.
 * @param frame - an Ethernet frame
 * @returns an unsigned 32-bit hash
 */
export function flowHash(frame: Uint8Array): number {
  const f = frame;
  let h = 0x811c9dc5;
  const len = f.length;
  if (len >= 34 && f[12] === 0x08 && f[13] === 0x00 && f[14]! >> 4 === 4) {
    h = fnv(h, f, 26, 34);
    const ihl = (f[14]! & 0x0f) * 4;
    const proto = f[23];
    const fragmented = ((f[20]! & 0x1f) | f[21]!) !== 0;
    const l4 = ETH_HLEN + ihl;
    if (ihl >= 20 && !fragmented && (proto === 6 || proto === 17) && l4 + 4 <= len) {
      h = fnv(h, f, l4, l4 + 4);
    }
  } else {
    h = fnv(h, f, 6, 12);
  }
  return h >>> 0;
}
