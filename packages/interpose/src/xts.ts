import { type Cipher, createCipheriv, createDecipheriv, type Decipher } from "node:crypto";
import { endianness } from "node:os";

/** Bytes of an XTS-AES-256 key: Key1 (data, 32 bytes) followed by Key2 (tweak, 32 bytes). */
export const XTS_KEY_BYTES = 64;

/**
 * Bytes of one XTS data unit here: a 512-byte sector, the unit dm-crypt's `aes-xts-plain64`
 * uses by default and the unit of virtio-blk requests (VIRTIO 1.3 §5.2.6).
 */
export const XTS_SECTOR_BYTES = 512;

/**
 * How {@link XtsAes256} computes XTS:
 * - `"tweak-ecb"`: the tweaks (`E_K2(i) ⊗ α^j`, IEEE 1619-2007 §5.2) are computed in
 *   JavaScript, and the AES work runs as one long-lived OpenSSL AES-256-ECB context per key and
 *   direction over up to 128 sectors at once. About 2.5× faster than `"openssl-xts"` because
 *   node:crypto cannot re-key an XTS context with a new tweak: it needs a fresh
 *   `createCipheriv` (≈3 µs) for every sector. Needs a little-endian host (the tweak words are
 *   read through a `Uint32Array`); the default there.
 * - `"openssl-xts"`: node:crypto `aes-256-xts` with one `createCipheriv` per sector and the
 *   sector's plain64 tweak as IV. The reference; the default on big-endian hosts.
 *
 * Both produce identical bytes (tested against each other and the IEEE 1619 vectors).
 */
export type XtsEngine = "tweak-ecb" | "openssl-xts";

/** Options of {@link XtsAes256}. */
export interface XtsOptions {
  /** Which implementation to use. Default `"tweak-ecb"` on little-endian hosts. */
  readonly engine?: XtsEngine;
}

/** Sectors per AES call of the tweak-ecb engine: bounds the scratch buffers (2 × 64 KiB). */
const CHUNK_SECTORS = 128;
const CHUNK_BYTES = CHUNK_SECTORS * XTS_SECTOR_BYTES;
const BLOCKS_PER_SECTOR = XTS_SECTOR_BYTES / 16;
const TWO_32 = 2 ** 32;
const LITTLE_ENDIAN_HOST = endianness() === "LE";

/** A Uint32Array over `words` words of `b` from byte `at`, if that is 4-aligned. */
function words32(b: Uint8Array, at: number, words: number): Uint32Array | undefined {
  const off = b.byteOffset + at;
  return (off & 3) === 0 ? new Uint32Array(b.buffer, off, words) : undefined;
}

/** `out[k] = a[k] ^ b[k]` for `words` words (a multiple of 4: whole AES blocks). */
function xorWords(out: Uint32Array, a: Uint32Array, b: Uint32Array, words: number): void {
  for (let k = 0; k < words; k += 4) {
    out[k] = a[k]! ^ b[k]!;
    out[k + 1] = a[k + 1]! ^ b[k + 1]!;
    out[k + 2] = a[k + 2]! ^ b[k + 2]!;
    out[k + 3] = a[k + 3]! ^ b[k + 3]!;
  }
}

/**
 * XTS-AES-256 (IEEE Std 1619-2007; NIST SP 800-38E) over 512-byte sectors with the *plain64*
 * tweak of dm-crypt's `aes-xts-plain64`: the tweak of sector `n` is `n` as a 64-bit
 * little-endian integer in the first 8 of 16 bytes, the rest zero. This is exactly the IEEE
 * 1619 "data unit sequence number" encoding (§5.1: the tweak is the little-endian 128-bit
 * value), so `cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512` reads what
 * this writes.
 *
 * A 512-byte sector is 32 whole AES blocks, so ciphertext stealing (§5.3.2) never applies.
 *
 * Synchronous: one instance serves concurrent requests, because each call finishes before the
 * next starts. It owns two 64 KiB scratch buffers and allocates only what node:crypto returns
 * from `update` (one buffer per 64 KiB; node has no `updateInto`).
 *
 * XTS gives confidentiality only: no integrity, and a change to one ciphertext block garbles
 * only its own 16-byte block (see the package README, "Threat model").
 *
 * @example
 * ```ts
 * const xts = new XtsAes256(randomBytes(64));
 * const sector = new Uint8Array(512);
 * xts.encrypt(sector, sector, 7); // in place, tweak = sector number 7
 * ```
 * @see IEEE Std 1619-2007 §5 "XTS-AES transform"
 */
