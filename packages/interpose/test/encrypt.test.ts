import { createCipheriv, createDecipheriv } from "node:crypto";
import { readFileSync } from "node:fs";
import { crc32 } from "node:zlib";
import { BlkDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import {
  ENCRYPT_HEADER_SECTORS,
  EncryptedDiskError,
  encrypt,
  formatEncrypted,
  openEncrypted,
  XtsAes256,
  type XtsEngine,
} from "../src/node.js";
import { pseudoRandom, RamDisk, splitAt } from "./helpers/ram-disk.js";

/** IEEE 1619-2007 Annex B vectors 10–14, transcribed in vectors/ (see its "source"). */
const vectors = JSON.parse(
  readFileSync(new URL("./vectors/ieee1619-2007-xts-aes-256.json", import.meta.url), "utf8"),
) as {
  key1: string;
  key2: string;
  vectors: { vector: number; dataUnitSequenceNumber: string; ciphertext: string }[];
};
const ENGINES: XtsEngine[] = ["tweak-ecb-wasm", "tweak-ecb", "openssl-xts"];
const KEY = Buffer.from(vectors.key1 + vectors.key2, "hex");
/** Cheap scrypt for tests (the default costs 128 MiB and a few hundred ms per open). */
const FAST = { log2N: 10, r: 8, p: 1 };

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

/** The IEEE 1619 data unit sequence number as a plain64 IV (little-endian, 16 bytes). */
function plain64(n: number): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeUInt32LE(n % 2 ** 32, 0);
  iv.writeUInt32LE(Math.floor(n / 2 ** 32), 4);
  return iv;
}

function opensslXts(key: Uint8Array, sector: number, data: Uint8Array, enc = true): Buffer {
  const c = enc
    ? createCipheriv("aes-256-xts", key, plain64(sector))
    : createDecipheriv("aes-256-xts", key, plain64(sector));
  return Buffer.concat([c.update(data), c.final()]);
}

