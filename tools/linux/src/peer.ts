import type { NetBackend } from "@virtio-ts/devices";
import { createTsNic, type TsNic } from "@virtio-ts/interop";

/** RFC 1071 Internet checksum of `b[start, end)`. */
function inetChecksum(b: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if ((end - start) & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** Counters of a {@link PingPeer}. */
export interface PingPeerStats {
  /** ARP requests for our address answered. */
  arpReplies: number;
  /** ICMP echo requests answered. */
  echoReplies: number;
}

/**
 * The host at the other end of the guest's eth0: a "TypeScript guest" (our NetDriver over our
 * virtio-mmio transport to our NetDevice, from @virtio-ts/interop) on a switch port, answering
 * ARP requests for its address and ICMP echo requests to it, built from bytes.
 */
export class PingPeer {
  /** The NIC (driver, device, transport). */
  readonly nic: TsNic;
  /** Counters (mutated in place). */
  readonly stats: PingPeerStats = { arpReplies: 0, echoReplies: 0 };
  readonly #mac: Uint8Array;
  readonly #ip: Uint8Array;

  /**
   * @param port - the switch port (or any NetBackend) the peer's NIC uses
   * @param ip - its IPv4 address (default 10.0.2.2)
   * @param mac - its MAC (default 52:54:00:00:00:02)
   */
  constructor(
    port: NetBackend,
    ip: readonly number[] = [10, 0, 2, 2],
    mac = Uint8Array.of(0x52, 0x54, 0, 0, 0, 2),
  ) {
    this.#mac = mac;
    this.#ip = Uint8Array.from(ip);
    this.nic = createTsNic(port, {
      mac,
      onFrame: (f, nic) => {
        const reply = this.handle(f);
        if (reply !== undefined) nic.driver.trySend(reply);
      },
    });
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
    // Ethernet/IPv4 ARP request (htype 1, ptype 0x0800, hlen 6, plen 4, op 1) for our address.
    if (f[14] !== 0 || f[15] !== 1 || f[16] !== 8 || f[17] !== 0 || f[18] !== 6 || f[19] !== 4)
      return undefined;
    if (f[20] !== 0 || f[21] !== 1 || !this.#isMyIp(f, 38)) return undefined;
    const r = new Uint8Array(42);
    r.set(f.subarray(22, 28), 0);
    r.set(this.#mac, 6);
    r.set([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2], 12);
    r.set(this.#mac, 22);
    r.set(this.#ip, 28);
    r.set(f.subarray(22, 32), 32);
    this.stats.arpReplies++;
    return r;
  }

  #echo(f: Uint8Array): Uint8Array | undefined {
    const ihl = (f[14]! & 0x0f) * 4;
    if (f[14]! >> 4 !== 4 || ihl < 20) return undefined;
    const total = (f[16]! << 8) | f[17]!;
    if (f[23] !== 1 || !this.#isMyIp(f, 30) || 14 + total > f.length || total < ihl + 8)
      return undefined;
    const icmp = 14 + ihl;
    if (f[icmp] !== 8 || f[icmp + 1] !== 0) return undefined;
    const r = f.slice(0, 14 + total);
    r.set(f.subarray(6, 12), 0);
    r.set(this.#mac, 6);
    r.set(f.subarray(30, 34), 26);
    r.set(f.subarray(26, 30), 30);
    r[22] = 64;
    r[24] = r[25] = 0;
    const ipSum = inetChecksum(r, 14, 14 + ihl);
    r[24] = ipSum >> 8;
    r[25] = ipSum & 0xff;
    r[icmp] = 0;
    r[icmp + 2] = r[icmp + 3] = 0;
    const icmpSum = inetChecksum(r, icmp, 14 + total);
    r[icmp + 2] = icmpSum >> 8;
    r[icmp + 3] = icmpSum & 0xff;
    this.stats.echoReplies++;
    return r;
  }

  /** Detach from the network. */
  close(): void {
    this.nic.close();
  }
}