export class XtsAes256 {
  /** The engine in use (see {@link XtsEngine}). */
  readonly engine: XtsEngine;
  readonly #key: Buffer;
  // tweak-ecb: long-lived ECB contexts (stateless between blocks; we never call final()).
  readonly #enc1: Cipher | undefined;
  readonly #dec1: Decipher | undefined;
  readonly #enc2: Cipher | undefined;
  readonly #seeds = new Uint8Array(CHUNK_SECTORS * 16);
  readonly #seeds32 = new Uint32Array(this.#seeds.buffer);
  readonly #tw = new Uint8Array(CHUNK_BYTES);
  readonly #tw32 = new Uint32Array(this.#tw.buffer);
  readonly #pp = new Uint8Array(CHUNK_BYTES);
  readonly #pp32 = new Uint32Array(this.#pp.buffer);
  // openssl-xts: the 16-byte IV, rewritten per sector.
  readonly #iv = Buffer.alloc(16);

  /**
   * @param key - 64 bytes: Key1 (AES-256 data key) then Key2 (AES-256 tweak key); copied
   * @param options - the engine
   * @throws RangeError naming `key` when it is not 64 bytes or its halves are equal (SP 800-38E
   *   and FIPS 140 implementation guidance require Key1 ≠ Key2; OpenSSL refuses it too), or
   *   naming `options.engine` for tweak-ecb on a big-endian host
   */
  constructor(key: Uint8Array, options: XtsOptions = {}) {
    if (!(key instanceof Uint8Array) || key.length !== XTS_KEY_BYTES) {
      const got = key instanceof Uint8Array ? `${key.length} bytes` : typeof key;
      throw new RangeError(
        `key must be 64 bytes (Key1 ‖ Key2, two AES-256 keys, IEEE 1619-2007 §5.1), got ${got}`,
      );
    }
    const k1 = key.subarray(0, 32);
    const k2 = key.subarray(32);
    if (Buffer.compare(k1, k2) === 0) {
      throw new RangeError("key: its two 32-byte halves (Key1, Key2) must differ (SP 800-38E)");
    }
    const engine = options.engine ?? (LITTLE_ENDIAN_HOST ? "tweak-ecb" : "openssl-xts");
    if (engine !== "tweak-ecb" && engine !== "openssl-xts") {
      throw new RangeError(`options.engine must be "tweak-ecb" or "openssl-xts", got ${engine}`);
    }
    if (engine === "tweak-ecb" && !LITTLE_ENDIAN_HOST) {
      throw new RangeError('options.engine "tweak-ecb" needs a little-endian host');
    }
    this.engine = engine;
    this.#key = Buffer.from(key);
    if (engine === "tweak-ecb") {
      this.#enc1 = createCipheriv("aes-256-ecb", k1, null).setAutoPadding(false);
      this.#dec1 = createDecipheriv("aes-256-ecb", k1, null).setAutoPadding(false);
      this.#enc2 = createCipheriv("aes-256-ecb", k2, null).setAutoPadding(false);
    }
  }

  /**
   * Encrypt whole sectors: `dst ← XTS-AES-256-Enc(key, tweak = firstSector + i, src)`.
   * `src` and `dst` may be the same array (in place) but must not otherwise overlap.
   * @param src - plaintext, a multiple of 512 bytes (may be guest memory: read once)
   * @param dst - receives the ciphertext, as long as `src`
   * @param firstSector - the plain64 tweak of the first sector
   * @throws RangeError naming `src`, `dst` or `firstSector`
   */
  encrypt(src: Uint8Array, dst: Uint8Array, firstSector: number): void {
    this.#run(src, dst, firstSector, true);
  }

  /**
   * Decrypt whole sectors (the inverse of {@link XtsAes256.encrypt}).
   * @param src - ciphertext, a multiple of 512 bytes
   * @param dst - receives the plaintext, as long as `src`
   * @param firstSector - the plain64 tweak of the first sector
   * @throws RangeError naming `src`, `dst` or `firstSector`
   */
  decrypt(src: Uint8Array, dst: Uint8Array, firstSector: number): void {
    this.#run(src, dst, firstSector, false);
  }

  /** Overwrite this object's copy of the key with zeroes (OpenSSL frees its own copies). */
  destroy(): void {
    this.#key.fill(0);
  }