describe("XtsAes256", () => {
  const pt = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff);
  const cases = ENGINES.flatMap((engine) => vectors.vectors.map((v) => ({ engine, ...v })));

  it.each(cases)(
    "IEEE 1619-2007 vector $vector (XTS-AES-256, 512-byte data unit, plain64 tweak $dataUnitSequenceNumber) encrypts and decrypts with $engine",
    ({ engine, dataUnitSequenceNumber, ciphertext }) => {
      const xts = new XtsAes256(KEY, { engine });
      const sector = Number.parseInt(dataUnitSequenceNumber, 16);
      const out = new Uint8Array(512);
      xts.encrypt(pt, out, sector);
      expect(hex(out)).toBe(ciphertext);
      const back = new Uint8Array(512);
      xts.decrypt(out, back, sector);
      expect(back).toEqual(pt);
    },
  );

  it("all three engines and node's aes-256-xts agree over 300 sectors crossing the 2^32 sector boundary", () => {
    const key = pseudoRandom(64, 99);
    const data = pseudoRandom(300 * 512, 7);
    const first = 2 ** 32 - 150;
    const [a, b, c] = ENGINES.map((engine) => {
      const out = new Uint8Array(data.length);
      new XtsAes256(key, { engine }).encrypt(data, out, first);
      return out;
    }) as [Uint8Array, Uint8Array, Uint8Array];
    expect(hex(a)).toBe(hex(c));
    expect(hex(b)).toBe(hex(c));
    for (const s of [0, 127, 128, 149, 150, 299]) {
      const ref = opensslXts(key, first + s, data.subarray(s * 512, (s + 1) * 512));
      expect(hex(a.subarray(s * 512, (s + 1) * 512))).toBe(hex(ref));
    }
    for (const engine of ENGINES) {
      const back = new Uint8Array(data.length);
      new XtsAes256(key, { engine }).decrypt(a, back, first);
      expect(back).toEqual(data);
    }
  });

  it("the WebAssembly engine is the default here and matches tweak-ecb on random lengths, sectors and offsets into shared memory", () => {
    expect(new XtsAes256(KEY).engine).toBe("tweak-ecb-wasm");
    const wasm = new XtsAes256(KEY, { engine: "tweak-ecb-wasm" });
    const js = new XtsAes256(KEY, { engine: "tweak-ecb" });
    // Guest memory is a SharedArrayBuffer; requests start at any sector-aligned offset in it.
    const guest = new Uint8Array(new SharedArrayBuffer(300 * 512));
    guest.set(pseudoRandom(guest.length, 5));
    let x = 0x1234567;
    for (let round = 0; round < 100; round++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const sectors = 1 + (x % 260);
      const at = ((x >>> 9) % (300 - sectors + 1)) * 512;
      const sector = (x >>> 3) * 4099 + (round % 2) * 2 ** 40;
      const src = guest.subarray(at, at + sectors * 512);
      const a = new Uint8Array(src.length);
      const b = new Uint8Array(src.length);
      wasm.encrypt(src, a, sector);
      js.encrypt(src, b, sector);
      expect(hex(a)).toBe(hex(b));
      wasm.decrypt(a, a, sector);
      expect(hex(a)).toBe(hex(src));
    }
  });

  it("encrypts in place when src and dst are the same array", () => {
    const data = pseudoRandom(1024, 3);
    const copy = data.slice();
    const xts = new XtsAes256(KEY);
    xts.encrypt(data, data, 9);
    expect(hex(data)).toBe(
      hex(opensslXts(KEY, 9, copy.subarray(0, 512))) + hex(opensslXts(KEY, 10, copy.subarray(512))),
    );
  });

  it("flipping one ciphertext bit garbles exactly its own 16-byte block (XTS has no integrity)", () => {
    const xts = new XtsAes256(KEY);
    const data = pseudoRandom(512, 5);
    const ct = new Uint8Array(512);
    xts.encrypt(data, ct, 0);
    ct[200]! ^= 1;
    const back = new Uint8Array(512);
    xts.decrypt(ct, back, 0);
    const changed = [...back.keys()].filter((i) => back[i] !== data[i]);
    expect(changed.length).toBeGreaterThan(0);
    expect(Math.min(...changed)).toBeGreaterThanOrEqual(192);
    expect(Math.max(...changed)).toBeLessThan(208);
  });

  it("a key that is not 64 bytes, or whose halves are equal, is a RangeError naming key", () => {
    expect(() => new XtsAes256(new Uint8Array(32))).toThrow(/^key must be 64 bytes.*got 32 bytes/);
    expect(() => new XtsAes256(new Uint8Array(64).fill(7))).toThrow(/^key: its two 32-byte halves/);
    expect(() => new XtsAes256(KEY, { engine: "ctr" as XtsEngine })).toThrow(/options\.engine/);
  });

  it("encryptBatch and decryptBatch equal one call per job, and name the job whose arguments are wrong", () => {
    const xts = new XtsAes256(KEY);
    const jobs = [3, 200, 1, 127, 128].map((n, i) => ({
      src: pseudoRandom(n * 512, 40 + i),
      dst: new Uint8Array(n * 512),
      firstSector: 2 ** 32 - 100 + i * 1000,
    }));
    xts.encryptBatch(jobs);
    for (const j of jobs) {
      const one = new Uint8Array(j.src.length);
      new XtsAes256(KEY, { engine: "openssl-xts" }).encrypt(j.src, one, j.firstSector);
      expect(hex(j.dst)).toBe(hex(one));
    }
    const back = jobs.map((j) => ({ src: j.dst, dst: j.dst, firstSector: j.firstSector }));
    xts.decryptBatch(back, 4);
    for (const [i, j] of back.slice(0, 4).entries()) expect(hex(j.dst)).toBe(hex(jobs[i]!.src));
    const untouched = new Uint8Array(512);
    const bad = [
      { src: pseudoRandom(512, 9), dst: untouched, firstSector: 0 },
      { ...jobs[1]!, firstSector: -1 },
    ];
    expect(() => xts.encryptBatch(bad)).toThrow(/^jobs\[1\]\.firstSector must be/);
    // Every job is checked before any is transformed: job 0's output is still zero.
    expect(untouched.every((b) => b === 0)).toBe(true);
    expect(() => xts.encryptBatch([{ ...jobs[0]!, dst: new Uint8Array(5) }])).toThrow(
      /^jobs\[0\]\.dst\.length must equal jobs\[0\]\.src\.length/,
    );
    expect(() => xts.encryptBatch(jobs, 9)).toThrow(/^count must be an integer in \[0, 5\]/);
  });

  it("lengths that are not whole sectors and unsafe sector numbers are RangeErrors naming the argument", () => {
    const xts = new XtsAes256(KEY);
    expect(() => xts.encrypt(new Uint8Array(100), new Uint8Array(100), 0)).toThrow(/^src\.length/);
    expect(() => xts.encrypt(new Uint8Array(512), new Uint8Array(1024), 0)).toThrow(/^dst\.length/);
    expect(() => xts.encrypt(new Uint8Array(512), new Uint8Array(512), -1)).toThrow(/^firstSector/);
    expect(() => xts.encrypt(new Uint8Array(512), new Uint8Array(512), 2 ** 53)).toThrow(
      /^firstSector/,
    );
  });
});

