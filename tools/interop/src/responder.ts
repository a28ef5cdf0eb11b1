/**
 * A tiny IPv4 host built from bytes: answers ARP requests for its address and ICMP echo
 * requests to it, and (when asked) records what it saw. Independent of the code under test:
 * it shares no helper with the packages, so a test that pings it checks our devices, drivers
 * and switch against an implementation of its own.
 */

/** An ARP request a {@link Responder} saw. */
export interface SeenArp {
  /** The frame's source MAC, `aa:bb:cc:dd:ee:ff`. */
  readonly srcMac: string;
  /** The sender's IPv4 address, dotted. */
  readonly senderIp: string;
  /** The address asked for, dotted. */
  readonly targetIp: string;
}

/** An ICMP echo request to its address a {@link Responder} saw. */
export interface SeenEcho {
  /** The frame's source MAC. */
  readonly srcMac: string;
  /** The pinger's IPv4 address, dotted. */
  readonly srcIp: string;
  /** ICMP identifier. */
  readonly id: number;
  /** ICMP sequence number. */
  readonly seq: number;
  /** ICMP payload bytes (after the 8-byte ICMP header). */
  readonly payloadLength: number;
}

/** Counters of a {@link Responder}. */
export interface ResponderStats {
  /** ARP requests for our address answered. */
  arpReplies: number;
  /** ICMP echo requests answered. */
  echoReplies: number;
}

/** Options of a {@link Responder}. */
export interface ResponderOptions {
  /**
   * Keep every ARP request and echo request seen in {@link Responder.arps} and
   * {@link Responder.echoes} (a test reads them). Default false: a long-running peer keeps
   * only its counters.
   */
  readonly record?: boolean;
}

/** `aa:bb:cc:dd:ee:ff` of the six bytes of `b` at `at`. */
export const macText = (b: Uint8Array, at = 0): string =>
  Array.from(b.subarray(at, at + 6), (x) => x.toString(16).padStart(2, "0")).join(":");
const ipText = (b: Uint8Array, at: number): string => Array.from(b.subarray(at, at + 4)).join(".");

/** RFC 1071 Internet checksum of `b[start, end)`. */
export function inetChecksum(b: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if ((end - start) & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Answers ARP requests for its IPv4 address and ICMP echo requests to it: give it each
 * received Ethernet frame ({@link Responder.handle}) and send back what it returns.
 */
export class Responder {
  /** ARP requests seen (any target), with `record: true`. */
  readonly arps: SeenArp[] = [];
  /** Echo requests to our address seen, with `record: true`. */
  readonly echoes: SeenEcho[] = [];
  /** Counters (mutated in place). */
  readonly stats: ResponderStats = { arpReplies: 0, echoReplies: 0 };
  readonly #mac: Uint8Array;
  readonly #ip: Uint8Array;
  readonly #record: boolean;

  /**
   * @param mac - our MAC, 6 bytes
   * @param ip - our IPv4 address, 4 numbers
   * @param options - whether to record what is seen
   */
  constructor(mac: Uint8Array, ip: readonly number[], options: ResponderOptions = {}) {
    this.#mac = mac;
    this.#ip = Uint8Array.from(ip);
    this.#record = options.record ?? false;
  }

  #isMyIp(b: Uint8Array, at: number): boolean {
    for (let i = 0; i < 4; i++) if (b[at + i] !== this.#ip[i]) return false;
    return true;
  }

  /**
   * The reply to one received frame, if it is an ARP request for our address or an ICMP echo
   * request to it.
   */
  handle(f: Uint8Array): Uint8Array | undefined {
    if (f.length < 14) return undefined;
    const type = (f[12]! << 8) | f[13]!;
    if (type === 0x0806 && f.length >= 42) return this.#arp(f);
    if (type === 0x0800 && f.length >= 34) return this.#echo(f);
    return undefined;
  }

  #arp(f: Uint8Array): Uint8Array | undefined {
    // Ethernet/IPv4 ARP request (htype 1, ptype 0x0800, hlen 6, plen 4, op 1).
    if (f[14] !== 0 || f[15] !== 1 || f[16] !== 8 || f[17] !== 0 || f[18] !== 6 || f[19] !== 4) {
      return undefined;
    }
    if (f[20] !== 0 || f[21] !== 1) return undefined;
    if (this.#record) {
      this.arps.push({ srcMac: macText(f, 6), senderIp: ipText(f, 28), targetIp: ipText(f, 38) });
    }
    if (!this.#isMyIp(f, 38)) return undefined;
    const r = new Uint8Array(42);
    r.set(f.subarray(22, 28), 0); // to the sender
    r.set(this.#mac, 6);
    r.set([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2], 12); // ARP reply
    r.set(this.#mac, 22); // sha
    r.set(this.#ip, 28); // spa
    r.set(f.subarray(22, 32), 32); // tha, tpa = the requester's sha, spa
    this.stats.arpReplies++;
    return r;
  }

  #echo(f: Uint8Array): Uint8Array | undefined {
    const ihl = (f[14]! & 0x0f) * 4;
    if (f[14]! >> 4 !== 4 || ihl < 20) return undefined;
    const total = (f[16]! << 8) | f[17]!;
    if (f[23] !== 1 || !this.#isMyIp(f, 30) || 14 + total > f.length) return undefined;
    const icmp = 14 + ihl;
    if (total < ihl + 8 || f[icmp] !== 8 || f[icmp + 1] !== 0) return undefined;
    if (this.#record) {
      this.echoes.push({
        srcMac: macText(f, 6),
        srcIp: ipText(f, 26),
        id: (f[icmp + 4]! << 8) | f[icmp + 5]!,
        seq: (f[icmp + 6]! << 8) | f[icmp + 7]!,
        payloadLength: total - ihl - 8,
      });
    }
    const r = f.slice(0, 14 + total);
    r.set(f.subarray(6, 12), 0);
    r.set(this.#mac, 6);
    r.set(f.subarray(30, 34), 26); // src = the address pinged
    r.set(f.subarray(26, 30), 30); // dst = the pinger
    r[22] = 64; // TTL
    r[24] = 0;
    r[25] = 0;
    const ipSum = inetChecksum(r, 14, 14 + ihl);
    r[24] = ipSum >> 8;
    r[25] = ipSum & 0xff;
    r[icmp] = 0; // echo reply
    r[icmp + 2] = 0;
    r[icmp + 3] = 0;
    const icmpSum = inetChecksum(r, icmp, 14 + total);
    r[icmp + 2] = icmpSum >> 8;
    r[icmp + 3] = icmpSum & 0xff;
    this.stats.echoReplies++;
    return r;
  }
}
