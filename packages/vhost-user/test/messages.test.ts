import { describe, expect, it } from "vitest";
import {
  decodeConfig,
  decodeHeader,
  decodeMemoryTable,
  decodeSingleMemoryRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeMemoryTable,
  encodeMessage,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  requestName,
  VhostUserError,
  VhostUserFlag,
  VhostUserRequest,
} from "../src/index.js";

// vhost-user.rst: "All numbers are in the machine native byte order". These vectors are written
// for a little-endian host (x86-64, arm64), where virtio-ts runs.
const bytes = (...hex: string[]): Uint8Array =>
  Uint8Array.from(
    hex
      .join("")
      .replace(/\s+/g, "")
      .match(/../g)!
      .map((b) => Number.parseInt(b, 16)),
  );

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof VhostUserError) return e.code;
    throw e;
  }
  return undefined;
}

describe("vhost-user message header (vhost-user.rst 'Header')", () => {
  it("encodes GET_FEATURES as request 1, version 1, size 0", () => {
    expect(encodeMessage(VhostUserRequest.GET_FEATURES, VhostUserFlag.VERSION)).toEqual(
      bytes("01000000 01000000 00000000"),
    );
  });

  it("encodes a NEED_REPLY SET_VRING_NUM with its 8-byte vring state payload", () => {
    const m = encodeMessage(
      VhostUserRequest.SET_VRING_NUM,
      VhostUserFlag.VERSION | VhostUserFlag.NEED_REPLY,
      encodeVringState({ index: 0, num: 128 }),
    );
    expect(m).toEqual(bytes("08000000 09000000 08000000", "00000000 80000000"));
  });

  it("decodes a reply header with the REPLY bit (flags 0x5)", () => {
    expect(decodeHeader(bytes("0f000000 05000000 08000000"))).toEqual({
      request: VhostUserRequest.GET_PROTOCOL_FEATURES,
      flags: 5,
      size: 8,
    });
  });

  it("refuses a header shorter than 12 bytes with a RangeError naming bytes", () => {
    expect(() => decodeHeader(new Uint8Array(11))).toThrow(/bytes/);
  });

  it("refuses a payload over 512 bytes with a RangeError naming payload", () => {
    expect(() => encodeMessage(1, 1, new Uint8Array(513))).toThrow(/payload/);
  });

  it("names message types, and unknown ones by number", () => {
    expect(requestName(24)).toBe("GET_CONFIG");
    expect(requestName(99)).toBe("request 99");
  });
});

describe("vhost-user payloads (vhost-user.rst 'Payload')", () => {
  it("encodes and decodes a u64 (features with VHOST_USER_F_PROTOCOL_FEATURES, bit 30)", () => {
    const p = encodeU64((1n << 32n) | (1n << 30n) | 0x46n);
    expect(p).toEqual(bytes("46000040 01000000"));
    expect(decodeU64(p)).toBe(0x140000046n);
  });

  it("refuses a u64 payload of 4 bytes as bad-size", () => {
    expect(codeOf(() => decodeU64(new Uint8Array(4), 1))).toBe("bad-size");
  });

  it("decodes a vring state {u32 index, u32 num}", () => {
    expect(decodeVringState(bytes("01000000 34120000"))).toEqual({ index: 1, num: 0x1234 });
    expect(codeOf(() => decodeVringState(new Uint8Array(12)))).toBe("bad-size");
  });

  it("lays out a vring address as u32 index, u32 flags, u64 desc, used, avail, log", () => {
    const addr = {
      index: 2,
      flags: 1,
      desc: 0x7f0000001000n,
      used: 0x7f0000002000n,
      avail: 0x7f0000001800n,
      log: 0n,
    };
    const p = encodeVringAddr(addr);
    expect(p).toEqual(
      bytes(
        "02000000 01000000",
        "0010000000 7f0000",
        "0020000000 7f0000",
        "0018000000 7f0000",
        "0000000000000000",
      ),
    );
    expect(decodeVringAddr(p)).toEqual(addr);
    expect(codeOf(() => decodeVringAddr(p.subarray(0, 39)))).toBe("bad-size");
  });

  it("puts the ring index in bits 0-7 of SET_VRING_KICK and bit 8 for 'no fd'", () => {
    expect(encodeVringFd(3)).toEqual(bytes("0300000000000000"));
    expect(encodeVringFd(3, true)).toEqual(bytes("0301000000000000"));
    expect(decodeVringFd(bytes("0501000000000000"))).toEqual({ index: 5, noFd: true });
    expect(() => encodeVringFd(256)).toThrow(/index/);
  });

  it("lays out a memory table as u32 nregions, u32 padding, then 32-byte regions", () => {
    const region = {
      guestPhysAddr: 0x100000n,
      memorySize: 0x400000n,
      userspaceAddr: 0x7f1234560000n,
      mmapOffset: 0n,
    };
    const p = encodeMemoryTable([region]);
    expect(p).toEqual(
      bytes(
        "01000000 00000000",
        "0000100000000000",
        "0000400000000000",
        "0000563412 7f0000",
        "0000000000000000",
      ),
    );
    expect(decodeMemoryTable(p)).toEqual([region]);
  });

  it("refuses a memory table claiming 9 regions before looking at its size", () => {
    const p = new Uint8Array(8 + 9 * 32);
    p[0] = 9;
    expect(codeOf(() => decodeMemoryTable(p))).toBe("bad-size");
  });

  it("refuses a memory table whose size does not match nregions", () => {
    const p = encodeMemoryTable([
      { guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0n, mmapOffset: 0n },
    ]);
    p[0] = 2;
    expect(codeOf(() => decodeMemoryTable(p))).toBe("bad-size");
    expect(() => encodeMemoryTable([])).toThrow(/regions/);
  });

  it("lays out a single memory region with 8 bytes of padding first", () => {
    const region = { guestPhysAddr: 1n, memorySize: 2n, userspaceAddr: 3n, mmapOffset: 4n };
    const p = encodeSingleMemoryRegion(region);
    expect(p.length).toBe(40);
    expect(p.subarray(0, 8)).toEqual(new Uint8Array(8));
    expect(p[8]).toBe(1);
    expect(p[32]).toBe(4);
    expect(decodeSingleMemoryRegion(p)).toEqual(region);
  });

  it("lays out a config access as u32 offset, u32 size, u32 flags, then the bytes", () => {
    const p = encodeConfig({ offset: 8, flags: 0, data: Uint8Array.of(0xaa, 0xbb) });
    expect(p).toEqual(bytes("08000000 02000000 00000000 aabb"));
    expect(decodeConfig(p)).toEqual({ offset: 8, flags: 0, data: Uint8Array.of(0xaa, 0xbb) });
  });

  it("refuses a config reply whose inner size disagrees with the payload, or exceeds 256", () => {
    expect(codeOf(() => decodeConfig(bytes("00000000 04000000 00000000 aabb")))).toBe("bad-size");
    const big = new Uint8Array(12 + 257);
    big[4] = 1;
    big[5] = 1; // size 257
    expect(codeOf(() => decodeConfig(big))).toBe("bad-size");
    expect(() => encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(257) })).toThrow(
      /config\.data/,
    );
  });

  it("names the invalid field when host code passes an out-of-range number", () => {
    expect(() => encodeVringState({ index: -1, num: 0 })).toThrow(/state\.index/);
    expect(() => encodeU64(-1n)).toThrow(/value/);
    expect(() =>
      encodeVringAddr({ index: 0, flags: 0, desc: 1n << 64n, used: 0n, avail: 0n, log: 0n }),
    ).toThrow(/addr\.desc/);
  });
});