describe("encrypt (raw key, no header)", () => {
  it("stores exactly dm-crypt plain aes-xts-plain64: inner sector n is XTS of the data with tweak n", async () => {
    const inner = new RamDisk(16);
    const disk = encrypt(inner, KEY);
    expect([disk.capacity, disk.dataOffset, disk.blockSize, disk.readOnly]).toEqual([
      16,
      0,
      512,
      false,
    ]);
    const data = pseudoRandom(1024, 11);
    await disk.write(5, [data]);
    expect(hex(inner.bytes.subarray(5 * 512, 6 * 512))).toBe(
      hex(opensslXts(KEY, 5, data.subarray(0, 512))),
    );
    expect(hex(inner.bytes.subarray(6 * 512, 7 * 512))).toBe(
      hex(opensslXts(KEY, 6, data.subarray(512))),
    );
  });

  it.each(ENGINES)(
    "round-trips iovecs split inside sectors, into SharedArrayBuffer views (%s)",
    async (engine) => {
      const disk = encrypt(new RamDisk(32), KEY, { engine });
      const data = pseudoRandom(3 * 512, 12);
      await disk.write(3, splitAt(data, 7, 1000, 1030));
      const shared = new Uint8Array(new SharedArrayBuffer(3 * 512));
      await disk.read(3, splitAt(shared, 513, 516));
      expect(shared).toEqual(data);
      const one = new Uint8Array(512);
      await disk.read(4, [one]);
      expect(one).toEqual(data.subarray(512, 1024));
    },
  );

  it("never writes ciphertext into the guest's buffers", async () => {
    const disk = encrypt(new RamDisk(8), KEY);
    const data = pseudoRandom(1024, 13);
    const copy = data.slice();
    await disk.write(0, [data]);
    await disk.write(2, splitAt(data, 100));
    expect(data).toEqual(copy);
  });

  it("leaves no plaintext pattern on the inner disk, and equal sectors encrypt differently", async () => {
    const inner = new RamDisk(64);
    const disk = encrypt(inner, KEY);
    const text = new TextEncoder().encode("ATTACK AT DAWN! ".repeat(2048));
    await disk.write(0, [text]);
    const haystack = Buffer.from(inner.bytes);
    for (const needle of ["ATTACK", "DAWN", "AT DAWN! ATTACK"]) {
      expect(haystack.indexOf(needle)).toBe(-1);
    }
    expect(hex(inner.bytes.subarray(0, 512))).not.toBe(hex(inner.bytes.subarray(512, 1024)));
    const back = new Uint8Array(text.length);
    await disk.read(0, [back]);
    expect(back).toEqual(text);
  });

  it("writeZeroes reads back as zeroes but stores encrypted zeroes; discard leaves everything", async () => {
    const inner = new RamDisk(16);
    const disk = encrypt(inner, KEY);
    await disk.write(0, [pseudoRandom(16 * 512, 14)]);
    await disk.writeZeroes(2, 3, true);
    const got = new Uint8Array(5 * 512);
    await disk.read(1, [got]);
    expect(got.subarray(512, 4 * 512).every((b) => b === 0)).toBe(true);
    expect(got.subarray(0, 512).some((b) => b !== 0)).toBe(true);
    expect(got.subarray(4 * 512).some((b) => b !== 0)).toBe(true);
    expect(hex(inner.bytes.subarray(2 * 512, 3 * 512))).toBe(
      hex(opensslXts(KEY, 2, new Uint8Array(512))),
    );
    const before = inner.bytes.slice();
    await disk.discard(0, 16);
    expect(inner.bytes).toEqual(before);
    expect(inner.calls.some((c) => c.startsWith("discard"))).toBe(false);
  });

  it("writeZeroes over more than one 64 KiB chunk zeroes every sector", async () => {
    const disk = encrypt(new RamDisk(300), KEY);
    await disk.write(0, [pseudoRandom(300 * 512, 15)]);
    await disk.writeZeroes(10, 280, false);
    const got = new Uint8Array(300 * 512);
    await disk.read(0, [got]);
    expect(got.subarray(10 * 512, 290 * 512).every((b) => b === 0)).toBe(true);
    expect(got.subarray(290 * 512, 291 * 512).some((b) => b !== 0)).toBe(true);
  });

  it("flush reaches the inner back-end; out-of-range and read-only requests are BackendErrors", async () => {
    const inner = new RamDisk(8);
    const disk = encrypt(inner, KEY);
    await disk.flush();
    expect(inner.calls).toEqual(["flush"]);
    await expect(disk.read(7, [new Uint8Array(1024)])).rejects.toMatchObject({
      name: "BackendError",
      code: "out-of-range",
    });
    const ro = encrypt(new RamDisk(8, { readOnly: true }), KEY);
    await expect(ro.write(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "read-only" });
    await expect(ro.writeZeroes(0, 1, false)).rejects.toMatchObject({ code: "read-only" });
  });

  it.each(ENGINES)(
    "requests issued in one task are enciphered together and store what one-by-one XTS stores (%s)",
    async (engine) => {
      const inner = new RamDisk(4096);
      const disk = encrypt(inner, KEY, { engine });
      // 40 writes of 1–300 sectors at disjoint places, all started in this task: the batch
      // crosses the 64-sector runs of the WebAssembly engine, and some requests alone exceed one.
      let x = 77;
      const reqs: { sector: number; data: Uint8Array }[] = [];
      for (let i = 0, sector = 0; i < 40; i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const n = i % 13 === 0 ? 129 + (x % 171) : 1 + (x % 40);
        reqs.push({ sector, data: pseudoRandom(n * 512, 100 + i) });
        sector += n + (x % 3);
      }
      await Promise.all(reqs.map((r) => disk.write(r.sector, [r.data])));
      for (const r of reqs) {
        for (const s of [0, (r.data.length >> 9) - 1]) {
          const at = (r.sector + s) * 512;
          expect(hex(inner.bytes.subarray(at, at + 512))).toBe(
            hex(opensslXts(KEY, r.sector + s, r.data.subarray(s * 512, s * 512 + 512))),
          );
        }
      }
      // Reads in one task too, half of them split inside sectors.
      const back = reqs.map((r) => new Uint8Array(r.data.length));
      await Promise.all(
        reqs.map((r, i) =>
          disk.read(r.sector, i % 2 === 0 ? [back[i]!] : splitAt(back[i]!, 100, 700)),
        ),
      );
      for (const [i, b] of back.entries()) expect(hex(b)).toBe(hex(reqs[i]!.data));
    },
  );

  it("a request that is not whole sectors is refused naming iovecs, and its neighbours in the batch complete", async () => {
    const disk = encrypt(new RamDisk(16), KEY);
    const ok = pseudoRandom(1024, 21);
    const results = await Promise.allSettled([
      disk.write(0, [ok]),
      disk.write(4, [new Uint8Array(700)]),
      disk.write(8, [ok]),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(
      /RangeError: iovecs must hold whole 512-byte sectors, got 700 bytes/,
    );
    const back = new Uint8Array(1024);
    await disk.read(8, [back]);
    expect(back).toEqual(ok);
  });

  it("when one request of a batch cannot be enciphered (its buffer detached), only that one rejects", async () => {
    const inner = new RamDisk(16);
    const disk = encrypt(inner, KEY);
    const ok = pseudoRandom(512, 31);
    const doomed = new ArrayBuffer(512);
    const a = disk.write(0, [ok]);
    const b = disk.write(1, [new Uint8Array(doomed)]);
    const c = disk.write(2, [ok]);
    // Detach the second request's buffer before the batch runs (as a WebAssembly.Memory grow does).
    structuredClone(doomed, { transfer: [doomed] });
    const results = await Promise.allSettled([a, b, c]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(
      /^RangeError: dst\.length must equal src\.length/,
    );
    expect(hex(inner.bytes.subarray(0, 512))).toBe(hex(opensslXts(KEY, 0, ok)));
    expect(hex(inner.bytes.subarray(1024, 1536))).toBe(hex(opensslXts(KEY, 2, ok)));
  });

  it("serves a BlkDevice, which sees the inner capacity", () => {
    const model = new BlkDevice(encrypt(new RamDisk(64), KEY), { serial: "enc" });
    expect(model.readConfig(0, 4)).toBe(64);
  });
});

describe("formatEncrypted / openEncrypted (passphrase header)", () => {
  it("formats, shrinks the capacity by the 8-sector header and reopens with the passphrase", async () => {
    const inner = new RamDisk(64);
    const disk = await formatEncrypted(inner, { passphrase: "correct horse", scrypt: FAST });
    expect([disk.capacity, disk.dataOffset]).toEqual([64 - ENCRYPT_HEADER_SECTORS, 8]);
    expect(inner.calls).toEqual(["read 0", "write 0", "flush"]);
    expect(Buffer.from(inner.bytes.subarray(0, 8)).toString("latin1")).toBe("VTS-XTS\0");
    const data = pseudoRandom(2048, 16);
    await disk.write(0, [data]);
    // Data sector 0 lives at inner sector 8 with tweak 0 (LUKS-style, relative to the data area).
    const raw = await openEncrypted(inner, { passphrase: "correct horse" });
    const got = new Uint8Array(2048);
    await raw.read(0, [got]);
    expect(got).toEqual(data);
    expect(Buffer.from(inner.bytes).indexOf(Buffer.from(data.subarray(0, 32)))).toBe(-1);
  });

  it("two formats of the same disk and passphrase use different salts, hence different keys", async () => {
    const a = new RamDisk(16);
    const b = new RamDisk(16);
    const da = await formatEncrypted(a, { passphrase: "pw", scrypt: FAST });
    const db = await formatEncrypted(b, { passphrase: "pw", scrypt: FAST });
    expect(hex(a.bytes.subarray(24, 56))).not.toBe(hex(b.bytes.subarray(24, 56)));
    const zero = new Uint8Array(512);
    await da.write(0, [zero]);
    await db.write(0, [zero]);
    expect(hex(a.bytes.subarray(4096, 4608))).not.toBe(hex(b.bytes.subarray(4096, 4608)));
  });

  it("a wrong passphrase is EncryptedDiskError wrong-passphrase naming options.passphrase", async () => {
    const inner = new RamDisk(16);
    await formatEncrypted(inner, { passphrase: "right", scrypt: FAST });
    await expect(openEncrypted(inner, { passphrase: "wrong" })).rejects.toMatchObject({
      name: "EncryptedDiskError",
      code: "wrong-passphrase",
      message: expect.stringMatching(/^options\.passphrase is wrong/),
    });
  });

  it("a blank disk is not-formatted, a flipped header byte is corrupt-header, a second format is refused", async () => {
    const blank = new RamDisk(16);
    await expect(openEncrypted(blank, { passphrase: "x" })).rejects.toMatchObject({
      code: "not-formatted",
    });
    const inner = new RamDisk(16);
    await formatEncrypted(inner, { passphrase: "x", scrypt: FAST });
    await expect(formatEncrypted(inner, { passphrase: "y", scrypt: FAST })).rejects.toMatchObject({
      code: "already-formatted",
      message: expect.stringMatching(/options\.overwrite/),
    });
    inner.bytes[30]! ^= 0x40; // inside the salt
    const err = await openEncrypted(inner, { passphrase: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EncryptedDiskError);
    expect(err).toMatchObject({ code: "corrupt-header" });
    const again = await formatEncrypted(inner, { passphrase: "y", scrypt: FAST, overwrite: true });
    expect(again.capacity).toBe(8);
  });

  it("a header demanding more scrypt memory than allowed is refused before deriving anything", async () => {
    const inner = new RamDisk(16);
    await formatEncrypted(inner, { passphrase: "x", scrypt: FAST });
    inner.bytes[16] = 24; // log2N = 24: 128 · 2^24 · 8 = 16 GiB
    const dv = new DataView(inner.bytes.buffer);
    dv.setUint32(88, crc32(inner.bytes.subarray(0, 88)), true);
    await expect(openEncrypted(inner, { passphrase: "x" })).rejects.toMatchObject({
      code: "corrupt-header",
      message: expect.stringMatching(/log2N 24/),
    });
    inner.bytes[16] = 10;
    inner.bytes[8] = 9; // version 9
    dv.setUint32(88, crc32(inner.bytes.subarray(0, 88)), true);
    await expect(openEncrypted(inner, { passphrase: "x" })).rejects.toMatchObject({
      code: "unsupported",
    });
  });

  it("a header asking for 128 times the default scrypt work is refused in milliseconds, before deriving", async () => {
    const inner = new RamDisk(16);
    await formatEncrypted(inner, { passphrase: "x", scrypt: FAST });
    const dv = new DataView(inner.bytes.buffer);
    // log2N 20, r 8, p 16: within the 1 GiB memory cap, but about a minute of CPU per open.
    inner.bytes[16] = 20;
    dv.setUint16(18, 8, true);
    dv.setUint16(20, 16, true);
    dv.setUint32(88, crc32(inner.bytes.subarray(0, 88)), true);
    const t0 = performance.now();
    const err = await openEncrypted(inner, { passphrase: "x" }).catch((e: unknown) => e);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(err).toBeInstanceOf(EncryptedDiskError);
    expect(err).toMatchObject({
      code: "kdf-too-costly",
      message: expect.stringMatching(/options\.maxScryptWork/),
    });
    // A caller who trusts the image may raise the cap: then the cost is checked, not refused
    // (a smaller header here, to keep the test fast).
    dv.setUint16(20, 1, true);
    inner.bytes[16] = 12;
    dv.setUint32(88, crc32(inner.bytes.subarray(0, 88)), true);
    await expect(
      openEncrypted(inner, { passphrase: "x", maxScryptWork: 2 ** 12 * 8 - 1 }),
    ).rejects.toMatchObject({ code: "kdf-too-costly" });
    await expect(openEncrypted(inner, { passphrase: "x", maxScryptWork: 0 })).rejects.toThrow(
      /^options\.maxScryptWork/,
    );
  });

  it("bad arguments are RangeErrors or TypeErrors naming them", async () => {
    await expect(formatEncrypted(new RamDisk(16), { passphrase: "" })).rejects.toThrow(
      /^options\.passphrase must be a non-empty/,
    );
    await expect(
      formatEncrypted(new RamDisk(16), { passphrase: "x", scrypt: { log2N: 30, r: 8, p: 1 } }),
    ).rejects.toThrow(/^options\.scrypt must/);
    await expect(
      formatEncrypted(new RamDisk(8), { passphrase: "x", scrypt: FAST }),
    ).rejects.toThrow(/^inner\.capacity must exceed/);
    await expect(
      formatEncrypted(new RamDisk(16, { readOnly: true }), { passphrase: "x", scrypt: FAST }),
    ).rejects.toThrow(TypeError);
  });
});