  #run(src: Uint8Array, dst: Uint8Array, firstSector: number, enc: boolean): void {
    if (src.length % XTS_SECTOR_BYTES !== 0) {
      throw new RangeError(`src.length must be a multiple of 512, got ${src.length}`);
    }
    if (dst.length !== src.length) {
      throw new RangeError(`dst.length must equal src.length (${src.length}), got ${dst.length}`);
    }
    const sectors = src.length / XTS_SECTOR_BYTES;
    if (
      !Number.isSafeInteger(firstSector) ||
      firstSector < 0 ||
      !Number.isSafeInteger(firstSector + sectors)
    ) {
      throw new RangeError(`firstSector must be a non-negative safe integer, got ${firstSector}`);
    }
    if (this.engine === "openssl-xts") {
      this.#runOpenssl(src, dst, firstSector, sectors, enc);
      return;
    }
    for (let done = 0; done < sectors; done += CHUNK_SECTORS) {
      const n = Math.min(CHUNK_SECTORS, sectors - done);
      const from = done * XTS_SECTOR_BYTES;
      this.#chunk(src, dst, from, n, firstSector + done, enc);
    }
  }

  /** One tweak-ecb chunk of `n` ≤ 128 sectors at byte `from` of src/dst. */
  #chunk(
    src: Uint8Array,
    dst: Uint8Array,
    from: number,
    n: number,
    sector: number,
    enc: boolean,
  ): void {
    const len = n * XTS_SECTOR_BYTES;
    // T_i = E_K2(i) for each sector i (IEEE 1619-2007 §5.3.1 step 1), i little-endian.
    const seeds32 = this.#seeds32;
    for (let s = 0; s < n; s++) {
      const i = sector + s;
      seeds32[s * 4] = i % TWO_32; // low 32 bits (i < 2^53, so the division is exact)
      seeds32[s * 4 + 1] = Math.floor(i / TWO_32);
      seeds32[s * 4 + 2] = 0;
      seeds32[s * 4 + 3] = 0;
    }
    const encSeeds = this.#enc2!.update(this.#seeds.subarray(0, n * 16));
    this.#seeds.set(encSeeds);
    // T ⊗ α^j for block j (§5.2): a 1-bit left shift of the little-endian 128-bit value,
    // reducing by x^128 = x^7 + x^2 + x + 1 (0x87) on carry. Words w0..w3 are bytes 0..15
    // read little-endian (we checked the host is little-endian).
    const tw32 = this.#tw32;
    for (let s = 0; s < n; s++) {
      let w0 = seeds32[s * 4]!;
      let w1 = seeds32[s * 4 + 1]!;
      let w2 = seeds32[s * 4 + 2]!;
      let w3 = seeds32[s * 4 + 3]!;
      let o = s * BLOCKS_PER_SECTOR * 4;
      for (let j = 0; j < BLOCKS_PER_SECTOR; j++) {
        tw32[o] = w0;
        tw32[o + 1] = w1;
        tw32[o + 2] = w2;
        tw32[o + 3] = w3;
        o += 4;
        const carry = w3 >>> 31;
        w3 = ((w3 << 1) | (w2 >>> 31)) >>> 0;
        w2 = ((w2 << 1) | (w1 >>> 31)) >>> 0;
        w1 = ((w1 << 1) | (w0 >>> 31)) >>> 0;
        w0 = ((w0 << 1) ^ (carry * 0x87)) >>> 0;
      }
    }
    // PP = P ⊕ T; CC = E_K1(PP); C = CC ⊕ T (§5.3.1 steps 2-4; decryption mirrors it, §5.4.1).
    // Each XOR is one pass over words, reading the source and writing the target directly
    // when they are 4-aligned (guest memory and node:crypto's output are), else through pp.
    const words = len >>> 2;
    const pp = this.#pp;
    const pp32 = this.#pp32;
    const s32 = words32(src, from, words);
    if (s32 !== undefined) xorWords(pp32, s32, tw32, words);
    else {
      pp.set(src.subarray(from, from + len));
      xorWords(pp32, pp32, tw32, words);
    }
    const view = pp.subarray(0, len);
    const cc = enc ? this.#enc1!.update(view) : this.#dec1!.update(view);
    const c32 = words32(cc, 0, words);
    const d32 = words32(dst, from, words);
    if (c32 !== undefined && d32 !== undefined) {
      xorWords(d32, c32, tw32, words);
      return;
    }
    pp.set(cc);
    xorWords(pp32, pp32, tw32, words);
    dst.set(view, from);
  }

  #runOpenssl(
    src: Uint8Array,
    dst: Uint8Array,
    firstSector: number,
    sectors: number,
    enc: boolean,
  ): void {
    const iv = this.#iv;
    for (let s = 0; s < sectors; s++) {
      const i = firstSector + s;
      // plain64: the sector number, 64-bit little-endian, zero-padded to 16 bytes.
      iv.writeUInt32LE(i % TWO_32, 0);
      iv.writeUInt32LE(Math.floor(i / TWO_32), 4);
      const c = enc
        ? createCipheriv("aes-256-xts", this.#key, iv)
        : createDecipheriv("aes-256-xts", this.#key, iv);
      const at = s * XTS_SECTOR_BYTES;
      const out = c.update(src.subarray(at, at + XTS_SECTOR_BYTES));
      dst.set(out, at);
      c.final();
    }
  }
}
