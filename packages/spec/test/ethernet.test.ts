// The Ethernet helpers device and driver share: the Internet checksum of checksum offload and
// the one multiqueue flow hash.
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { completeChecksum, ETH_HLEN, flowHash, onesComplementSum } from "../src/index.js";

/** An Ethernet + IPv4 + UDP frame from the given fields (addresses and ports). */
function udp(
  src: number,
  dst: number,
  sport: number,
  dport: number,
  o: { ihl?: number; frag?: number } = {},
) {
  const ihl = o.ihl ?? 5;
  const f = new Uint8Array(ETH_HLEN + Math.max(ihl, 5) * 4 + 8 + 4);
  f[12] = 0x08;
  f[13] = 0x00;
  f[14] = 0x40 | ihl;
  f[20] = (o.frag ?? 0) >> 8;
  f[21] = (o.frag ?? 0) & 0xff;
  f[23] = 17;
  new DataView(f.buffer).setUint32(26, src);
  new DataView(f.buffer).setUint32(30, dst);
  const l4 = ETH_HLEN + Math.max(ihl, 5) * 4;
  new DataView(f.buffer).setUint16(l4, sport);
  new DataView(f.buffer).setUint16(l4 + 2, dport);
  return f;
}

describe("Internet checksum", () => {
  it("onesComplementSum matches RFC 1071's worked example", () => {
    // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    expect(onesComplementSum(new Uint8Array([0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7]))).toBe(0xddf2);
    expect(() => onesComplementSum(new Uint8Array(4), 5)).toThrow(/start/);
  });

  it("completeChecksum (§5.1.6.2) stores the complement so the covered bytes then sum to 0xffff, and refuses a field past the end", () => {
    const f = new Uint8Array(10);
    expect(completeChecksum(f, 8, 1)).toBe(false);
    expect(completeChecksum(f, 6, 2)).toBe(true);
    expect((f[8]! << 8) | f[9]!).toBe(0xffff);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 200 }), (bytes) => {
        const frame = bytes.slice();
        frame[0] = 0;
        frame[1] = 0;
        expect(completeChecksum(frame, 0, 0)).toBe(true);
        expect(onesComplementSum(frame)).toBe(0xffff);
      }),
    );
  });
});

describe("flowHash", () => {
  it("hashes one UDP flow the same way every time and two flows apart", () => {
    const a = udp(0x0a000001, 0x0a000002, 1000, 53);
    expect(flowHash(a)).toBe(flowHash(a.slice()));
    expect(flowHash(a)).not.toBe(flowHash(udp(0x0a000001, 0x0a000002, 1001, 53)));
  });

  it("ignores the ports of a fragment and of a packet whose IHL is below 5, hashing the addresses only", () => {
    const addrsOnly = (f: Uint8Array) => {
      const g = f.slice();
      g[23] = 0; // not TCP/UDP: ports never hashed
      return flowHash(g);
    };
    const frag = udp(1, 2, 1000, 53, { frag: 0x2000 | 8 });
    expect(flowHash(frag)).toBe(addrsOnly(frag));
    const badIhl = udp(1, 2, 1000, 53, { ihl: 4 });
    expect(flowHash(badIhl)).toBe(addrsOnly(badIhl));
  });

  it("hashes the source MAC of a frame that is not IPv4", () => {
    const arp = new Uint8Array(60);
    arp[12] = 0x08;
    arp[13] = 0x06;
    arp.set([2, 0, 0, 0, 0, 9], 6);
    const other = arp.slice();
    other.set([2, 0, 0, 0, 0, 7], 0); // another destination: same hash
    expect(flowHash(other)).toBe(flowHash(arp));
    other.set([2, 0, 0, 0, 0, 8], 6); // another source: another hash
    expect(flowHash(other)).not.toBe(flowHash(arp));
  });
});
