// The device state encoding: versioned, checksummed bytes that decode to the same state, and
// hostile bytes refused with DeviceStateError subclasses only.
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { crc32 } from "../src/device-state.js";
import {
  DEVICE_STATE_VERSION,
  type DeviceState,
  DeviceStateChecksumError,
  DeviceStateError,
  DeviceStateFormatError,
  DeviceStateVersionError,
  decodeDeviceState,
  encodeDeviceState,
} from "../src/index.js";

const STATE: DeviceState = {
  deviceId: 2,
  legacy: false,
  active: true,
  status: 0x0f,
  interruptStatus: 1,
  configGeneration: 7,
  offeredFeatures: (1n << 32n) | (1n << 34n) | 0x44n,
  driverFeatures: (1n << 32n) | 0x4n,
  config: Uint8Array.of(0, 8, 0, 0, 0, 0, 0, 0),
  queues: [
    {
      ready: true,
      size: 128,
      desc: 0x10000,
      driver: 0x10800,
      device: 0x2_0000_0000,
      pfn: 0,
      align: 4096,
      state: { availIdx: 65535, usedIdx: 12, availWrap: false, usedWrap: true },
      inFlight: [
        { id: 3, descriptors: new Uint32Array(0) },
        { id: 9, descriptors: Uint32Array.of(0x4000, 0, 16, 0x0081_0009, 1, 2, 3, 4) },
      ],
    },
    {
      ready: false,
      size: 256,
      desc: 0,
      driver: 0,
      device: 0,
      pfn: 0,
      align: 4096,
      state: { availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true },
      inFlight: [],
    },
  ],
  model: Uint8Array.of(1, 2, 3),
  transport: new Uint8Array(16).fill(5),
};

/** Re-seal `bytes` with a correct checksum after an edit. */
function reseal(bytes: Uint8Array): Uint8Array {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  v.setUint32(bytes.length - 4, crc32(bytes.subarray(0, bytes.length - 4)), true);
  return bytes;
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe("device state encoding", () => {
  it("decodes what it encodes, field for field", () => {
    const bytes = encodeDeviceState(STATE);
    expect(decodeDeviceState(bytes)).toEqual(STATE);
  });

  it("starts with the VTDS magic and the format version, and ends with the CRC-32 of the rest", () => {
    const bytes = encodeDeviceState(STATE);
    const v = new DataView(bytes.buffer);
    expect(v.getUint32(0, true)).toBe(0x53445456);
    expect(v.getUint16(4, true)).toBe(DEVICE_STATE_VERSION);
    expect(v.getUint32(bytes.length - 4, true)).toBe(crc32(bytes.subarray(0, bytes.length - 4)));
  });

  it("computes the standard CRC-32 (the check value of '123456789' is 0xcbf43926)", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
  });

  it("computes, eight bytes a step, the same CRC-32 as the byte-at-a-time definition for any length and offset", () => {
    const bytewise = (d: Uint8Array): number => {
      let c = 0xffffffff;
      for (const b of d) {
        c ^= b;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      }
      return (c ^ 0xffffffff) >>> 0;
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), fc.nat(7), (bytes, skip) => {
        const d = bytes.subarray(Math.min(skip, bytes.length));
        expect(crc32(d)).toBe(bytewise(d));
      }),
    );
  });

  it("refuses an unknown version with DeviceStateVersionError carrying both versions, before the checksum", () => {
    const bytes = encodeDeviceState(STATE);
    new DataView(bytes.buffer).setUint16(4, 2, true);
    const e = thrown(() => decodeDeviceState(bytes));
    expect(e).toBeInstanceOf(DeviceStateVersionError);
    expect(e).toMatchObject({ code: "device-state-version", version: 2, supported: 1 });
  });

  it("refuses a flipped bit anywhere in the body with DeviceStateChecksumError", () => {
    const good = encodeDeviceState(STATE);
    for (const at of [12, 40, good.length - 5]) {
      const bytes = good.slice();
      bytes[at]! ^= 0x10;
      const e = thrown(() => decodeDeviceState(bytes));
      expect(e).toBeInstanceOf(DeviceStateChecksumError);
      expect((e as DeviceStateChecksumError).code).toBe("device-state-checksum");
    }
  });

  it.each([
    ["an empty array", () => new Uint8Array(0), 0],
    ["no magic", () => reseal(encodeDeviceState(STATE).fill(0, 0, 4)), 0],
    [
      "a body length that disagrees with the size",
      () => encodeDeviceState(STATE).subarray(0, 40),
      8,
    ],
    [
      "unknown header flags",
      () => {
        const b = encodeDeviceState(STATE);
        b[6] = 0x80;
        return reseal(b);
      },
      6,
    ],
    [
      "a configuration length past the end",
      () => {
        const b = encodeDeviceState(STATE);
        new DataView(b.buffer).setUint16(12 + 8 + 32, 0xffff, true);
        return reseal(b);
      },
      54,
    ],
  ])("refuses %s with DeviceStateFormatError at the offending offset", (_what, make, offset) => {
    const e = thrown(() => decodeDeviceState(make()));
    expect(e).toBeInstanceOf(DeviceStateFormatError);
    expect((e as DeviceStateFormatError).offset).toBe(offset);
  });

  it("refuses a queue address above 2^53 (a guest address cannot be one)", () => {
    const b = encodeDeviceState(STATE);
    // First queue: header 12, device fields 8 + 32, config 2 + 8, count 2, then desc at +8.
    const q0 = 12 + 40 + 10 + 2;
    new DataView(b.buffer).setBigUint64(q0 + 8, 1n << 60n, true);
    const e = thrown(() => decodeDeviceState(reseal(b)));
    expect(e).toBeInstanceOf(DeviceStateFormatError);
    expect((e as Error).message).toMatch(/2\^53/);
  });

  it("throws nothing but DeviceStateError for any damaged or truncated state, resealed or not", () => {
    const good = encodeDeviceState(STATE);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), {
          maxLength: 8,
        }),
        fc.nat(good.length),
        fc.boolean(),
        (edits, cut, seal) => {
          let b = good.slice();
          for (const [at, v] of edits) b[at] = v;
          b = b.subarray(0, Math.max(cut, 16)).slice();
          if (seal && b.length >= 16) reseal(b);
          try {
            decodeDeviceState(b);
          } catch (e) {
            expect(e).toBeInstanceOf(DeviceStateError);
          }
        },
      ),
    );
  });

  it("refuses to encode a state with a field out of range, with a RangeError naming it", () => {
    expect(() => encodeDeviceState({ ...STATE, deviceId: 70000 })).toThrow(/state\.deviceId/);
    expect(() =>
      encodeDeviceState({ ...STATE, queues: [{ ...STATE.queues[0]!, desc: -1 }] }),
    ).toThrow(/state\.queues\[0\]\.desc/);
    expect(() => encodeDeviceState({ ...STATE, offeredFeatures: 1n << 200n })).toThrow(
      /offeredFeatures/,
    );
  });
});
